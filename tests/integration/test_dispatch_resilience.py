"""Nothing stops the dispatcher: hostile meter events, a lost database, a restarted broker.

Each test runs `run_dispatcher` itself, in a thread, against the real PostgreSQL and a Mosquitto of its own (so that
every event on it is the test's, whatever else runs on the shared one), and drives it from outside: meters (the
simulated fleet, or a plain publisher) on the broker, payments and readings in the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import make_url

from headend.dispatch import store
from headend.dispatch.dispatcher import DispatchStats
from headend.dispatch.operations import request_relay_read
from headend.dispatch.service import run_dispatcher
from headend.engine.accounts import open_account, pay
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from headend.mqtt.embedded_broker import free_port
from headend.settings import Settings
from prepay_engine.payments import TopUp
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from simulators.command_responder import CommandResponder
from simulators.fleet import Fleet, SimMeter
from simulators.load_shapes import MeterKind
from simulators.publisher import BrokerConfig
from tests.integration.conftest import ADMIN_URL, MQTT_HOST, count, register, wait_for
from tests.integration.dispatch_support import listening
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog, series, store_readings
from tests.integration.worker_support import private_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
ENGINE_NOW = DAY_START + timedelta(days=1, hours=2)


def dispatch_settings(database_url: str, port: int, **changes: Any) -> Settings:
    """A dispatcher of its own on the broker at `port`: a short-lived session, status lines every half second."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_host": MQTT_HOST,
        "mqtt_port": port,
        "mqtt_shared_group": None,
        "mqtt_session_expiry_s": 60,
        "dispatch_client_id": f"test-dispatch-{uuid.uuid4().hex[:8]}",
        "dispatch_command_ttl_s": 120,
        # long enough that a command answered within it is sent once
        "dispatch_retry_first_s": 5.0,
        "dispatch_retry_cap_s": 5.0,
        "status_interval_s": 0.5,
    }
    return Settings(**(values | changes))


@dataclass
class Running:
    """`run_dispatcher` in a thread; `stop()` ends it and keeps its totals (or what it raised)."""

    settings: Settings
    url: str
    stop_event: threading.Event = field(default_factory=threading.Event)
    totals: DispatchStats | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Running:
        def run() -> None:
            try:
                self.totals = run_dispatcher(self.settings, self.url, self.stop_event)
            except BaseException as exc:
                self.error = exc
                raise

        self.thread = threading.Thread(target=run, name="test-dispatcher")
        self.thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> DispatchStats:
        self.stop_event.set()
        assert self.thread is not None
        self.thread.join(15)
        assert not self.thread.is_alive(), "the dispatcher did not stop"
        assert self.error is None, self.error
        assert self.totals is not None
        return self.totals


@pytest.fixture
def running() -> Iterator[Callable[[Settings], Running]]:
    """Start dispatchers; each is stopped after the test."""
    started: list[Running] = []

    def start(settings: Settings) -> Running:
        assert settings.database_url is not None
        dispatcher = Running(settings, settings.database_url).start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.stop_event.set()
        if dispatcher.thread is not None:
            dispatcher.thread.join(15)


class EventPublisher:
    """A meter's side of the broker for hand-made events: QoS 1, each publish acknowledged before the next."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-meter-{uuid.uuid4().hex[:8]}")
        self.client.connect(MQTT_HOST, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker_port() -> Iterator[int]:
    """The port of a Mosquitto of the test's own."""
    port = free_port()
    with private_mosquitto(port):
        yield port


@pytest.fixture
def meter_side(broker_port: int) -> Iterator[EventPublisher]:
    """A publisher of meter events on the test's broker."""
    publisher = EventPublisher(broker_port)
    yield publisher
    publisher.close()


def event(relay: str, ts: datetime | str, **fields: Any) -> bytes:
    """An event payload; a spontaneous one unless `command_id` and `result` are given."""
    body: dict[str, Any] = {"relay": relay, "ts": ts if isinstance(ts, str) else ts.isoformat(), **fields}
    if "command_id" not in body and "cause" not in body:
        body["cause"] = "local_operation"
    return json.dumps(body).encode()


def relay_row(conn: Conn, meter_id: str) -> tuple[str, datetime] | None:
    row = conn.execute("SELECT relay, reported_at FROM meter_relays WHERE meter_id = %s", (meter_id,)).fetchone()
    return None if row is None else (str(row[0]), row[1])


def dead_letters(conn: Conn) -> dict[tuple[str, bytes], str]:
    rows = conn.execute("SELECT topic, payload_sha256, reason FROM dead_letters WHERE source = 'dispatch'")
    return {(str(t), bytes(h)): str(r) for t, h, r in rows}


def sha(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


# --- hostile events ---------------------------------------------------------------------------------------------


def test_hostile_events_become_dead_letters_and_the_dispatcher_goes_on(
    database_url: str,
    db: Conn,
    broker_port: int,
    meter_side: EventPublisher,
    running: Callable[[Settings], Running],
) -> None:
    register(db, ["hm1", "hm2"])
    read = request_relay_read(db, "hm1", by="test", now=datetime.now(UTC), ttl=timedelta(minutes=10))
    dispatcher = running(dispatch_settings(database_url, broker_port))
    wait_for(lambda: listening(db), 10, "the dispatcher")
    now = datetime.now(UTC)
    hostile = {
        # the meter is not registered: its relay position has no row to belong to (a foreign key)
        ("meters/stranger/events", event("open", now)): "unknown meter 'stranger'",
        # a forged clock would pin the relay: every later genuine event would look older
        ("meters/hm2/events", event("open", "2099-01-01T00:00:00+00:00")): "is more than 300 s in the future",
        ("meters/hm2/events", event("open", "9999-12-31T23:59:59.999999-23:59")): "in the future",
        ("meters/hm2/events", event("open", now - timedelta(days=8))): "is more than 7 days old",
        ("meters/hm2/events", event("open", "0001-01-01T00:00:00+23:59")): "is more than 7 days old",
        # NUL and a lone surrogate in a field name land in the reason
        ("meters/hm2/events", b'{"relay": "open", "ts": "2026-12-01T00:00:00Z", "x\\u0000y": 1}'): "unknown field",
        ("meters/hm2/events", b'{"relay": "open", "ts": "2026-12-01T00:00:00Z", "\\ud800": 1}'): "unknown field",
        ("meters/hm2/events", b'{"relay": "open", "cause": "local_operation", "ts": "\\u0000"}'): "not ISO 8601",
        ("meters/hm2/events", b"\xff\xfe\x00garbage"): "not valid JSON",
        # an answer stamped long before its command was issued, and answers to commands that do not exist
        (
            "meters/hm1/events",
            event("open", now - timedelta(hours=2), command_id=read.command_id, result="executed"),
        ): "before its command was issued",
        (
            "meters/hm2/events",
            event("open", now, command_id=read.command_id, result="executed"),
        ): f"answer to unknown command {read.command_id} of meter hm2",
        ("meters/hm2/events", event("open", now, command_id="no-such-command", result="executed")): "unknown command",
    }
    for topic, payload in hostile:
        meter_side.publish(topic, payload)
    # genuine events after them are applied: the answer with a NUL in the meter's words, a spontaneous report
    answer = event("closed", now, command_id=read.command_id, result="rejected", detail="busy\x00now")
    meter_side.publish("meters/hm1/events", answer)
    meter_side.publish("meters/hm2/events", event("closed", now))
    wait_for(lambda: relay_row(db, "hm2") is not None, 10, "the genuine spontaneous event applied")
    assert dispatcher.alive
    refused = dead_letters(db)
    for (topic, payload), reason in hostile.items():
        assert reason in refused[(topic, sha(payload))], (payload, refused.get((topic, sha(payload))))
    assert len(refused) == len(hostile)
    assert relay_row(db, "hm2") == ("closed", now)
    failed = store.get_command(db, read.command_id)
    assert failed is not None
    assert failed.state == "failed"
    assert failed.detail == "rejected by the meter: busy\\x00now"
    totals = dispatcher.stop()
    assert (totals.events, totals.rejected_events, totals.failed) == (len(hostile) + 2, len(hostile), 1)


def test_an_event_whose_content_the_database_refuses_is_rolled_back_and_kept(
    database_url: str,
    db: Conn,
    broker_port: int,
    meter_side: EventPublisher,
    running: Callable[[Settings], Running],
) -> None:
    register(db, ["rb1", "rb2"])
    # stands for any refusal an event's content may provoke (a constraint, a value out of range); set up as a superuser
    with psycopg.connect(superuser_url(database_url), autocommit=True) as admin:
        admin.execute(
            """
        CREATE FUNCTION test_refuse_rb1() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.meter_id = 'rb1' THEN
                RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse_rb1 BEFORE INSERT OR UPDATE ON meter_relays
            FOR EACH ROW EXECUTE FUNCTION test_refuse_rb1();
        """
        )
    dispatcher = running(dispatch_settings(database_url, broker_port))
    wait_for(lambda: listening(db), 10, "the dispatcher")
    now = datetime.now(UTC)
    poison = event("open", now)
    meter_side.publish("meters/rb1/events", poison)
    meter_side.publish("meters/rb2/events", event("open", now))
    wait_for(lambda: relay_row(db, "rb2") is not None, 10, "the next event applied")
    assert dispatcher.alive
    assert dead_letters(db) == {
        ("meters/rb1/events", sha(poison)): "refused by the database: refused for the test (SQLSTATE 23514)"
    }
    assert relay_row(db, "rb1") is None
    totals = dispatcher.stop()
    assert (totals.events, totals.rejected_events) == (2, 1)


def test_an_answer_delivered_twice_is_recorded_once(
    database_url: str,
    db: Conn,
    broker_port: int,
    meter_side: EventPublisher,
    running: Callable[[Settings], Running],
) -> None:
    register(db, ["tw1"])
    read = request_relay_read(db, "tw1", by="test", now=datetime.now(UTC), ttl=timedelta(minutes=10))
    dispatcher = running(dispatch_settings(database_url, broker_port))
    wait_for(lambda: listening(db), 10, "the dispatcher")
    now = datetime.now(UTC)
    answer = event("open", now, command_id=read.command_id, result="executed")
    spontaneous = event("closed", now + timedelta(seconds=1), cause="power_restored")
    # an acknowledgement lost in a broker's restart: the broker delivers the same message again
    for payload in (answer, answer, spontaneous, spontaneous):
        meter_side.publish("meters/tw1/events", payload)
    wait_for(lambda: relay_row(db, "tw1") == ("closed", now + timedelta(seconds=1)), 10, "the events applied")
    totals = dispatcher.stop()
    assert [str(e["to_state"]) for e in store.history(db, read.command_id)][-2:] == ["acknowledged", "confirmed"]
    assert count(db, "SELECT count(*) FROM command_audit WHERE actor = 'meter:tw1'") == 2
    assert (totals.events, totals.rejected_events, totals.confirmed) == (4, 0, 1)


# --- a lost database, a restarted broker ------------------------------------------------------------------------


@dataclass
class Customer:
    """A prepaid account on a simulated meter that obeys relay commands."""

    url: str
    prefix: str
    catalog: Catalog = field(default_factory=Catalog)

    @property
    def meter(self) -> str:
        return f"{self.prefix}m1"

    @property
    def account(self) -> str:
        return f"{self.prefix}a1"

    def connect(self) -> Conn:
        return psycopg.connect(self.url, autocommit=True)

    def exhaust(self) -> None:
        """Open the account and feed it a day of heavy use: its balance runs out, a disconnect is requested."""
        with self.connect() as conn:
            self.catalog = seed_catalog(conn)
            register(conn, [self.meter])
            open_account(
                conn,
                self.catalog,
                self.account,
                meter_id=self.meter,
                tariff_code=TARIFF.code,
                policy_code=STRICT_POLICY.name,
                opened_at=DAY_START,
                opening_register_wh=1_000_000,
                zone=SHANGHAI,
            )
            store_readings(conn, series(self.meter, DAY_START + STEP, 16, STEP, 1_000_500, 500))
            EngineRunner(conn, 600.0, 100, clock=lambda: ENGINE_NOW, catalog=self.catalog).sweep()

    def pay(self) -> None:
        """¥500 now: a reconnect is requested."""
        now = datetime.now(UTC)
        with self.connect() as conn:
            pay(
                conn,
                self.catalog,
                TopUp("wechat", f"wx-{self.prefix}", self.account, 50_000, now),
                now=now,
                received_by="test",
            )

    def commands(self) -> list[tuple[str, str, str]]:
        """(id, action, state) of the account's commands, oldest first; [] while the database is out of reach."""
        try:
            with self.connect() as conn:
                rows = conn.execute(
                    "SELECT command_id, action, state FROM commands WHERE account_id = %s ORDER BY sequence",
                    (self.account,),
                ).fetchall()
        except psycopg.OperationalError:
            return []
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def states(self) -> list[tuple[str, str]]:
        return [(action, state) for _, action, state in self.commands()]

    def listening(self) -> bool:
        """Whether the dispatcher's listener LISTENs (False while the database is out of reach)."""
        try:
            with self.connect() as conn:
                return listening(conn)
        except psycopg.OperationalError:
            return False


def responder_for(prefix: str, port: int, delay_s: tuple[float, float]) -> CommandResponder:
    fleet = Fleet((SimMeter(f"{prefix}m1", None, "test", "SIM-1", MeterKind.RESIDENTIAL, 1_000_000),), (), seed=7)
    return CommandResponder(fleet, BrokerConfig(host=MQTT_HOST, port=port), delay_s=delay_s)


def superuser_url(database_url: str) -> str:
    """The test database, as the administrator (whatever role the head-end's services use)."""
    return make_url(ADMIN_URL).set(database=make_url(database_url).database).render_as_string(hide_password=False)


def terminate_backends(database: str) -> int:
    """End every session of the database, as an administrator would (pg_terminate_backend); how many."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


def allow_connections(database: str, allowed: bool) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def audit_states(url: str, command_id: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [str(e["to_state"]) for e in store.history(conn, command_id)]


def test_the_dispatcher_outlives_its_database_connections(
    database_url: str, broker_port: int, running: Callable[[Settings], Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.dispatch")
    database = make_url(database_url).database
    assert database is not None
    customer = Customer(database_url, f"r{uuid.uuid4().hex[:6]}")
    # the meter answers a second after a command: the database is gone by then
    with responder_for(customer.prefix, broker_port, (1.0, 1.0)) as responder:
        # a long poll: only the listener's wake (LISTEN, reconnected too) gets a new request taken at once
        dispatcher = running(dispatch_settings(database_url, broker_port, dispatch_poll_s=30.0))
        wait_for(customer.listening, 10, "the dispatcher listening")
        customer.exhaust()
        wait_for(lambda: customer.states() == [("disconnect", "sent")], 10, "the disconnect sent")
        try:
            allow_connections(database, False)
            assert terminate_backends(database) >= 3  # the dispatcher's two connections and its listener
            wait_for(lambda: responder.counts.events_published == 1, 10, "the meter's answer published")
            wait_for(lambda: bool(said(caplog, "dispatch: no database connection")), 10, "a status line")
            assert dispatcher.alive
        finally:
            allow_connections(database, True)
        # the answer waited unacknowledged, and is applied once the database is back
        wait_for(lambda: customer.states() == [("disconnect", "confirmed")], 30, "the disconnect confirmed")
        assert responder.relay(customer.meter) is RelayState.OPEN
        # every connection ends again, the listener's too; it listens again and a payment's reconnect is taken at once
        wait_for(customer.listening, 20, "the listener back")
        assert terminate_backends(database) >= 3
        wait_for(customer.listening, 20, "the listener back")
        customer.pay()
        wait_for(
            lambda: customer.states() == [("disconnect", "confirmed"), ("reconnect", "confirmed")],
            15,
            "the reconnect confirmed",
        )
        assert responder.relay(customer.meter) is RelayState.CLOSED
        assert responder.counts.commands_received == 2  # each command sent once
    totals = dispatcher.stop()
    assert (totals.taken, totals.sent, totals.confirmed, totals.failed, totals.rejected_events) == (2, 2, 2, 0, 0)
    for command_id, _, _ in customer.commands():
        assert audit_states(database_url, command_id) == ["created", "sent", "acknowledged", "confirmed"]
    with customer.connect() as conn:
        assert count(conn, "SELECT count(*) FROM dead_letters") == 0
        assert count(conn, "SELECT count(*) FROM relay_alarms") == 0
    status = said(caplog, "dispatch: no database connection")
    assert {r.levelno for r in status} == {logging.WARNING}
    assert said(caplog, "reconnected to the database")


def test_the_dispatcher_outlives_a_broker_restart(
    database_url: str, running: Callable[[Settings], Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.dispatch")
    port = free_port()
    customer = Customer(database_url, f"b{uuid.uuid4().hex[:6]}")
    broker: AbstractContextManager[None] = private_mosquitto(port)
    broker.__enter__()
    responder = responder_for(customer.prefix, port, (0.05, 0.2))
    try:
        responder.start()
        dispatcher = running(
            dispatch_settings(database_url, port, dispatch_retry_first_s=2.0, dispatch_retry_cap_s=2.0)
        )
        wait_for(customer.listening, 10, "the dispatcher")
        customer.exhaust()
        wait_for(lambda: customer.states() == [("disconnect", "confirmed")], 15, "the disconnect confirmed")
        broker.__exit__(None, None, None)
        wait_for(lambda: bool(said(caplog, "dispatch: not connected to the broker")), 10, "a status line")
        # the payment's reconnect cannot leave while the broker is away
        customer.pay()
        wait_for(lambda: len(customer.commands()) == 2, 10, "the reconnect taken")
        time.sleep(1.5)
        assert customer.states()[1] == ("reconnect", "created")
        # a broker that lost every session: the dispatcher subscribes again, the meter too
        broker = private_mosquitto(port)
        broker.__enter__()
        wait_for(
            lambda: customer.states() == [("disconnect", "confirmed"), ("reconnect", "confirmed")],
            30,
            "the reconnect confirmed",
        )
        assert responder.relay(customer.meter) is RelayState.CLOSED
        assert responder.counts.commands_received == 2
        totals = dispatcher.stop()
    finally:
        responder.stop()
        broker.__exit__(None, None, None)
    assert dispatcher.alive is False
    assert (totals.taken, totals.confirmed, totals.failed, totals.rejected_events) == (2, 2, 0, 0)
    [disconnect, reconnect] = [c[0] for c in customer.commands()]
    assert audit_states(database_url, disconnect) == ["created", "sent", "acknowledged", "confirmed"]
    trail = audit_states(database_url, reconnect)
    # attempts while the broker was away are recorded (a "sending" record, then "not sent"), one send reached it
    assert trail[0] == "created"
    assert trail[-3:] == ["sent", "acknowledged", "confirmed"]
    assert trail[1:-3] == ["sent", "created"] * ((len(trail) - 4) // 2)
    with customer.connect() as conn:
        assert count(conn, "SELECT count(*) FROM dead_letters") == 0
    assert said(caplog, "subscribed to meters/+/events")
