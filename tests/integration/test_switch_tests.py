"""The on-site commissioning test of a switch against the real dispatcher, its executors and simulated meters: a DL/T
645 gateway, a Modbus relay meter and MQTT meters on the real Mosquitto, the real database. Each step is a relay
command through the dispatcher's lifecycle, audit and executors; the test never leaves the customer without supply."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from typer.testing import CliRunner, Result

from headend.api import store as api_store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.cli.app import app
from headend.cli.switches import WAIT_POLL_S
from headend.commissioning import operations
from headend.commissioning.operations import SwitchTestError, SwitchTestErrorKind
from headend.commissioning.states import StepState, SwitchTestResult, SwitchTestState
from headend.commissioning.store import SwitchTest, get_test
from headend.db.grants import DbRole
from headend.dispatch import store
from headend.dispatch.dispatcher import CommandSender, DispatchConfig, Dispatcher
from headend.dispatch.lifecycle import AlarmKind, CommandState, RetryPolicy
from headend.dispatch.mqtt_transport import MqttTransport
from headend.dispatch.operations import approve, request_relay_read
from headend.dispatch.polled_executor import PolledConfig, PolledExecutor
from headend.dispatch.service import run_dispatcher
from headend.engine.accounts import open_account, pay, reverse_payment, set_flags
from headend.engine.catalog import Catalog
from headend.registry.meter_import import import_meters, read_registry_file
from headend.registry.switches import CommissioningState, get_switch, history, register, validate_draft
from headend.settings import Settings
from prepay_engine.payments import TopUp, TopUpReversal
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from simulators.command_responder import CommandResponder
from simulators.dlt645_gateway import Dlt645Gateway
from simulators.fleet import Fleet, SimMeter
from simulators.load_shapes import MeterKind
from simulators.modbus_faults import StuckRelay
from simulators.modbus_sim import ModbusMeterFleet
from simulators.publisher import BrokerConfig
from simulators.relay_sim import RelayFault
from tests.integration.conftest import MQTT_HOST, MQTT_PORT, MigratedDatabase, count
from tests.integration.conftest import register as register_meters
from tests.integration.engine_support import STRICT_POLICY, TARIFF, seed_catalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Conn = psycopg.Connection[Any]
FAST = DispatchConfig(
    command_ttl=timedelta(seconds=5), retry=RetryPolicy(0.5, 1.0), storm_limit=100, button_wait=timedelta(seconds=4)
)
QUICK = PolledConfig(timeout_s=0.3, settle_s=0.3, armed_check_s=0.2)
RELAY_UNIT = 1  # the Modbus fleet's first model: a Hiking DDS238-2 ZN/SR, with a relay
PLAN = ["read_state", "open", "confirm_open", "close_or_allow", "confirm_closed"]
WHO = "field.li"


@dataclass
class Bench:
    """The dispatcher with its three executors, the simulated meters, accounts and switches, for one test."""

    conn: Conn
    catalog: Catalog
    dispatcher: Dispatcher
    transport: MqttTransport
    executor: PolledExecutor
    responder: CommandResponder
    fleet: ModbusMeterFleet
    gateway: Dlt645Gateway
    prefix: str
    woken: threading.Event

    # --- the meters -------------------------------------------------------------------------------------------

    def mqtt(self, n: int) -> str:
        """MQTT meter n (1: direct, 2: reconnect allowed)."""
        return f"{self.prefix}q{n}"

    def modbus(self) -> str:
        return self.fleet.spec(RELAY_UNIT).meter_id

    def dlt645(self, n: int) -> str:
        return self.gateway.meter_id(self.gateway.addresses[n - 1])

    def address(self, n: int) -> str:
        return self.gateway.addresses[n - 1]

    def meter(self, protocol: str) -> str:
        """The protocol's direct meter."""
        return {"mqtt": self.mqtt(1), "modbus": self.modbus(), "dlt645": self.dlt645(1)}[protocol]

    def relay(self, meter_id: str) -> RelayState:
        """Where the simulated meter's relay really is."""
        if meter_id == self.modbus():
            return self.fleet.relay(RELAY_UNIT)
        if meter_id.startswith(f"{self.prefix}q"):
            return self.responder.relay(meter_id)
        return self.gateway.relay(next(a for a in self.gateway.addresses if self.gateway.meter_id(a) == meter_id))

    # --- the dispatcher ---------------------------------------------------------------------------------------

    def pump(self, before_step: Callable[[], object] | None = None) -> None:
        """Apply the meters' answers received so far, then one dispatcher step."""
        self.woken.wait(0.02)
        self.woken.clear()
        for message in self.transport.events(0.03):
            self.dispatcher.handle_event(message.topic, bytes(message.payload))
            self.transport.ack(message)
        for answer in self.executor.answers():
            self.dispatcher.handle_event(answer.topic, answer.payload)
        if before_step is not None:
            before_step()
        self.dispatcher.step()

    def until(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout_s: float = 30.0,
        before_step: Callable[[], object] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(before_step)
            if condition():
                return
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}: {self.test_now()}")

    # --- accounts, switches, tests ------------------------------------------------------------------------------

    def account(self, meter_id: str, *, protected: bool = False, keep_supply: bool = False) -> str:
        """A prepaid account in credit on the meter (supply connected); its id."""
        account_id = f"a-{meter_id}"
        open_account(
            self.conn,
            self.catalog,
            account_id,
            meter_id=meter_id,
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=datetime.now(UTC) - timedelta(days=1),
            opening_register_wh=0,
            zone=SHANGHAI,
        )
        now = datetime.now(UTC)
        pay(
            self.conn,
            self.catalog,
            TopUp("wechat", f"t-{account_id}", account_id, 50_000, now),
            now=now,
            received_by="t",
        )
        if protected or keep_supply:
            set_flags(self.conn, self.catalog, account_id, protected=protected, keep_supply=keep_supply, now=now)
        return account_id

    def disconnected(self, meter_id: str) -> str:
        """An account on the meter whose only payment was taken back, cut off by the dispatcher; its id."""
        account_id = f"a-{meter_id}"
        open_account(
            self.conn,
            self.catalog,
            account_id,
            meter_id=meter_id,
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=datetime.now(UTC) - timedelta(days=1),
            opening_register_wh=0,
            zone=SHANGHAI,
        )
        now = datetime.now(UTC)
        pay(self.conn, self.catalog, TopUp("bank", f"t-{account_id}", account_id, 1000, now), now=now, received_by="t")
        reverse_payment(self.conn, self.catalog, TopUpReversal("bank", f"t-{account_id}", 1000, now), now=now)
        self.until(lambda: self.supply(account_id) == "disconnected", "the account cut off")
        return account_id

    def switch(self, meter_id: str, number: str | None = None) -> int:
        """A switch registered on the meter; its id."""
        draft = validate_draft(number or f"QF-{meter_id}", "box transformer 1 main switch", meter_id, "B3")
        return register(self.conn, draft, by=WHO, now=datetime.now(UTC)).switch_id

    def start(self, switch_id: int) -> int:
        """Start a test of the switch now; its id."""
        return operations.start_test(self.conn, switch_id, by=WHO, now=datetime.now(UTC)).test_id

    def test(self, test_id: int) -> SwitchTest:
        found = get_test(self.conn, test_id)
        assert found is not None
        return found

    def steps(self, test_id: int) -> list[tuple[str, str]]:
        """(kind, state) of each step."""
        return [(str(s.kind), str(s.state)) for s in self.test(test_id).steps]

    def step_state(self, test_id: int, ordinal: int) -> StepState:
        return self.test(test_id).steps[ordinal - 1].state

    def finished(self, test_id: int) -> bool:
        return self.test(test_id).finished_at is not None

    def test_now(self) -> list[tuple[int, str, str, list[tuple[str, str]]]]:
        rows = self.conn.execute("SELECT test_id, state, detail FROM switch_tests ORDER BY test_id").fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]), self.steps(int(r[0]))) for r in rows]

    def alarms(self, meter_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT kind FROM relay_alarms WHERE meter_id = %s ORDER BY alarm_id", (meter_id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def supply(self, account_id: str) -> str:
        row = self.conn.execute("SELECT supply FROM prepaid_accounts WHERE account_id = %s", (account_id,)).fetchone()
        assert row is not None
        return str(row[0])

    def switch_state(self, switch_id: int) -> CommissioningState:
        switch = get_switch(self.conn, switch_id)
        assert switch is not None
        return switch.commissioning_state

    def test_commands(self, test_id: int) -> list[store.Command]:
        rows = self.conn.execute(
            "SELECT command_id FROM commands WHERE test_id = %s ORDER BY issued_at, command_id", (test_id,)
        ).fetchall()
        found = [store.get_command(self.conn, str(r[0])) for r in rows]
        return [c for c in found if c is not None]


@pytest.fixture
def bench_for(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Bench]]:
    """The bench: MQTT meters q1 (direct) and q2 (allowed), a Modbus relay meter, a gateway of three 645 meters."""
    prefix = f"c{uuid.uuid4().hex[:5]}"
    closing: list[Callable[[], object]] = []

    def make(
        *,
        config: DispatchConfig = FAST,
        allowed: tuple[int, ...] = (),
        mqtt_faults: dict[int, RelayFault] | None = None,
    ) -> Bench:
        conn = psycopg.connect(database_url, autocommit=True)
        audit_conn = psycopg.connect(database_url, autocommit=True)
        closing.extend([conn.close, audit_conn.close])
        catalog = seed_catalog(conn)
        fleet = ModbusMeterFleet("127.0.0.1", 0, ["hiking_dds238_2_znsr"], 1, meter_id_prefix=f"{prefix}mb")
        fleet.start()
        closing.append(fleet.stop)
        gateway = Dlt645Gateway("127.0.0.1", 0, 3, meter_id_prefix=f"{prefix}dl", baud=9600, latency_s=0.005)
        gateway.start()
        closing.append(gateway.stop)
        for name, simulated in (("modbus", fleet), ("dlt645", gateway)):
            registry = tmp_path / f"{name}.csv"
            simulated.write_registry_csv(registry)
            parsed = read_registry_file(registry)
            assert parsed.errors == []
            import_meters(conn, parsed.rows)
        for n in allowed:
            conn.execute(
                "UPDATE meters SET reconnect_mode = 'allowed' WHERE meter_id = %s",
                (gateway.meter_id(gateway.addresses[n - 1]),),
            )
        mqtt_meters = [f"{prefix}q1", f"{prefix}q2"]
        register_meters(conn, mqtt_meters)
        conn.execute("UPDATE meters SET reconnect_mode = 'allowed' WHERE meter_id = %s", (mqtt_meters[1],))
        sims = Fleet(
            (
                SimMeter(mqtt_meters[0], None, "test", "SIM-1", MeterKind.RESIDENTIAL, 1_000_000),
                SimMeter(
                    mqtt_meters[1], None, "test", "SIM-1", MeterKind.RESIDENTIAL, 1_000_000, reconnect_mode="allowed"
                ),
            ),
            (),
            seed=7,
        )
        responder = CommandResponder(
            sims,
            BrokerConfig(host=MQTT_HOST, port=MQTT_PORT),
            faults={f"{prefix}q{n}": f for n, f in (mqtt_faults or {}).items()},
            delay_s=(0.05, 0.1),
        )
        responder.start()
        closing.append(responder.stop)
        settings = Settings(database_url=database_url, mqtt_host=MQTT_HOST, mqtt_port=MQTT_PORT, mqtt_shared_group=None)
        transport = MqttTransport(settings, f"test-commissioning-{prefix}").__enter__()
        closing.append(lambda: transport.__exit__(None, None, None))
        assert transport.wait_subscribed(10)
        woken = threading.Event()
        executor = PolledExecutor(database_url, QUICK, wake=woken.set).__enter__()
        closing.append(lambda: executor.__exit__(None, None, None))
        executors: dict[str, CommandSender] = {"mqtt": transport, "modbus": executor, "dlt645": executor}
        dispatcher = Dispatcher(conn, audit_conn, transport, executors=executors, config=config, catalog=catalog)
        return Bench(conn, catalog, dispatcher, transport, executor, responder, fleet, gateway, prefix, woken)

    yield make
    for close in reversed(closing):
        close()


def _trail(conn: Conn, command_id: str) -> list[str]:
    return [str(e["to_state"]) for e in store.history(conn, command_id)]


@pytest.mark.parametrize("protocol", ["dlt645", "modbus", "mqtt"])
def test_a_switch_passes_each_step_confirmed_by_reading_back_and_is_commissioned(
    bench_for: Callable[..., Bench], protocol: str
) -> None:
    bench = bench_for()
    meter = bench.meter(protocol)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    started = bench.test(test_id)
    assert started.state is SwitchTestState.PENDING
    assert [(str(s.kind), str(s.state)) for s in started.steps] == [(k, "pending") for k in PLAN]
    assert bench.switch_state(switch) is CommissioningState.TESTING

    bench.until(lambda: bench.finished(test_id), "the test finished")
    test = bench.test(test_id)
    assert test.state is SwitchTestState.PASSED, test
    assert bench.steps(test_id) == [(k, "passed") for k in PLAN]
    assert [s.relay for s in test.steps] == ["closed", "open", "open", "closed", "closed"]
    assert test.started_at is not None
    # each step was a command of the test, no account's, through the whole lifecycle with its audit trail
    sent = bench.test_commands(test_id)
    assert [c.command_id for c in sent] == [s.command_id for s in test.steps]
    assert [str(c.action) for c in sent] == ["read_relay", "disconnect", "read_relay", "reconnect", "read_relay"]
    for command in sent:
        assert (command.test_id, command.account_id, command.state) == (test_id, None, CommandState.CONFIRMED)
        assert command.requested_by == WHO
        assert _trail(bench.conn, command.command_id) == ["created", "sent", "acknowledged", "confirmed"]
    created = store.history(bench.conn, sent[1].command_id)[0]
    assert created["actor"] == WHO
    assert created["inputs"] == {"test_id": test_id, "switch_id": switch, "step": 2, "kind": "open"}
    assert store.history(bench.conn, sent[1].command_id)[1]["inputs"]["test_id"] == test_id  # the send's re-check
    # the test's own open is no unexpected relay change; the customer has supply, the account was never touched
    assert bench.alarms(meter) == []
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    assert count(bench.conn, "SELECT count(*) FROM commands WHERE account_id = %s", account) == 0
    # passed: the switch waits for field staff's result
    assert bench.switch_state(switch) is CommissioningState.TESTING
    assert "record the result" in test.detail
    recorded = operations.record_result(
        bench.conn, test_id, SwitchTestResult.COMMISSIONED, "lights of unit 2 went off and on", by=WHO, now=_now()
    )
    assert (recorded.result, recorded.result_by) == (SwitchTestResult.COMMISSIONED, WHO)
    assert bench.switch_state(switch) is CommissioningState.COMMISSIONED
    trail = history(bench.conn, switch)
    assert [c.action.value for c in trail] == ["registered"] + ["commissioning"] * 8
    assert trail[1].changes == {"commissioning_state": {"from": "registered", "to": "testing"}}
    assert [c.detail for c in trail[2:7]] == [
        f"test {test_id}, step {s.ordinal} ({s.kind}): passed: {s.detail}" for s in test.steps
    ]
    assert trail[-1].changes == {"commissioning_state": {"from": "testing", "to": "commissioned"}}
    assert trail[-1].detail == f"test {test_id}: commissioned: lights of unit 2 went off and on"


@pytest.mark.parametrize("protocol", ["modbus", "dlt645"])
def test_a_stuck_relay_fails_the_open_and_the_switch(bench_for: Callable[..., Bench], protocol: str) -> None:
    bench = bench_for()
    meter = bench.meter(protocol)
    if protocol == "modbus":
        bench.fleet.set_fault(RELAY_UNIT, StuckRelay())
    else:
        bench.gateway.set_fault(bench.address(1), "stuck_relay")
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    bench.until(lambda: bench.finished(test_id), "the test finished")
    test = bench.test(test_id)
    assert test.state is SwitchTestState.FAILED
    assert bench.steps(test_id) == [
        ("read_state", "passed"),
        ("open", "failed"),
        ("confirm_open", "skipped"),
        ("close_or_allow", "skipped"),
        ("confirm_closed", "skipped"),
    ]
    failed = test.steps[1]
    assert failed.detail == "failed: the meter reports the disconnect executed but the relay is closed"
    assert failed.relay == "closed"
    assert test.detail.startswith("failed at step 2 (open): failed: the meter reports the disconnect executed")
    # the relay never left the customer's position: nothing to put back
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    assert bench.alarms(meter) == [str(AlarmKind.RELAY_MISMATCH)]  # a real fault, raised as for any command
    assert bench.switch_state(switch) is CommissioningState.FAILED
    assert history(bench.conn, switch)[-1].changes == {"commissioning_state": {"from": "testing", "to": "failed"}}
    with pytest.raises(SwitchTestError) as refused:
        operations.record_result(bench.conn, test_id, SwitchTestResult.COMMISSIONED, "looks fine", by=WHO, now=_now())
    assert refused.value.kind is SwitchTestErrorKind.STATE
    operations.record_result(bench.conn, test_id, SwitchTestResult.FAILED, "relay welded: replace", by=WHO, now=_now())
    assert bench.test(test_id).result is SwitchTestResult.FAILED
    # the stuck relay's alarm refuses the next test until someone resolves it on site
    with pytest.raises(SwitchTestError) as again:
        bench.start(switch)
    assert again.value.kind is SwitchTestErrorKind.REFUSED


@pytest.mark.parametrize("protocol", ["dlt645", "mqtt"])
def test_a_reconnect_allowed_meter_waits_for_the_customers_button(
    bench_for: Callable[..., Bench], protocol: str
) -> None:
    bench = bench_for(allowed=(2,), config=replace(FAST, button_wait=timedelta(minutes=5)))
    meter = bench.dlt645(2) if protocol == "dlt645" else bench.mqtt(2)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    assert bench.test(test_id).steps[3].detail == (
        "allow closing (合闸允许): the customer presses the meter's button on site"
    )
    bench.until(lambda: bench.step_state(test_id, 4) is StepState.WAITING_BUTTON, "the meter armed")
    waiting = bench.test(test_id)
    assert waiting.state is SwitchTestState.RUNNING
    assert waiting.steps[3].detail == (
        "relay armed (合闸允许): waiting for the customer to press the meter's button on site"
    )
    assert waiting.steps[3].finished_at is None
    assert bench.relay(meter) is RelayState.OPEN
    for _ in range(10):  # nothing moves on while the customer has not pressed it
        bench.pump()
    assert bench.steps(test_id)[3:] == [("close_or_allow", "waiting_button"), ("confirm_closed", "pending")]
    if protocol == "dlt645":
        assert bench.gateway.press_button(bench.address(2)) is RelayState.CLOSED
    else:
        assert bench.responder.press_button(meter)
    bench.until(lambda: bench.finished(test_id), "the test finished")
    test = bench.test(test_id)
    assert test.state is SwitchTestState.PASSED, test
    assert bench.steps(test_id) == [(k, "passed") for k in PLAN]
    assert test.steps[3].detail == "relay closed by the customer's button"
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.alarms(meter) == []
    assert bench.supply(account) == "connected"


def test_no_press_of_the_button_fails_the_step_and_leaves_the_meter_armed(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for(allowed=(2,))
    meter = bench.dlt645(2)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    bench.until(lambda: bench.finished(test_id), "the test finished")
    test = bench.test(test_id)
    assert test.state is SwitchTestState.FAILED
    assert bench.steps(test_id) == [
        ("read_state", "passed"),
        ("open", "passed"),
        ("confirm_open", "passed"),
        ("close_or_allow", "failed"),
        ("confirm_closed", "skipped"),
        ("restore", "passed"),
    ]
    assert test.steps[3].detail == "no press of the button within 4 s: the relay stays open, armed"
    # as much supply as the meter can give: armed again, the customer's button closes it
    assert test.steps[5].detail == "relay put back open, armed for the customer's button (合闸允许)"
    truth = bench.gateway.snapshot(bench.address(2))
    assert (truth.relay, truth.armed) == (RelayState.OPEN, True)
    assert bench.alarms(meter) == []
    assert bench.supply(account) == "connected"
    assert bench.switch_state(switch) is CommissioningState.FAILED


def test_the_supply_is_restored_after_a_failed_test(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for()
    meter = bench.dlt645(1)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)

    def command(ordinal: int) -> store.Command | None:
        command_id = bench.test(test_id).steps[ordinal - 1].command_id
        return None if command_id is None else store.get_command(bench.conn, command_id)

    def stick_then_mend() -> None:
        # between the answers and the dispatcher's step: the relay sticks once read back open, before the close is
        # sent, and is mended once the close has failed, before the restore is sent
        read, close = command(3), command(4)
        if close is None and read is not None and read.state is CommandState.CONFIRMED:
            bench.gateway.set_fault(bench.address(1), "stuck_relay")
        elif close is not None and close.state is CommandState.FAILED:
            bench.gateway.set_fault(bench.address(1), "none")

    bench.until(lambda: bench.finished(test_id), "the test finished", before_step=stick_then_mend)
    test = bench.test(test_id)
    assert test.state is SwitchTestState.FAILED, test
    assert bench.steps(test_id) == [
        ("read_state", "passed"),
        ("open", "passed"),
        ("confirm_open", "passed"),
        ("close_or_allow", "failed"),
        ("confirm_closed", "skipped"),
        ("restore", "passed"),
    ]
    restore = test.steps[5]
    assert restore.detail == "relay put back closed"
    restored = store.get_command(bench.conn, str(restore.command_id))
    assert restored is not None
    assert (restored.action.value, restored.state, restored.test_id) == ("reconnect", CommandState.CONFIRMED, test_id)
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    assert bench.alarms(meter) == [str(AlarmKind.RELAY_MISMATCH)]  # the close that did not close
    assert bench.switch_state(switch) is CommissioningState.FAILED
    assert "failed at step 4 (close_or_allow)" in test.detail


def test_a_cancelled_test_puts_the_relay_back_and_raises_no_alarm(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for()
    meter = bench.mqtt(1)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)

    def cancel_once_read_back_open() -> None:
        test = bench.test(test_id)
        read = test.steps[2].command_id
        command = None if read is None else store.get_command(bench.conn, read)
        if test.state is SwitchTestState.RUNNING and command is not None and command.state is CommandState.CONFIRMED:
            assert bench.relay(meter) is RelayState.OPEN
            # read back open while the account's supply is connected: the test's own open, no alarm
            assert bench.alarms(meter) == []
            cancelled = operations.cancel_test(bench.conn, test_id, by=WHO, reason="customer asks to stop", now=_now())
            assert cancelled.state is SwitchTestState.CANCELLED
            assert cancelled.finished_at is None  # the relay is still to be put back

    bench.until(lambda: bench.finished(test_id), "the test finished", before_step=cancel_once_read_back_open)
    test = bench.test(test_id)
    assert test.state is SwitchTestState.CANCELLED
    assert bench.steps(test_id) == [
        ("read_state", "passed"),
        ("open", "passed"),
        ("confirm_open", "passed"),
        ("close_or_allow", "skipped"),
        ("confirm_closed", "skipped"),
        ("restore", "passed"),
    ]
    assert test.steps[5].detail == "relay put back closed"
    assert test.detail.startswith(f"cancelled by {WHO}: customer asks to stop; the relay is put back")
    assert test.cancelled_by == WHO
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    assert bench.alarms(meter) == []
    assert bench.switch_state(switch) is CommissioningState.REGISTERED  # as it was before the test
    assert history(bench.conn, switch)[-1].changes == {"commissioning_state": {"from": "testing", "to": "registered"}}


def test_a_relay_left_open_outside_a_test_is_an_unexpected_change(bench_for: Callable[..., Bench]) -> None:
    """The check the test's own open is spared: a read that finds the relay open outside a test raises the alarm."""
    bench = bench_for()
    meter = bench.mqtt(1)
    bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)

    def silence_once_read_back_open() -> None:
        read = bench.test(test_id).steps[2].command_id
        command = None if read is None else store.get_command(bench.conn, read)
        if command is not None and command.state is CommandState.CONFIRMED:
            bench.responder.set_fault(meter, RelayFault.SILENT)  # it hears the close, and neither acts nor answers

    bench.until(
        lambda: bench.finished(test_id), "the test finished", timeout_s=60, before_step=silence_once_read_back_open
    )
    test = bench.test(test_id)
    assert test.state is SwitchTestState.FAILED
    assert test.steps[-1].kind.value == "restore"
    assert test.steps[-1].state is StepState.FAILED  # the restore expired too: the detail asks for a visit
    assert "could NOT be put back" in test.detail
    assert bench.alarms(meter) == []
    bench.responder.set_fault(meter, RelayFault.NONE)
    read = request_relay_read(bench.conn, meter, by="ops", now=_now(), ttl=timedelta(seconds=5))
    bench.until(
        lambda: store.get_command(bench.conn, read.command_id).state is CommandState.CONFIRMED,  # type: ignore[union-attr]
        "the relay read",
    )
    assert bench.alarms(meter) == [str(AlarmKind.UNEXPECTED_RELAY_CHANGE)]


def test_a_disconnected_customers_relay_is_opened_again_after_the_test(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for()
    meter = bench.modbus()
    account = bench.disconnected(meter)
    assert bench.relay(meter) is RelayState.OPEN
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    bench.until(lambda: bench.finished(test_id), "the test finished")
    test = bench.test(test_id)
    assert test.state is SwitchTestState.PASSED, test
    assert bench.steps(test_id) == [*((k, "passed") for k in PLAN), ("restore", "passed")]
    assert [s.relay for s in test.steps] == ["open", "open", "open", "closed", "closed", "open"]
    assert test.steps[5].detail == "relay put back open"
    restore = store.get_command(bench.conn, str(test.steps[5].command_id))
    assert restore is not None
    assert (restore.action.value, restore.account_id) == ("disconnect", None)
    assert bench.relay(meter) is RelayState.OPEN
    assert bench.supply(account) == "disconnected"
    assert bench.alarms(meter) == []  # closed for the test while the account is cut off: no unexpected change


def test_a_meter_with_an_open_alarm_is_refused_and_the_refusal_kept(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for()
    meter = bench.dlt645(3)
    bench.account(meter)
    switch = bench.switch(meter)
    with bench.conn.transaction(), bench.conn.cursor(row_factory=dict_row) as cur:
        alarm = store.raise_alarm(cur, meter, None, AlarmKind.RELAY_MISMATCH, RelayState.CLOSED, "stuck", _now())
    with pytest.raises(SwitchTestError) as refused:
        bench.start(switch)
    assert refused.value.kind is SwitchTestErrorKind.REFUSED
    assert refused.value.test_id is not None
    assert str(refused.value) == (
        f"test {refused.value.test_id} refused: meter {meter} has unresolved relay alarm {alarm} (relay_mismatch): "
        "resolve it after checking the meter, then test"
    )
    kept = bench.test(refused.value.test_id)
    assert (kept.state, kept.steps) == (SwitchTestState.REFUSED, ())
    assert kept.finished_at is not None
    for _ in range(5):
        bench.pump()
    assert count(bench.conn, "SELECT count(*) FROM commands WHERE meter_id = %s", meter) == 0
    assert bench.switch_state(switch) is CommissioningState.REGISTERED
    # a relay command not ended on the meter refuses it too: the test would race it
    store.resolve_alarm(bench.conn, alarm, "ops", _now())
    read = request_relay_read(bench.conn, meter, by="ops", now=_now(), ttl=timedelta(seconds=5))
    with pytest.raises(SwitchTestError) as busy:
        bench.start(switch)
    assert f"command {read.command_id} (read_relay, created) has not ended" in str(busy.value)
    bench.until(
        lambda: store.get_command(bench.conn, read.command_id).state is CommandState.CONFIRMED,  # type: ignore[union-attr]
        "the relay read",
    )
    test_id = bench.start(switch)
    bench.until(lambda: bench.finished(test_id), "the test finished")
    assert bench.test(test_id).state is SwitchTestState.PASSED


@pytest.mark.parametrize("flag", ["protected", "keep_supply"])
def test_a_protected_customer_is_tested_only_once_an_operator_approves(
    bench_for: Callable[..., Bench], flag: str
) -> None:
    bench = bench_for()
    meter = bench.modbus()
    account = bench.account(meter, **{flag: True})
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    waiting = bench.test(test_id)
    assert waiting.state is SwitchTestState.AWAITING_APPROVAL
    words = "a protected customer" if flag == "protected" else "on keep supply (保电)"
    assert waiting.approval_reason == f"account {account} is {words}: an operator must approve opening its relay"
    for _ in range(5):
        bench.pump()
    assert bench.test(test_id).state is SwitchTestState.AWAITING_APPROVAL
    assert bench.test_commands(test_id) == []
    assert bench.switch_state(switch) is CommissioningState.TESTING
    with pytest.raises(SwitchTestError):
        operations.record_result(bench.conn, test_id, SwitchTestResult.FAILED, "no", by=WHO, now=_now())

    approved = operations.approve_test(bench.conn, test_id, by="ops.zhang", now=_now())
    assert (approved.state, approved.approved_by) == (SwitchTestState.PENDING, "ops.zhang")
    with pytest.raises(SwitchTestError) as twice:
        operations.approve_test(bench.conn, test_id, by="ops.zhang", now=_now())
    assert twice.value.kind is SwitchTestErrorKind.STATE
    bench.until(lambda: bench.finished(test_id), "the test finished")
    assert bench.test(test_id).state is SwitchTestState.PASSED
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    sent = store.history(bench.conn, bench.test_commands(test_id)[1].command_id)[1]
    assert sent["inputs"]["approved_by"] == "ops.zhang"
    assert sent["inputs"][flag] is True


def test_the_open_is_rechecked_when_it_is_sent(bench_for: Callable[..., Bench]) -> None:
    # a storm limit of 0 holds every disconnect: the test's open waits for an operator like any other
    bench = bench_for(config=replace(FAST, storm_limit=0))
    meter = bench.dlt645(1)
    account = bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)

    def open_command() -> store.Command | None:
        command_id = bench.test(test_id).steps[1].command_id
        return None if command_id is None else store.get_command(bench.conn, command_id)

    bench.until(
        lambda: bench.test(test_id).steps[1].detail.startswith("open the relay (disconnect): held, storm limit"),
        "the open held, and the step saying so",
    )
    # the customer became protected meanwhile: the approved open is re-checked and withdrawn before it leaves
    set_flags(bench.conn, bench.catalog, account, protected=True, keep_supply=False, now=_now())
    held = open_command()
    assert held is not None
    approve(bench.conn, held.command_id, by="ops.zhang", now=_now())
    bench.until(lambda: bench.finished(test_id), "the test finished")
    withdrawn = open_command()
    assert withdrawn is not None
    assert withdrawn.state is CommandState.CANCELLED
    assert withdrawn.attempts == 0
    assert withdrawn.detail == (
        f"account {account} is a protected customer: an operator must approve opening its relay; "
        f"test {test_id} was not approved"
    )
    test = bench.test(test_id)
    assert test.state is SwitchTestState.FAILED
    assert [s.kind.value for s in test.steps] == PLAN  # nothing was moved: nothing to put back
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"


def test_the_dispatch_worker_runs_a_test(bench_for: Callable[..., Bench], database_url: str) -> None:
    bench = bench_for()
    meter = bench.dlt645(1)
    bench.account(meter)
    switch = bench.switch(meter)
    test_id = bench.start(switch)
    settings = Settings(
        database_url=database_url,
        mqtt_host=MQTT_HOST,
        mqtt_port=MQTT_PORT,
        dispatch_client_id=f"test-dispatch-{uuid.uuid4().hex[:6]}",
        mqtt_shared_group=None,
        poll_timeout_s=0.5,
        dispatch_poll_s=0.1,
        dispatch_relay_settle_s=0.3,
        dispatch_armed_check_s=0.2,
    )
    stop = threading.Event()
    thread = threading.Thread(target=run_dispatcher, args=(settings, database_url, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not bench.finished(test_id):
            assert time.monotonic() < deadline, bench.test_now()
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert bench.test(test_id).state is SwitchTestState.PASSED
    assert bench.relay(meter) is RelayState.CLOSED


def test_the_dispatch_role_runs_a_test_and_puts_the_relay_back(
    bench_for: Callable[..., Bench], migrated: MigratedDatabase
) -> None:
    bench = bench_for()
    url = migrated.role_url(DbRole.DISPATCH)
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as audit_conn:
        executors: dict[str, CommandSender] = {
            "mqtt": bench.transport,
            "modbus": bench.executor,
            "dlt645": bench.executor,
        }
        dispatcher = Dispatcher(conn, audit_conn, bench.transport, executors=executors, config=FAST, catalog=Catalog())
        as_dispatch = replace(bench, dispatcher=dispatcher)
        meter = bench.dlt645(1)
        account = bench.account(meter)
        switch = bench.switch(meter)
        test_id = bench.start(switch)

        def cancel_once_read_back_open() -> None:
            test = bench.test(test_id)
            read = test.steps[2].command_id
            command = None if read is None else store.get_command(bench.conn, read)
            if (
                test.state is SwitchTestState.RUNNING
                and command is not None
                and command.state is CommandState.CONFIRMED
            ):
                operations.cancel_test(bench.conn, test_id, by=WHO, reason="stop", now=_now())

        as_dispatch.until(lambda: bench.finished(test_id), "the test finished", before_step=cancel_once_read_back_open)
    test = bench.test(test_id)
    assert (test.state, test.steps[-1].kind.value, test.steps[-1].state) == (
        SwitchTestState.CANCELLED,
        "restore",
        StepState.PASSED,
    )
    assert bench.relay(meter) is RelayState.CLOSED
    assert bench.supply(account) == "connected"
    assert bench.switch_state(switch) is CommissioningState.REGISTERED


def test_one_test_at_a_time_on_a_meter(bench_for: Callable[..., Bench]) -> None:
    bench = bench_for()
    meter = bench.mqtt(1)
    bench.account(meter)
    first, second = bench.switch(meter, "QF-A"), bench.switch(meter, "QF-B")
    test_id = bench.start(first)
    for switch_id, whose in ((first, "this switch"), (second, f"switch {first} on the same meter")):
        with pytest.raises(SwitchTestError) as busy:
            bench.start(switch_id)
        assert busy.value.kind is SwitchTestErrorKind.TESTING
        assert str(busy.value) == (
            f"test {test_id} of {whose} is pending and has not finished: one test at a time on a meter"
        )
    cancelled = operations.cancel_test(bench.conn, test_id, by=WHO, reason="wrong switch", now=_now())
    assert cancelled.finished_at is not None  # never started: nothing to put back
    assert [s.state for s in cancelled.steps] == [StepState.SKIPPED] * 5
    assert bench.switch_state(first) is CommissioningState.REGISTERED
    with pytest.raises(SwitchTestError) as ended:
        operations.cancel_test(bench.conn, test_id, by=WHO, reason="again", now=_now())
    assert ended.value.kind is SwitchTestErrorKind.STATE
    bench.start(second)


def _now() -> datetime:
    return datetime.now(UTC)


# --- the API ------------------------------------------------------------------------------------------------------


@dataclass
class Api:
    """A client of the API (as the `api` database role) beside the bench, principals of every role."""

    client: TestClient
    bench: Bench
    tokens: dict[str, str]

    def send(self, method: str, url: str, who: str | None = "field", body: Any = None) -> httpx2.Response:
        """A request as a principal (None: no token), with a JSON body (bytes as they are)."""
        headers = {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}
        content = None
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.client.request(method, url, content=content, headers=headers)


@pytest.fixture
def api(bench_for: Callable[..., Bench], migrated: MigratedDatabase) -> Iterator[Api]:
    """The API at the real clock, a principal of every role, and the bench whose dispatcher runs the tests."""
    bench = bench_for()
    tokens = {}
    for name, role in (
        ("field", Role.FIELD_STAFF),
        ("ops", Role.OPERATOR),
        ("view", Role.VIEWER),
        ("root", Role.ADMIN),
        ("wechat", Role.CHANNEL),
    ):
        tokens[name] = new_token()
        api_store.create_principal(bench.conn, name, role, tokens[name], created_by="test")
    app = create_app(Settings(database_url=migrated.role_url(DbRole.API), api_pool_size=2))
    with TestClient(app) as client:
        yield Api(client, bench, tokens)


def _problem(answer: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:headend:problem:{code}", body
    return body


def test_field_staff_start_a_test_follow_its_steps_and_record_the_switch_commissioned(api: Api) -> None:
    bench = api.bench
    meter = bench.mqtt(1)
    bench.account(meter)
    switch = bench.switch(meter)
    started = api.send("POST", f"/v1/switches/{switch}/tests")
    assert started.status_code == 202, started.text
    test = started.json()
    assert started.headers["location"] == f"/v1/switch-tests/{test['id']}"
    assert (test["switch_id"], test["meter_id"], test["state"], test["requested_by"]) == (
        switch,
        meter,
        "pending",
        "field",
    )
    assert [(s["ordinal"], s["kind"], s["state"]) for s in test["steps"]] == [
        (n, kind, "pending") for n, kind in enumerate(PLAN, 1)
    ]
    assert test["requested_at"].endswith("Z")
    for who in ("field", "ops", "view", "root"):
        assert api.send("GET", f"/v1/switch-tests/{test['id']}", who).status_code == 200, who
    _problem(api.send("GET", f"/v1/switch-tests/{test['id']}", "wechat"), 403, "forbidden")
    _problem(api.send("GET", f"/v1/switch-tests/{test['id']}", None), 401, "unauthorized")
    # the result waits for the steps
    _problem(
        api.send("POST", f"/v1/switch-tests/{test['id']}/result", body={"result": "commissioned", "note": "ok"}),
        409,
        "switch_test_state",
    )

    bench.until(lambda: bench.finished(test["id"]), "the test finished")
    done = api.send("GET", f"/v1/switch-tests/{test['id']}", "view").json()
    assert done["state"] == "passed"
    assert [(s["kind"], s["state"], s["relay"]) for s in done["steps"]] == list(
        zip(PLAN, ["passed"] * 5, ["closed", "open", "open", "closed", "closed"], strict=True)
    )
    assert all(s["command_id"] == f"test:{test['id']}:{s['ordinal']}:{s['kind']}" for s in done["steps"])
    read = api.send("GET", f"/v1/commands/{done['steps'][1]['command_id']}", "ops").json()
    assert [h["to_state"] for h in read["history"]] == ["created", "sent", "acknowledged", "confirmed"]
    listed = api.send("GET", f"/v1/switches/{switch}/tests", "view").json()
    assert [(t["id"], t["state"], t["steps"]) for t in listed["tests"]] == [(test["id"], "passed", [])]

    body = {"result": "commissioned", "note": "the pump room went dark and came back"}
    for who in ("ops", "view", "wechat"):
        _problem(api.send("POST", f"/v1/switch-tests/{test['id']}/result", who, body), 403, "forbidden")
    for bad in ({"result": "maybe", "note": "x"}, {"result": "failed"}, {**body, "extra": 1}, {**body, "note": ""}):
        _problem(api.send("POST", f"/v1/switch-tests/{test['id']}/result", body=bad), 422, "unprocessable")
    _problem(
        api.send("POST", f"/v1/switch-tests/{test['id']}/result", body={**body, "note": "   "}),
        422,
        "invalid_switch_test",
    )
    recorded = api.send("POST", f"/v1/switch-tests/{test['id']}/result", body=body)
    assert recorded.status_code == 200, recorded.text
    assert (recorded.json()["result"], recorded.json()["result_by"]) == ("commissioned", "field")
    assert api.send("GET", f"/v1/switches/{switch}", "view").json()["commissioning_state"] == "commissioned"
    _problem(api.send("POST", f"/v1/switch-tests/{test['id']}/result", body=body), 409, "switch_test_state")


def test_only_field_staff_and_admin_start_a_test(api: Api) -> None:
    bench = api.bench
    switch = bench.switch(bench.mqtt(1))
    for who, status, code in (("ops", 403, "forbidden"), ("view", 403, "forbidden"), ("wechat", 403, "forbidden")):
        _problem(api.send("POST", f"/v1/switches/{switch}/tests", who), status, code)
    _problem(api.send("POST", f"/v1/switches/{switch}/tests", None), 401, "unauthorized")
    assert count(bench.conn, "SELECT count(*) FROM switch_tests") == 0
    answer = api.send("POST", f"/v1/switches/{switch}/tests", "root")
    assert answer.status_code == 202, answer.text
    assert answer.json()["requested_by"] == "root"


def test_refusals_answer_problems_and_keep_a_refused_test(api: Api) -> None:
    bench = api.bench
    _problem(api.send("POST", "/v1/switches/999/tests"), 404, "unknown_switch")
    _problem(api.send("GET", "/v1/switch-tests/999"), 404, "unknown_switch_test")
    _problem(api.send("GET", "/v1/switches/999/tests"), 404, "unknown_switch")
    _problem(api.send("GET", "/v1/switch-tests/0"), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches/abc/tests"), 422, "unprocessable")
    meter = bench.dlt645(3)
    switch = bench.switch(meter)
    with bench.conn.transaction(), bench.conn.cursor(row_factory=dict_row) as cur:
        alarm = store.raise_alarm(cur, meter, None, AlarmKind.RELAY_MISMATCH, RelayState.CLOSED, "stuck", _now())
    refused = api.send("POST", f"/v1/switches/{switch}/tests")
    body = _problem(refused, 409, "switch_test_refused")
    kept = api.send("GET", refused.headers["location"], "view").json()
    assert kept["state"] == "refused"
    assert body["detail"] == f"test {kept['id']} {kept['detail']}"
    assert f"unresolved relay alarm {alarm}" in body["detail"]
    assert api.send("GET", f"/v1/switches/{switch}", "view").json()["commissioning_state"] == "registered"
    store.resolve_alarm(bench.conn, alarm, "ops", _now())

    started = api.send("POST", f"/v1/switches/{switch}/tests").json()
    busy = _problem(api.send("POST", f"/v1/switches/{switch}/tests"), 409, "switch_testing")
    assert busy["detail"].startswith(f"test {started['id']} of this switch is pending")
    # a switch under test can't be retired (the registry's rule), one retired can't be tested
    _problem(api.send("POST", f"/v1/switches/{switch}/retire", body={"reason": "gone"}), 409, "switch_testing")
    cancelled = api.send("POST", f"/v1/switch-tests/{started['id']}/cancel", body={"reason": "wrong switch"})
    assert cancelled.status_code == 200, cancelled.text
    assert api.send("POST", f"/v1/switches/{switch}/retire", body={"reason": "gone"}).status_code == 200
    _problem(api.send("POST", f"/v1/switches/{switch}/tests"), 409, "switch_retired")
    other = bench.switch(bench.dlt645(2))
    bench.conn.execute("UPDATE meters SET status = 'inactive' WHERE meter_id = %s", (bench.dlt645(2),))
    _problem(api.send("POST", f"/v1/switches/{other}/tests"), 422, "inactive_meter")


def test_an_operator_approves_the_test_of_a_protected_customer(api: Api) -> None:
    bench = api.bench
    meter = bench.mqtt(1)
    account = bench.account(meter, keep_supply=True)
    switch = bench.switch(meter)
    waiting = api.send("POST", f"/v1/switches/{switch}/tests")
    assert waiting.status_code == 202, waiting.text
    test = waiting.json()
    assert test["state"] == "awaiting_approval"
    assert test["approval_reason"] == (
        f"account {account} is on keep supply (保电): an operator must approve opening its relay"
    )
    url = f"/v1/switch-tests/{test['id']}/approve"
    for who in ("field", "view", "wechat"):
        _problem(api.send("POST", url, who), 403, "forbidden")
    approved = api.send("POST", url, "ops")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["state"], approved.json()["approved_by"]) == ("pending", "ops")
    _problem(api.send("POST", url, "root"), 409, "switch_test_state")
    _problem(api.send("POST", "/v1/switch-tests/999/approve", "ops"), 404, "unknown_switch_test")
    bench.until(lambda: bench.finished(test["id"]), "the test finished")
    assert api.send("GET", f"/v1/switch-tests/{test['id']}").json()["state"] == "passed"


def test_a_test_is_cancelled_with_a_reason_by_field_staff_or_an_operator(api: Api) -> None:
    bench = api.bench
    meter = bench.mqtt(1)
    bench.account(meter)
    switch = bench.switch(meter)
    test = api.send("POST", f"/v1/switches/{switch}/tests").json()
    url = f"/v1/switch-tests/{test['id']}/cancel"
    for bad in (None, {}, {"reason": ""}, {"reason": 5}, {"reason": "x", "by": "me"}, b"{"):
        _problem(api.send("POST", url, body=bad), 422, "unprocessable")
    _problem(api.send("POST", url, body={"reason": " "}), 422, "invalid_switch_test")
    _problem(api.send("POST", url, body={"reason": "x" * 501}), 422, "unprocessable")
    for who in ("view", "wechat"):
        _problem(api.send("POST", url, who, {"reason": "stop"}), 403, "forbidden")
    _problem(api.send("POST", "/v1/switch-tests/999/cancel", body={"reason": "stop"}), 404, "unknown_switch_test")
    cancelled = api.send("POST", url, "ops", {"reason": "the customer is not at home"})
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["state"], body["cancelled_by"]) == ("cancelled", "ops")
    assert body["detail"] == "cancelled by ops: the customer is not at home; nothing was sent"
    assert [s["state"] for s in body["steps"]] == ["skipped"] * 5
    _problem(api.send("POST", url, "field", {"reason": "again"}), 409, "switch_test_state")
    assert api.send("GET", f"/v1/switches/{switch}", "view").json()["commissioning_state"] == "registered"
    for _ in range(3):
        bench.pump()
    assert bench.test_commands(test["id"]) == []


# --- the command line ---------------------------------------------------------------------------------------------


def _cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"HEADEND_DATABASE_URL": database_url})


def test_the_command_line_runs_a_test_step_by_step_and_records_the_result(
    bench_for: Callable[..., Bench], database_url: str
) -> None:
    bench = bench_for(allowed=(2,))
    meter = bench.dlt645(2)
    bench.account(meter)
    switch = bench.switch(meter)
    stop = threading.Event()
    pressed: list[bool] = []

    def dispatcher() -> None:
        # the dispatcher, and the customer pressing the button a while after the meter armed (the command line looks
        # every half second)
        armed_at: float | None = None
        while not stop.is_set():
            bench.pump()
            if armed_at is None and bench.gateway.snapshot(bench.address(2)).armed:
                armed_at = time.monotonic()
            if not pressed and armed_at is not None and time.monotonic() - armed_at > 3 * WAIT_POLL_S:
                pressed.append(bench.gateway.press_button(bench.address(2)) is RelayState.CLOSED)

    thread = threading.Thread(target=dispatcher)
    thread.start()
    try:
        ran = _cli(database_url, "switches", "test", str(switch), "--by", WHO, "--wait", "--timeout", "60")
    finally:
        stop.set()
        thread.join(15)
    assert ran.exit_code == 0, ran.output
    assert pressed == [True]
    lines = ran.stdout.splitlines()
    [test_id] = bench.conn.execute("SELECT test_id FROM switch_tests WHERE switch_id = %s", (switch,)).fetchone() or []
    assert lines[0] == (
        f"test {test_id} of switch {switch} on meter {meter}: pending: the dispatcher starts it at its next step"
    )
    assert lines[4] == "  4  close_or_allow allow closing (合闸允许): the customer presses the meter's button on site"
    assert any(
        line.endswith(
            "step 4 close_or_allow: waiting_button [open] - relay armed (合闸允许): waiting for the customer to "
            "press the meter's button on site"
        )
        for line in lines
    ), lines
    pressed_line = "step 4 close_or_allow: passed [closed] - relay closed by the customer's button"
    assert any(line.endswith(pressed_line) for line in lines)
    assert any(line.endswith("step 5 confirm_closed: passed [closed] - relay read back closed") for line in lines)
    assert lines[-1].startswith(f"record the result: headend switches test-result {test_id}")

    shown = _cli(database_url, "switches", "test-show", str(test_id))
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"test           {test_id}  of switch {switch} on meter {meter}  (passed)" in text
    assert "  4  close_or_allow passed         closed relay closed by the customer's button" in text
    as_json = json.loads(_cli(database_url, "switches", "test-show", str(test_id), "--json").stdout)
    assert [s["state"] for s in as_json["steps"]] == ["passed"] * 5

    commissioned = _cli(
        database_url,
        "switches",
        "test-result",
        str(test_id),
        "--result",
        "commissioned",
        "--note",
        "unit 2 went dark and came back with the button",
        "--by",
        WHO,
    )
    assert commissioned.exit_code == 0, commissioned.output
    assert commissioned.stdout.strip() == f"switch {switch} commissioned (test {test_id}) by {WHO}"
    assert bench.switch_state(switch) is CommissioningState.COMMISSIONED
    again = _cli(database_url, "switches", "test-result", str(test_id), "--result", "failed", "--note", "x", "--by=z")
    assert again.exit_code == 1
    assert "result was recorded by field.li" in again.output


def test_the_command_line_approves_cancels_and_reports_refusals(
    bench_for: Callable[..., Bench], database_url: str
) -> None:
    bench = bench_for()
    meter = bench.mqtt(1)
    account = bench.account(meter, protected=True)
    switch = bench.switch(meter)
    started = _cli(database_url, "switches", "test", str(switch), "--by", WHO)
    assert started.exit_code == 0, started.output
    [test_id] = bench.conn.execute("SELECT test_id FROM switch_tests WHERE switch_id = %s", (switch,)).fetchone() or []
    assert started.stdout.splitlines()[0] == (
        f"test {test_id} of switch {switch} on meter {meter}: awaiting approval: account {account} "
        "is a protected customer: an operator must approve opening its relay"
    )
    assert started.stdout.splitlines()[-1] == f"follow it: headend switches test-show {test_id}"
    approved = _cli(database_url, "switches", "test-approve", str(test_id), "--by", "ops.zhang")
    assert (approved.exit_code, approved.stdout.strip()) == (0, f"test {test_id} approved by ops.zhang: pending")
    cancelled = _cli(database_url, "switches", "test-cancel", str(test_id), "--reason=no key to the room", "--by=z")
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() == f"test {test_id} cancelled by z: no key to the room; nothing was sent"
    assert _cli(database_url, "switches", "test-approve", str(test_id), "--by", "ops.zhang").exit_code == 1
    assert _cli(database_url, "switches", "test-show", "999").exit_code == 1
    with bench.conn.transaction(), bench.conn.cursor(row_factory=dict_row) as cur:
        store.raise_alarm(cur, meter, None, AlarmKind.COMMAND_FAILED, RelayState.CLOSED, "failed", _now())
    refused = _cli(database_url, "switches", "test", str(switch), "--by", WHO, "--wait")
    assert refused.exit_code == 1
    assert "refused: meter" in refused.output
    assert "unresolved relay alarm" in refused.output
