"""Unit tests of the simulated meter relay: delays, idempotency, expiry, faults, reconnect allowed and the button."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from headend.cli.simulate import simulate
from protocols.readings import RelayState
from protocols.relay_codec import CommandResult, EventCause, RelayAction, RelayCommandMessage
from simulators.clock import INTERVAL
from simulators.fleet import build_fleet, write_registry_csv
from simulators.meter_sim import MeterSim
from simulators.relay_sim import RelayFault, RelaySim, RelayStatus, ScheduledEvent, plan_relay_faults

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
METER = "M000001"


def command(action: RelayAction, command_id: str | None = None, *, ttl_s: float = 600) -> RelayCommandMessage:
    """A command for METER issued at T0."""
    return RelayCommandMessage(
        command_id or f"relay:{METER}:{action.value}", action, METER, T0, T0 + timedelta(seconds=ttl_s)
    )


def only(events: list[ScheduledEvent]) -> ScheduledEvent:
    """The single event of a list."""
    assert len(events) == 1, events
    return events[0]


def settle(sim: RelaySim, scheduled: ScheduledEvent) -> ScheduledEvent:
    """Let the meter reach the answer's due time and return the event it sends."""
    sent = sim.pop_due(scheduled.due_at)
    assert sent == [scheduled]
    return sent[0]


def test_disconnect_answers_after_a_delay_and_the_relay_moves_then() -> None:
    sim = RelaySim(METER, seed=1)
    scheduled = only(sim.receive(command(RelayAction.DISCONNECT), T0))
    delay = (scheduled.due_at - T0).total_seconds()
    assert 0.2 <= delay <= 1.5
    event = scheduled.event
    assert (event.command_id, event.result, event.relay) == ("relay:M000001:disconnect", CommandResult.EXECUTED, "open")
    assert event.ts == scheduled.due_at
    assert event.cause is None
    assert not event.ready_for_reconnection
    just_before = scheduled.due_at - timedelta(microseconds=1)
    assert sim.relay_at(just_before) is RelayState.CLOSED
    assert sim.pop_due(just_before) == []
    assert sim.relay is RelayState.CLOSED
    assert sim.relay_at(scheduled.due_at) is RelayState.OPEN
    settle(sim, scheduled)
    assert sim.status == RelayStatus(RelayState.OPEN)
    assert sim.next_due() is None


def test_delays_are_seeded_and_stay_in_the_configured_range() -> None:
    def delays(seed: int) -> list[float]:
        sim = RelaySim(METER, seed=seed, delay_s=(2.0, 3.0))
        result = []
        for i in range(20):
            now = T0 + timedelta(seconds=10 * i)
            scheduled = only(sim.receive(command(RelayAction.READ_RELAY, f"c{i}"), now))
            result.append((scheduled.due_at - now).total_seconds())
            sim.pop_due(scheduled.due_at)
        return result

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)
    assert all(2.0 <= d <= 3.0 for d in delays(7))
    with pytest.raises(ValueError, match="delay_s"):
        RelaySim(METER, delay_s=(1.0, 0.5))


def test_commands_are_answered_in_order() -> None:
    sim = RelaySim(METER, seed=3)
    first = only(sim.receive(command(RelayAction.DISCONNECT, "a"), T0))
    second = only(sim.receive(command(RelayAction.RECONNECT, "b"), T0 + timedelta(milliseconds=10)))
    third = only(sim.receive(command(RelayAction.READ_RELAY, "c"), T0 + timedelta(milliseconds=20)))
    assert first.due_at <= second.due_at <= third.due_at
    assert [first.event.relay, second.event.relay, third.event.relay] == ["open", "closed", "closed"]
    assert sim.pop_due(third.due_at) == [first, second, third]


def test_read_relay_reports_the_position_without_moving_it() -> None:
    sim = RelaySim(METER, relay=RelayState.OPEN)
    event = settle(sim, only(sim.receive(command(RelayAction.READ_RELAY), T0))).event
    assert (event.result, event.relay) == (CommandResult.EXECUTED, RelayState.OPEN)
    assert sim.relay is RelayState.OPEN


def test_a_repeated_command_id_gets_the_same_answer_and_is_not_executed_twice() -> None:
    sim = RelaySim(METER)
    settle(sim, only(sim.receive(command(RelayAction.DISCONNECT, "cmd-1"), T0)))
    assert sim.commands_executed == 1
    # reconnected in between: a retry of the disconnect must not open the relay again
    settle(sim, only(sim.receive(command(RelayAction.RECONNECT, "cmd-2"), T0 + timedelta(seconds=5))))
    assert sim.relay is RelayState.CLOSED
    again = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT, "cmd-1"), T0 + timedelta(seconds=10))))
    assert (again.event.command_id, again.event.result) == ("cmd-1", CommandResult.EXECUTED)
    assert again.event.relay is RelayState.CLOSED, "the current relay, not the one of the first answer"
    assert sim.relay is RelayState.CLOSED
    assert sim.commands_executed == 2


def test_a_duplicate_arriving_before_the_first_answer_repeats_it() -> None:
    sim = RelaySim(METER)
    first = only(sim.receive(command(RelayAction.DISCONNECT, "dup"), T0))
    second = only(sim.receive(command(RelayAction.DISCONNECT, "dup"), T0 + timedelta(milliseconds=1)))
    assert second.due_at >= first.due_at
    assert (second.event.result, second.event.relay) == (CommandResult.EXECUTED, RelayState.OPEN)
    assert sim.pop_due(second.due_at) == [first, second]
    assert sim.commands_executed == 1


def test_a_rejected_command_is_rejected_again_when_repeated() -> None:
    sim = RelaySim(METER, fault=RelayFault.REJECT)
    settle(sim, only(sim.receive(command(RelayAction.DISCONNECT, "r"), T0)))
    sim.set_fault(RelayFault.NONE)
    again = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT, "r"), T0 + timedelta(seconds=5))))
    assert (again.event.result, again.event.detail) == (CommandResult.REJECTED, "rejected by meter")
    assert sim.relay is RelayState.CLOSED


def test_an_expired_command_is_rejected_and_not_executed() -> None:
    sim = RelaySim(METER)
    late = T0 + timedelta(seconds=601)
    event = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT), late))).event
    assert (event.result, event.detail, event.relay) == (CommandResult.REJECTED, "expired", RelayState.CLOSED)
    assert sim.relay is RelayState.CLOSED


def test_a_command_that_would_be_executed_after_its_expiry_is_rejected() -> None:
    sim = RelaySim(METER, delay_s=(1.0, 1.0))
    # received in time, but the meter gets to it a second later, after expires_at
    event = only(sim.receive(command(RelayAction.DISCONNECT, ttl_s=0.5), T0)).event
    assert (event.result, event.detail) == (CommandResult.REJECTED, "expired")


def test_reject_fault_answers_rejected() -> None:
    sim = RelaySim(METER, fault=RelayFault.REJECT)
    event = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT), T0))).event
    assert (event.result, event.detail, event.relay) == (CommandResult.REJECTED, "rejected by meter", "closed")
    assert sim.relay is RelayState.CLOSED


def test_stuck_relay_answers_executed_but_reports_the_real_position() -> None:
    sim = RelaySim(METER, fault=RelayFault.STUCK)
    event = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT), T0))).event
    assert (event.result, event.relay) == (CommandResult.EXECUTED, RelayState.CLOSED)
    assert sim.relay is RelayState.CLOSED


@pytest.mark.parametrize("fault", [RelayFault.SILENT, RelayFault.OFFLINE])
def test_silent_and_offline_meters_answer_nothing_and_do_not_move(fault: RelayFault) -> None:
    sim = RelaySim(METER, fault=fault)
    assert sim.receive(command(RelayAction.DISCONNECT), T0) == []
    assert sim.pop_due(T0 + timedelta(minutes=5)) == []
    assert sim.relay is RelayState.CLOSED
    assert sim.commands_received == (1 if fault is RelayFault.SILENT else 0)
    # a silent meter did nothing: once it behaves, a retry with the same id is executed
    sim.set_fault(RelayFault.NONE)
    event = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT), T0 + timedelta(minutes=6)))).event
    assert (event.result, event.relay) == (CommandResult.EXECUTED, RelayState.OPEN)


def test_a_meter_going_offline_loses_its_pending_answers_but_still_moves() -> None:
    sim = RelaySim(METER)
    scheduled = only(sim.receive(command(RelayAction.DISCONNECT), T0))
    sim.set_fault(RelayFault.OFFLINE)
    assert sim.pop_due(scheduled.due_at) == []
    assert sim.relay is RelayState.OPEN


def test_reconnect_on_an_allowed_meter_arms_and_the_button_closes() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN)
    armed = settle(sim, only(sim.receive(command(RelayAction.RECONNECT), T0))).event
    assert (armed.result, armed.relay, armed.ready_for_reconnection) == (CommandResult.EXECUTED, "open", True)
    assert sim.status == RelayStatus(RelayState.OPEN, armed=True)
    # nothing happens until the customer comes
    assert sim.pop_due(T0 + timedelta(hours=5)) == []
    assert sim.relay is RelayState.OPEN

    pressed_at = T0 + timedelta(hours=5)
    press = only(sim.press_button(pressed_at))
    assert press.due_at == pressed_at
    assert press.event.cause is EventCause.BUTTON_PRESSED
    assert (press.event.command_id, press.event.result) == (None, None)
    assert (press.event.relay, press.event.ready_for_reconnection) == (RelayState.CLOSED, False)
    settle(sim, press)
    assert sim.status == RelayStatus(RelayState.CLOSED)
    # pressed again: no longer armed, nothing happens
    assert sim.press_button(pressed_at + timedelta(seconds=1)) == []


def test_pressing_an_unarmed_meter_does_nothing() -> None:
    open_direct = RelaySim(METER, relay=RelayState.OPEN)
    assert open_direct.press_button(T0) == []
    open_allowed = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN)
    assert open_allowed.press_button(T0) == []
    assert open_allowed.relay_at(T0 + timedelta(seconds=1)) is RelayState.OPEN


def test_reconnect_on_a_direct_meter_closes() -> None:
    sim = RelaySim(METER, relay=RelayState.OPEN)
    event = settle(sim, only(sim.receive(command(RelayAction.RECONNECT), T0))).event
    assert (event.relay, event.ready_for_reconnection) == (RelayState.CLOSED, False)


def test_reconnect_on_a_closed_allowed_meter_does_not_arm() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed")
    event = settle(sim, only(sim.receive(command(RelayAction.RECONNECT), T0))).event
    assert (event.relay, event.ready_for_reconnection) == (RelayState.CLOSED, False)


def test_disconnect_disarms() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN)
    settle(sim, only(sim.receive(command(RelayAction.RECONNECT, "arm"), T0)))
    assert sim.status.armed
    event = settle(sim, only(sim.receive(command(RelayAction.DISCONNECT, "off"), T0 + timedelta(seconds=5)))).event
    assert (event.relay, event.ready_for_reconnection) == (RelayState.OPEN, False)
    assert sim.press_button(T0 + timedelta(seconds=10)) == []
    assert sim.relay is RelayState.OPEN


def test_a_press_while_a_command_is_pending_waits_for_it() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN)
    settle(sim, only(sim.receive(command(RelayAction.RECONNECT, "arm"), T0)))
    read = only(sim.receive(command(RelayAction.READ_RELAY, "read"), T0 + timedelta(seconds=5)))
    press = only(sim.press_button(T0 + timedelta(seconds=5)))
    assert press.due_at == read.due_at
    assert read.event.relay is RelayState.OPEN, "the promised answer stays true"
    assert sim.pop_due(press.due_at) == [read, press]
    assert sim.relay is RelayState.CLOSED


def test_the_simulated_customer_presses_the_button_after_a_while() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN, button_delay_s=30)
    armed = only(sim.receive(command(RelayAction.RECONNECT), T0))
    assert sim.pop_due(armed.due_at) == [armed]
    assert sim.relay_at(armed.due_at + timedelta(seconds=29)) is RelayState.OPEN
    assert sim.next_due() == armed.due_at + timedelta(seconds=30)
    [press] = sim.pop_due(armed.due_at + timedelta(seconds=30))
    assert press.event.cause is EventCause.BUTTON_PRESSED
    assert press.due_at == armed.due_at + timedelta(seconds=30)
    assert sim.relay is RelayState.CLOSED


def test_the_simulated_customer_finds_a_disconnected_meter_and_nothing_happens() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN, button_delay_s=30)
    armed = only(sim.receive(command(RelayAction.RECONNECT, "arm"), T0))
    off = only(sim.receive(command(RelayAction.DISCONNECT, "off"), armed.due_at + timedelta(seconds=1)))
    assert sim.pop_due(T0 + timedelta(minutes=5)) == [armed, off]
    assert sim.status == RelayStatus(RelayState.OPEN)


def test_a_command_after_the_customer_pressed_sees_the_closed_relay() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN, button_delay_s=1)
    armed = only(sim.receive(command(RelayAction.RECONNECT, "arm"), T0))
    read = only(sim.receive(command(RelayAction.READ_RELAY, "read"), armed.due_at + timedelta(seconds=2)))
    assert read.event.relay is RelayState.CLOSED
    events = sim.pop_due(read.due_at)
    assert [e.event.cause for e in events] == [None, EventCause.BUTTON_PRESSED, None]
    assert events[-1] == read


def test_stuck_meters_do_not_arm() -> None:
    sim = RelaySim(METER, reconnect_mode="allowed", relay=RelayState.OPEN, fault=RelayFault.STUCK)
    event = settle(sim, only(sim.receive(command(RelayAction.RECONNECT), T0))).event
    assert (event.result, event.relay, event.ready_for_reconnection) == (CommandResult.EXECUTED, "open", False)
    assert sim.press_button(T0 + timedelta(seconds=5)) == []


def test_a_command_for_another_meter_is_a_bug() -> None:
    with pytest.raises(ValueError, match="given to meter"):
        RelaySim("OTHER").receive(command(RelayAction.DISCONNECT), T0)


# --- faults plan, fleet and metering -----------------------------------------------------------


def test_relay_faults_are_disjoint_seeded_and_sized() -> None:
    ids = [f"M{i:03d}" for i in range(100)]
    plan = plan_relay_faults(
        ids, 5, stuck_fraction=0.1, reject_fraction=0.2, silent_fraction=0.05, offline_ids={"M000"}
    )
    assert plan == plan_relay_faults(
        ids, 5, stuck_fraction=0.1, reject_fraction=0.2, silent_fraction=0.05, offline_ids={"M000"}
    )
    assert plan["M000"] is RelayFault.OFFLINE
    counts = {f: sum(1 for v in plan.values() if v is f) for f in RelayFault}
    assert counts[RelayFault.REJECT] in (19, 20)
    assert counts[RelayFault.STUCK] in (9, 10)
    assert counts[RelayFault.SILENT] in (4, 5)
    assert plan_relay_faults(ids, 5) == {}
    with pytest.raises(ValueError, match="more than every meter"):
        plan_relay_faults(ids, 5, stuck_fraction=0.6, reject_fraction=0.6)


def test_reconnect_allowed_meters_are_seeded_and_leave_the_rest_of_the_fleet_alone() -> None:
    plain = build_fleet(50, 2, ["north"], seed=9)
    mixed = build_fleet(50, 2, ["north"], seed=9, reconnect_allowed_fraction=0.3)
    assert all(m.reconnect_mode == "direct" for m in plain.meters)
    allowed = [m.meter_id for m in mixed.meters if m.reconnect_mode == "allowed"]
    assert len(allowed) == 15
    assert allowed == [
        m.meter_id
        for m in build_fleet(50, 2, ["north"], seed=9, reconnect_allowed_fraction=0.3).meters
        if m.reconnect_mode == "allowed"
    ]
    for a, b in zip(plain.meters, mixed.meters, strict=True):
        assert (a.meter_id, a.concentrator_id, a.model, a.start_register_wh) == (
            b.meter_id,
            b.concentrator_id,
            b.model,
            b.start_register_wh,
        )
    with pytest.raises(ValueError, match="reconnect_allowed_fraction"):
        build_fleet(5, 0, ["x"], seed=1, reconnect_allowed_fraction=1.5)


def test_registry_csv_names_the_reconnect_mode(tmp_path: Path) -> None:
    fleet = build_fleet(20, 1, ["north"], seed=2, reconnect_allowed_fraction=0.25)
    path = tmp_path / "meters.csv"
    write_registry_csv(fleet, path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["meter_id"]: r["reconnect_mode"] for r in rows} == {m.meter_id: m.reconnect_mode for m in fleet.meters}
    assert sum(r["reconnect_mode"] == "allowed" for r in rows) == 5


def test_energy_stops_while_the_relay_model_holds_the_relay_open() -> None:
    meter = build_fleet(1, 0, ["x"], seed=1).meters[0]
    meter_sim = MeterSim(meter, seed=1)
    relay = RelaySim(meter.meter_id, relay=meter_sim.relay)
    start = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    first = meter_sim.read(start)
    disconnect = RelayCommandMessage("off", RelayAction.DISCONNECT, meter.meter_id, start, start + timedelta(hours=1))
    scheduled = only(relay.receive(disconnect, start))
    relay.pop_due(scheduled.due_at)
    meter_sim.set_relay(relay.relay)
    while_open = meter_sim.read(start + 4 * INTERVAL)
    assert while_open.energy_import_wh == first.energy_import_wh
    assert (while_open.relay, while_open.power_w) == (RelayState.OPEN, 0)
    later = start + 4 * INTERVAL
    reconnect = RelayCommandMessage("on", RelayAction.RECONNECT, meter.meter_id, later, later + timedelta(hours=1))
    relay.pop_due(only(relay.receive(reconnect, later)).due_at)
    meter_sim.set_relay(relay.relay)
    after = meter_sim.read(start + 8 * INTERVAL)
    assert after.energy_import_wh > while_open.energy_import_wh
    assert after.relay is RelayState.CLOSED


# --- `headend simulate` options -------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(simulate)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--relay-stuck-fraction", "1.5"], "--relay-stuck-fraction"),
        (["--relay-reject-fraction", "-0.1"], "--relay-reject-fraction"),
        (["--relay-silent-fraction", "2"], "--relay-silent-fraction"),
        (["--reconnect-allowed-fraction", "1.1"], "--reconnect-allowed-fraction"),
        (["--relay-stuck-fraction", "0.6", "--relay-reject-fraction", "0.6"], "more than every meter"),
        (["--button-delay", "soon"], "--button-delay"),
        (["--button-delay", "-1"], "--button-delay"),
    ],
)
def test_cli_rejects_bad_relay_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_app(), ["--meters", "10", *args])
    assert result.exit_code == 2
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert "Invalid value" in words
    assert message in words


def test_cli_registry_has_the_reconnect_mode(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    args = ["--meters", "20", "--reconnect-allowed-fraction", "0.5", "--registry-csv", str(path), "--registry-only"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(r["reconnect_mode"] == "allowed" for r in rows) == 10
