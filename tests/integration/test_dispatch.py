"""The prepaid loop end to end: engine → command outbox → dispatcher → real Mosquitto → simulated meters → back."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from headend.dispatch import store
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher
from headend.dispatch.lifecycle import CommandState, RetryPolicy
from headend.dispatch.mqtt_transport import MqttTransport
from headend.dispatch.operations import approve, request_relay_read
from headend.dispatch.service import run_dispatcher
from headend.dispatch.wake import wake_on_command_requests
from headend.engine.accounts import open_account, pay
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from headend.mqtt.embedded_broker import free_port
from headend.settings import Settings
from prepay_engine.payments import TopUp
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from simulators.command_responder import CommandResponder
from simulators.fleet import Fleet, SimConcentrator, SimMeter
from simulators.load_shapes import MeterKind
from simulators.publisher import BrokerConfig
from simulators.relay_sim import RelayFault
from tests.integration.conftest import MQTT_HOST, MQTT_PORT, count, register, wait_for
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog, series, store_readings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
ENGINE_NOW = DAY_START + timedelta(days=1, hours=2)
FAST = DispatchConfig(command_ttl=timedelta(seconds=4), retry=RetryPolicy(0.5, 1.0), storm_limit=100)


@dataclass
class Loop:
    """The engine, the dispatcher on the real broker and a simulated fleet, for one test."""

    conn: Conn
    catalog: Catalog
    dispatcher: Dispatcher
    transport: MqttTransport
    responder: CommandResponder
    prefix: str

    def meter(self, n: int) -> str:
        return f"{self.prefix}m{n}"

    def account(self, n: int) -> str:
        return f"{self.prefix}a{n}"

    def run_engine(self) -> None:
        EngineRunner(self.conn, 600.0, 100, clock=lambda: ENGINE_NOW, catalog=self.catalog).sweep()

    def pump(self) -> None:
        """Handle the events received so far, then one dispatcher step."""
        for message in self.transport.events(0.05):
            self.dispatcher.handle_event(message.topic, bytes(message.payload))
            self.transport.ack(message)
        self.dispatcher.step()

    def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if condition():
                return
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")

    def commands(self, account_id: str) -> list[tuple[str, str, str]]:
        rows = self.conn.execute(
            "SELECT command_id, action, state FROM commands WHERE account_id = %s ORDER BY sequence", (account_id,)
        ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def pay(self, n: int, channel: str) -> None:
        """Credit account n with ¥500 through a channel, now (one transaction id per channel and test)."""
        now = datetime.now(UTC)
        top_up = TopUp(channel, f"{channel}-{self.prefix}", self.account(n), 50_000, now)
        pay(self.conn, self.catalog, top_up, now=now, received_by="test")

    def requests(self, account_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT request_id FROM command_requests WHERE account_id = %s ORDER BY sequence", (account_id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def supply(self, account_id: str) -> str:
        row = self.conn.execute("SELECT supply FROM prepaid_accounts WHERE account_id = %s", (account_id,)).fetchone()
        assert row is not None
        return str(row[0])

    def exhaust(self, n: int, *, concentrator: str | None = None, protocol: str = "mqtt") -> None:
        """Open account n on meter n and feed it a day of heavy use: its balance runs out, a disconnect is due."""
        register(self.conn, [self.meter(n)], concentrator=concentrator)
        if protocol != "mqtt":  # a polled meter: where it answers (unit n of a gateway the test never reaches)
            self.conn.execute(
                "UPDATE meters SET protocol = %s, concentrator_id = NULL, endpoint = '127.0.0.1:9', "
                "unit_id = CASE WHEN %s = 'modbus' THEN %s END, "
                "address = CASE WHEN %s = 'dlt645' THEN lpad(%s::text, 12, '0') END WHERE meter_id = %s",
                (protocol, protocol, n, protocol, n, self.meter(n)),
            )
        open_account(
            self.conn,
            self.catalog,
            self.account(n),
            meter_id=self.meter(n),
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=DAY_START,
            opening_register_wh=1_000_000,
            zone=SHANGHAI,
        )
        store_readings(self.conn, series(self.meter(n), DAY_START + STEP, 16, STEP, 1_000_500, 500))
        self.run_engine()


def _settings(database_url: str, prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        mqtt_host=MQTT_HOST,
        mqtt_port=MQTT_PORT,
        dispatch_client_id=f"test-dispatch-{prefix}",
        mqtt_shared_group=None,
    )


@pytest.fixture
def loop_for(database_url: str) -> Iterator[Callable[..., Loop]]:
    """Build the loop for meters 1..n with per-meter faults and reconnect modes."""
    prefix = f"d{uuid.uuid4().hex[:6]}"
    stack: list[Any] = []

    def make(
        meters: int = 1,
        *,
        faults: dict[int, RelayFault] | None = None,
        allowed: tuple[int, ...] = (),
        via_dcu: tuple[int, ...] = (),
        config: DispatchConfig = FAST,
    ) -> Loop:
        conn = psycopg.connect(database_url, autocommit=True)
        audit_conn = psycopg.connect(database_url, autocommit=True)
        stack.extend([conn, audit_conn])
        catalog = seed_catalog(conn)
        fleet = Fleet(
            tuple(
                SimMeter(
                    f"{prefix}m{n}",
                    f"{prefix}dcu" if n in via_dcu else None,
                    "test",
                    "SIM-1",
                    MeterKind.RESIDENTIAL,
                    1_000_000,
                    reconnect_mode="allowed" if n in allowed else "direct",
                )
                for n in range(1, meters + 1)
            ),
            (SimConcentrator(f"{prefix}dcu", "test"),) if via_dcu else (),
            seed=7,
        )
        responder = CommandResponder(
            fleet,
            BrokerConfig(host=MQTT_HOST, port=MQTT_PORT),
            faults={f"{prefix}m{n}": f for n, f in (faults or {}).items()},
            delay_s=(0.05, 0.2),
        )
        responder.start()
        stack.append(responder)
        transport = MqttTransport(_settings(database_url, prefix), f"test-dispatch-{prefix}").__enter__()
        stack.append(transport)
        assert transport.wait_subscribed(10)
        # the MQTT executor only; the dispatch worker's Modbus and DL/T 645 executor: test_dispatch_polled.py
        executors = {"mqtt": transport}
        dispatcher = Dispatcher(conn, audit_conn, transport, executors=executors, config=config, catalog=catalog)
        return Loop(conn, catalog, dispatcher, transport, responder, prefix)

    yield make
    for item in reversed(stack):
        if isinstance(item, CommandResponder):
            item.stop()
        elif isinstance(item, MqttTransport):
            item.__exit__(None, None, None)
        else:
            item.close()


def _states(trail: list[dict[str, Any]]) -> list[str]:
    return [str(e["to_state"]) for e in trail]


def test_an_exhausted_balance_disconnects_the_meter_and_the_relay_confirms_it(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for()
    loop.exhaust(1)
    [command_id] = loop.requests(loop.account(1))
    assert command_id.endswith(":disconnect")
    loop.until(lambda: loop.commands(loop.account(1))[0][2] == "confirmed", "the disconnect confirmed")
    assert loop.responder.relay(loop.meter(1)) is RelayState.OPEN
    totals = loop.dispatcher.totals  # what the status lines report
    assert (totals.taken, totals.confirmed, totals.failed, totals.rejected_events) == (1, 1, 0, 0)
    assert totals.sent >= 1
    assert totals.events >= 1
    assert loop.supply(loop.account(1)) == "disconnected"
    trail = store.history(loop.conn, command_id)
    assert _states(trail) == ["created", "sent", "acknowledged", "confirmed"]
    # the audit record of the send carries the balance it was judged on, and the policy's reasons
    sent = trail[1]["inputs"]
    assert sent["balance_fen"] < 0
    assert sent["reasons"]
    assert trail[0]["inputs"]["reasons"]
    relay = loop.conn.execute("SELECT relay FROM meter_relays WHERE meter_id = %s", (loop.meter(1),)).fetchone()
    assert relay == ("open",)


def test_a_payment_while_the_disconnect_is_pending_keeps_the_lights_on(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for()
    loop.exhaust(1)
    [disconnect_id] = loop.requests(loop.account(1))  # in the outbox, not taken by the dispatcher yet
    loop.pay(1, "wechat")
    loop.until(
        lambda: [c[2] for c in loop.commands(loop.account(1))] == ["superseded", "confirmed"],
        "the disconnect superseded and the reconnect confirmed",
    )
    assert loop.responder.status(loop.meter(1)).relay is RelayState.CLOSED
    assert loop.responder.counts.commands_received == 1  # the reconnect only: the disconnect never left
    assert _states(store.history(loop.conn, disconnect_id)) == ["created", "superseded"]
    assert loop.supply(loop.account(1)) == "connected"


def test_a_disconnect_whose_account_paid_before_the_send_is_cancelled_by_the_recheck(
    loop_for: Callable[..., Loop],
) -> None:
    loop = loop_for()
    loop.exhaust(1)
    loop.conn.execute("UPDATE prepaid_accounts SET keep_supply = true WHERE account_id = %s", (loop.account(1),))
    loop.until(lambda: loop.commands(loop.account(1))[0][2] == "cancelled", "the disconnect cancelled at send time")
    assert loop.responder.counts.commands_received == 0
    trail = store.history(loop.conn, loop.commands(loop.account(1))[0][0])
    assert "keep-supply" in trail[-1]["detail"]
    assert loop.supply(loop.account(1)) == "connected"
    assert count(loop.conn, "SELECT count(*) FROM prepaid_accounts WHERE pending_command IS NOT NULL") == 0


def test_a_payment_after_the_disconnect_reconnects_and_the_relay_confirms_it(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for()
    loop.exhaust(1)
    loop.until(lambda: loop.supply(loop.account(1)) == "disconnected", "the disconnect")
    loop.pay(1, "alipay")
    loop.until(lambda: loop.supply(loop.account(1)) == "connected", "the reconnect confirmed")
    assert [c[1:] for c in loop.commands(loop.account(1))] == [
        ("disconnect", "confirmed"),
        ("reconnect", "confirmed"),
    ]
    assert loop.responder.relay(loop.meter(1)) is RelayState.CLOSED


def test_a_stuck_relay_fails_the_command_and_raises_an_alarm(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for(faults={1: RelayFault.STUCK})
    loop.exhaust(1)
    loop.until(lambda: loop.commands(loop.account(1))[0][2] == "failed", "the disconnect failed")
    assert (loop.dispatcher.totals.failed, loop.dispatcher.totals.confirmed) == (1, 0)
    alarms = loop.conn.execute("SELECT kind, relay FROM relay_alarms WHERE meter_id = %s", (loop.meter(1),)).fetchall()
    assert [tuple(a) for a in alarms] == [("relay_mismatch", "closed")]
    assert loop.supply(loop.account(1)) == "connected"  # never recorded as disconnected
    # the account decides again; its next disconnect waits for an operator while the alarm is open
    loop.until(lambda: [c[2] for c in loop.commands(loop.account(1))][-1:] == ["held"], "the next disconnect held")
    held = loop.commands(loop.account(1))[-1][0]
    assert "unresolved relay alarm" in store.history(loop.conn, held)[-1]["detail"]


def test_an_offline_meter_expires_the_command_and_is_never_recorded_as_disconnected(
    loop_for: Callable[..., Loop],
) -> None:
    loop = loop_for(faults={1: RelayFault.OFFLINE})
    loop.exhaust(1)
    first = loop.requests(loop.account(1))[0]
    loop.until(lambda: loop.commands(loop.account(1))[0][2] == "expired", "the disconnect expired", timeout_s=15)
    trail = store.history(loop.conn, first)
    assert _states(trail)[0] == "created"
    assert _states(trail)[-1] == "expired"
    assert _states(trail).count("sent") >= 2  # resent with backoff before the deadline
    assert loop.supply(loop.account(1)) == "connected"


def test_a_reconnect_allowed_meter_arms_and_closes_when_the_customer_presses(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for(allowed=(1,))
    loop.exhaust(1)
    loop.conn.execute("UPDATE meters SET reconnect_mode = 'allowed' WHERE meter_id = %s", (loop.meter(1),))
    loop.until(lambda: loop.supply(loop.account(1)) == "disconnected", "the disconnect")
    loop.pay(1, "wechat")
    loop.until(lambda: loop.supply(loop.account(1)) == "reconnect_allowed", "the meter armed")
    assert loop.responder.relay(loop.meter(1)) is RelayState.OPEN
    assert loop.responder.press_button(loop.meter(1))
    loop.until(lambda: loop.supply(loop.account(1)) == "connected", "the button press reported")
    assert count(loop.conn, "SELECT count(*) FROM relay_alarms") == 0


def test_a_disconnect_storm_waits_for_an_operator(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for(3, config=DispatchConfig(command_ttl=timedelta(seconds=30), storm_limit=2))
    for n in (1, 2, 3):
        loop.exhaust(n)
    loop.until(
        lambda: sorted(loop.commands(loop.account(n))[0][2] for n in (1, 2, 3)) == ["confirmed", "confirmed", "held"],
        "two disconnects sent, the third held",
    )
    [held] = [loop.commands(loop.account(n))[0][0] for n in (1, 2, 3) if loop.commands(loop.account(n))[0][2] == "held"]
    assert "storm limit" in store.history(loop.conn, held)[-1]["detail"]
    approve(loop.conn, held, by="operator-1", now=datetime.now(UTC))
    loop.until(lambda: store.get_command(loop.conn, held).state is CommandState.CONFIRMED, "the approved one")  # type: ignore[union-attr]


def test_an_undecodable_or_unknown_event_is_kept_as_a_dead_letter(
    loop_for: Callable[..., Loop], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "headend.dispatch.dispatcher")
    loop = loop_for()
    assert not loop.dispatcher.handle_event(f"meters/{loop.meter(1)}/events", b'{"relay": "ajar"}')
    assert not loop.dispatcher.handle_event(
        f"meters/{loop.meter(1)}/events",
        b'{"command_id": "nope", "result": "executed", "relay": "open", "ts": "2026-11-22T08:00:00+00:00"}',
    )
    reasons = [r[0] for r in loop.conn.execute("SELECT reason FROM dead_letters WHERE source = 'dispatch'")]
    assert len(reasons) == 2
    assert "unknown command" in reasons[1]
    assert (loop.dispatcher.totals.events, loop.dispatcher.totals.rejected_events) == (2, 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"refused event on meters/{loop.meter(1)}/events: {reason}" for reason in reasons
    ]


def test_a_relay_read_confirms_the_position_and_a_disagreement_raises_an_alarm(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for()
    loop.exhaust(1)
    loop.until(lambda: loop.supply(loop.account(1)) == "disconnected", "the disconnect")
    read = request_relay_read(loop.conn, loop.meter(1), by="field-7", now=datetime.now(UTC), ttl=timedelta(seconds=30))
    loop.until(lambda: store.get_command(loop.conn, read.command_id).state is CommandState.CONFIRMED, "the read")  # type: ignore[union-attr]
    assert store.get_command(loop.conn, read.command_id).relay == "open"  # type: ignore[union-attr]
    assert count(loop.conn, "SELECT count(*) FROM relay_alarms") == 0
    # someone closes the relay by hand: the next read disagrees with the account's supply
    loop.responder.press_button(loop.meter(1))  # not armed: nothing happens
    loop.conn.execute("UPDATE prepaid_accounts SET supply = 'connected' WHERE account_id = %s", (loop.account(1),))
    again = request_relay_read(loop.conn, loop.meter(1), by="field-7", now=datetime.now(UTC), ttl=timedelta(seconds=30))
    loop.until(lambda: store.get_command(loop.conn, again.command_id).state is CommandState.CONFIRMED, "the read")  # type: ignore[union-attr]
    alarms = loop.conn.execute("SELECT kind, command_id FROM relay_alarms").fetchall()
    assert [tuple(a) for a in alarms] == [("unexpected_relay_change", again.command_id)]


def test_a_meter_behind_a_concentrator_is_commanded_through_it(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for(via_dcu=(1,))
    loop.exhaust(1, concentrator=f"{loop.prefix}dcu")
    loop.until(lambda: loop.supply(loop.account(1)) == "disconnected", "the disconnect through the concentrator")
    [command_id] = loop.requests(loop.account(1))
    assert f"via concentrator {loop.prefix}dcu" in store.history(loop.conn, command_id)[1]["detail"]
    assert loop.responder.relay(loop.meter(1)) is RelayState.OPEN


@pytest.mark.parametrize("protocol", ["modbus", "dlt645"])
def test_a_meter_of_a_transport_without_an_executor_in_the_dispatcher_is_held_not_sent(
    loop_for: Callable[..., Loop], protocol: str
) -> None:
    loop = loop_for()  # a dispatcher with the MQTT executor only
    loop.exhaust(1, protocol=protocol)
    loop.until(lambda: [c[2] for c in loop.commands(loop.account(1))] == ["held"], "the disconnect held")
    detail = store.history(loop.conn, loop.requests(loop.account(1))[0])[-1]["detail"]
    assert detail == f"no executor for {protocol} meters in this dispatcher"
    assert loop.responder.counts.commands_received == 0


class _Waker:
    """Records the listener's wakes."""

    def __init__(self) -> None:
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()


def test_a_committed_command_request_wakes_the_dispatcher(loop_for: Callable[..., Loop], database_url: str) -> None:
    loop = loop_for()
    waker = _Waker()
    stop = threading.Event()
    listener = threading.Thread(target=wake_on_command_requests, args=(database_url, waker, stop))
    listener.start()
    try:
        deadline = time.monotonic() + 10
        while (
            count(
                loop.conn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'",
            )
            == 0
        ):
            assert time.monotonic() < deadline, "the listener did not start listening"
            time.sleep(0.05)
        assert not waker.woken.is_set()
        loop.exhaust(1)  # the runner's batch writes a disconnect request and commits
        assert loop.requests(loop.account(1))
        assert waker.woken.wait(5)
    finally:
        stop.set()
        listener.join(5)
    assert not listener.is_alive()  # it notices a stop without a notification


def test_a_wake_ends_the_wait_for_meter_events_at_once(loop_for: Callable[..., Loop]) -> None:
    loop = loop_for()
    threading.Timer(0.2, loop.transport.wake).start()
    started = time.monotonic()
    assert loop.transport.events(30.0) == []  # the wake itself is no event
    assert time.monotonic() - started < 5


def test_a_dispatcher_without_its_broker_says_so_and_still_stops_at_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.dispatch")
    port = free_port()  # nobody listens on it
    settings = _settings(database_url, f"d{uuid.uuid4().hex[:6]}").model_copy(
        update={"mqtt_port": port, "status_interval_s": 0.5}
    )
    stop = threading.Event()
    thread = threading.Thread(target=run_dispatcher, args=(settings, database_url, stop))
    thread.start()
    try:

        def said(text: str) -> list[logging.LogRecord]:
            return [r for r in caplog.records if text in r.getMessage()]

        wait_for(lambda: bool(said("connection refused (attempt 2;")), 15, "two refused attempts")
        wait_for(lambda: bool(said(f"dispatch: not connected to the broker 127.0.0.1:{port}")), 5, "a status line")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()  # the wait for the broker ends with the stop request
    refused = said(f"cannot connect to the broker 127.0.0.1:{port}: connection refused (attempt 1;")
    assert [r.levelno for r in refused] == [logging.WARNING]
    status = said("dispatch: not connected")
    assert {r.levelno for r in status} == {logging.WARNING}
    assert vars(status[0])["totals"]["sent"] == 0


def test_an_answer_on_another_meters_topic_confirms_nothing(loop_for: Callable[..., Loop]) -> None:
    # meter 1 never answers; whoever can publish on meter 2's events topic forges its answer
    loop = loop_for(2, faults={1: RelayFault.OFFLINE})
    register(loop.conn, [loop.meter(2)])
    loop.exhaust(1)
    [command_id] = loop.requests(loop.account(1))
    loop.until(lambda: loop.commands(loop.account(1))[0][2] == "sent", "the disconnect sent")
    forged = b'{"command_id": "%s", "result": "executed", "relay": "open", "ts": "%s"}' % (
        command_id.encode(),
        datetime.now(UTC).isoformat().encode(),
    )
    assert not loop.dispatcher.handle_event(f"meters/{loop.meter(2)}/events", forged)
    assert loop.commands(loop.account(1))[0][2] == "sent"
    assert loop.supply(loop.account(1)) == "connected"
    assert all(entry["actor"] != f"meter:{loop.meter(2)}" for entry in store.history(loop.conn, command_id))
    [reason] = [r[0] for r in loop.conn.execute("SELECT reason FROM dead_letters WHERE source = 'dispatch'")]
    assert reason == f"answer to unknown command {command_id} of meter {loop.meter(2)}"
    # the same answer on the topic of the meter the command went to is applied
    assert loop.dispatcher.handle_event(f"meters/{loop.meter(1)}/events", forged)
    assert loop.commands(loop.account(1))[0][2] == "confirmed"
