"""Relay commands to polled meters: the dispatcher, the polled executor, simulated Modbus TCP meters and a simulated
DL/T 645 gateway on 127.0.0.1, the real database. Each answer is the relay read back, applied as an MQTT answer is."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headend.dispatch import store
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher
from headend.dispatch.lifecycle import CommandState, RetryPolicy
from headend.dispatch.operations import request_relay_read
from headend.dispatch.polled_executor import PolledConfig, PolledExecutor
from headend.dispatch.service import run_dispatcher
from headend.engine.accounts import open_account, pay, reverse_payment
from headend.engine.catalog import Catalog
from headend.mqtt.embedded_broker import free_port
from headend.registry.meter_import import MeterRow, import_meters, read_registry_file
from headend.settings import Settings
from prepay_engine.payments import TopUp, TopUpReversal
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from simulators.command_responder import CommandResponder
from simulators.dlt645_gateway import Dlt645Gateway
from simulators.fleet import Fleet, SimMeter
from simulators.load_shapes import MeterKind
from simulators.modbus_faults import NoAnswer, StuckRelay
from simulators.modbus_sim import ModbusMeterFleet
from simulators.publisher import BrokerConfig
from tests.integration.conftest import MQTT_HOST, MQTT_PORT, count, register
from tests.integration.engine_support import STRICT_POLICY, TARIFF, seed_catalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Conn = psycopg.Connection[Any]
FAST = DispatchConfig(command_ttl=timedelta(seconds=4), retry=RetryPolicy(0.5, 1.0), storm_limit=100)
QUICK = PolledConfig(timeout_s=0.3, settle_s=0.3, armed_check_s=0.2)
RELAY_UNIT, NO_RELAY_UNIT = 1, 2  # the fleet's models in turn: a Hiking DDS238-2 ZN/SR, an Eastron SDM120


@dataclass
class Site:
    """The dispatcher with the polled executor, the simulated meters and their accounts, for one test."""

    conn: Conn
    catalog: Catalog
    dispatcher: Dispatcher
    executor: PolledExecutor
    fleet: ModbusMeterFleet
    gateway: Dlt645Gateway
    woken: threading.Event

    def modbus(self, unit: int) -> str:
        return self.fleet.spec(unit).meter_id

    def dlt645(self, n: int) -> str:
        return self.gateway.meter_id(self.gateway.addresses[n - 1])

    def pump(self) -> None:
        """Apply the answers queued so far, then one dispatcher step."""
        self.woken.wait(0.05)
        self.woken.clear()
        for message in self.executor.answers():
            self.dispatcher.handle_event(message.topic, message.payload)
        self.dispatcher.step()

    def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if condition():
                return
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")

    def open(self, meter_id: str) -> str:
        """Open an account on the meter (¥0, the strict policy); its id."""
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
        return account_id

    def exhaust(self, meter_id: str) -> str:
        """An account on the meter whose only payment is taken back: its credit is gone, a disconnect is due."""
        account_id = self.open(meter_id)
        now = datetime.now(UTC)
        pay(self.conn, self.catalog, TopUp("bank", f"t0-{account_id}", account_id, 1000, now), now=now, received_by="t")
        reverse_payment(self.conn, self.catalog, TopUpReversal("bank", f"t0-{account_id}", 1000, now), now=now)
        return account_id

    def top_up(self, account_id: str) -> None:
        now = datetime.now(UTC)
        top_up = TopUp("wechat", f"t1-{account_id}", account_id, 50_000, now)
        pay(self.conn, self.catalog, top_up, now=now, received_by="test")

    def requests(self, account_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT request_id FROM command_requests WHERE account_id = %s ORDER BY sequence", (account_id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def commands(self, account_id: str) -> list[tuple[str, str, str]]:
        rows = self.conn.execute(
            "SELECT command_id, action, state FROM commands WHERE account_id = %s ORDER BY sequence", (account_id,)
        ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def states(self, account_id: str) -> list[str]:
        return [c[2] for c in self.commands(account_id)]

    def supply(self, account_id: str) -> str:
        row = self.conn.execute("SELECT supply FROM prepaid_accounts WHERE account_id = %s", (account_id,)).fetchone()
        assert row is not None
        return str(row[0])

    def alarms(self, meter_id: str) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT kind, relay FROM relay_alarms WHERE meter_id = %s", (meter_id,)).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]


def _trail(conn: Conn, command_id: str) -> list[tuple[str, str, str]]:
    return [(str(e["to_state"]), str(e["actor"]), str(e["detail"])) for e in store.history(conn, command_id)]


@pytest.fixture
def site_for(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Build the site: a Modbus fleet (unit 1 with a relay, unit 2 without) and a gateway with three meters."""
    prefix = f"p{uuid.uuid4().hex[:5]}"
    closing: list[Callable[[], object]] = []

    def make(*, config: PolledConfig = QUICK, allowed: tuple[int, ...] = ()) -> Site:
        conn = psycopg.connect(database_url, autocommit=True)
        audit_conn = psycopg.connect(database_url, autocommit=True)
        closing.extend([conn.close, audit_conn.close])
        catalog = seed_catalog(conn)
        fleet = ModbusMeterFleet(
            "127.0.0.1", 0, ["hiking_dds238_2_znsr", "eastron_sdm120"], 2, meter_id_prefix=f"{prefix}mb"
        )
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
            meter_id = gateway.meter_id(gateway.addresses[n - 1])
            conn.execute("UPDATE meters SET reconnect_mode = 'allowed' WHERE meter_id = %s", (meter_id,))
        woken = threading.Event()
        executor = PolledExecutor(database_url, config, wake=woken.set).__enter__()
        closing.append(lambda: executor.__exit__(None, None, None))
        executors = {"modbus": executor, "dlt645": executor}
        dispatcher = Dispatcher(conn, audit_conn, executor, executors=executors, config=FAST, catalog=catalog)
        return Site(conn, catalog, dispatcher, executor, fleet, gateway, woken)

    yield make
    for close in reversed(closing):
        close()


def test_a_modbus_disconnect_and_reconnect_are_confirmed_by_reading_the_relay_back(
    site_for: Callable[..., Site],
) -> None:
    site = site_for()
    meter = site.modbus(RELAY_UNIT)
    account = site.exhaust(meter)
    [disconnect] = site.requests(account)
    assert disconnect.endswith(":disconnect")
    site.until(lambda: site.states(account) == ["confirmed"], "the disconnect confirmed")
    assert site.fleet.relay(RELAY_UNIT) is RelayState.OPEN
    assert site.supply(account) == "disconnected"
    trail = _trail(site.conn, disconnect)
    assert [t[0] for t in trail] == ["created", "sent", "acknowledged", "confirmed"]
    assert trail[1][2] == f"sending attempt 1 via modbus at {site.fleet.endpoint}"
    assert trail[2][1:] == (f"meter:{meter}", "executed")
    assert trail[3][1:] == (f"meter:{meter}", "relay read back open")
    sent = store.get_command(site.conn, disconnect)
    assert sent is not None
    assert sent.relay == "open"
    row = site.conn.execute("SELECT relay FROM meter_relays WHERE meter_id = %s", (meter,)).fetchone()
    assert row == ("open",)

    site.top_up(account)
    site.until(lambda: site.states(account) == ["confirmed", "confirmed"], "the reconnect confirmed")
    assert site.fleet.relay(RELAY_UNIT) is RelayState.CLOSED
    assert site.supply(account) == "connected"
    assert site.alarms(meter) == []


def test_a_dlt645_disconnect_trips_and_a_direct_reconnect_closes(site_for: Callable[..., Site]) -> None:
    site = site_for()
    meter, address = site.dlt645(1), site.gateway.addresses[0]
    account = site.exhaust(meter)
    site.until(lambda: site.states(account) == ["confirmed"], "the disconnect confirmed")
    truth = site.gateway.snapshot(address)
    assert truth.relay is RelayState.OPEN
    assert truth.status_word_3.relay_command_open  # a trip (跳闸), not an alarm or an allowed close
    assert site.supply(account) == "disconnected"
    [(disconnect, _, _)] = site.commands(account)
    assert [t[0] for t in _trail(site.conn, disconnect)] == ["created", "sent", "acknowledged", "confirmed"]

    site.top_up(account)
    site.until(lambda: site.states(account) == ["confirmed", "confirmed"], "the reconnect confirmed")
    assert site.gateway.relay(address) is RelayState.CLOSED
    assert not site.gateway.snapshot(address).armed  # closed by the command (直接合闸), no button needed
    assert site.supply(account) == "connected"


def test_a_dlt645_reconnect_allowed_arms_the_meter_and_the_button_restores_the_supply(
    site_for: Callable[..., Site],
) -> None:
    site = site_for(allowed=(2,))
    meter, address = site.dlt645(2), site.gateway.addresses[1]
    account = site.exhaust(meter)
    site.until(lambda: site.supply(account) == "disconnected", "the disconnect")
    site.top_up(account)
    site.until(lambda: site.supply(account) == "reconnect_allowed", "the meter armed (合闸允许)")
    reconnect = site.commands(account)[-1][0]
    assert site.commands(account)[-1][1:] == ("reconnect", "confirmed")
    assert _trail(site.conn, reconnect)[-1][2].startswith("relay open and armed")
    truth = site.gateway.snapshot(address)
    assert (truth.relay, truth.armed) == (RelayState.OPEN, True)
    time.sleep(3 * QUICK.armed_check_s)
    site.pump()
    assert site.supply(account) == "reconnect_allowed"  # nothing changes while the customer waits

    assert site.gateway.press_button(address) is RelayState.CLOSED
    site.until(lambda: site.supply(account) == "connected", "the button press noticed")
    row = site.conn.execute(
        "SELECT relay, ready_for_reconnection, source FROM meter_relays WHERE meter_id = %s", (meter,)
    ).fetchone()
    assert row == ("closed", False, "button_pressed")
    assert count(site.conn, "SELECT count(*) FROM relay_alarms") == 0


@pytest.mark.parametrize("protocol", ["modbus", "dlt645"])
def test_a_stuck_relay_fails_the_disconnect_and_raises_the_mismatch_alarm(
    site_for: Callable[..., Site], protocol: str
) -> None:
    site = site_for()
    if protocol == "modbus":
        meter = site.modbus(RELAY_UNIT)
        site.fleet.set_fault(RELAY_UNIT, StuckRelay())
    else:
        meter = site.dlt645(1)
        site.gateway.set_fault(site.gateway.addresses[0], "stuck_relay")
    account = site.exhaust(meter)
    site.until(lambda: site.states(account)[:1] == ["failed"], "the disconnect failed")
    [disconnect, *_] = [c[0] for c in site.commands(account)]
    assert _trail(site.conn, disconnect)[-1][1:] == (
        f"meter:{meter}",
        "the meter reports the disconnect executed but the relay is closed",
    )
    assert site.alarms(meter) == [("relay_mismatch", "closed")]
    assert site.supply(account) == "connected"
    # the account decides again; its next disconnect waits for an operator while the alarm is open
    site.until(lambda: site.states(account)[-1:] == ["held"], "the next disconnect held")


def test_a_wrong_dlt645_password_fails_the_command_with_the_meters_reason(site_for: Callable[..., Site]) -> None:
    site = site_for(config=PolledConfig(timeout_s=0.3, settle_s=0.3, armed_check_s=0.2, dlt645_password="654321"))
    meter, address = site.dlt645(1), site.gateway.addresses[0]
    account = site.exhaust(meter)
    site.until(lambda: site.states(account)[:1] == ["failed"], "the disconnect failed")
    disconnect = site.commands(account)[0][0]
    assert _trail(site.conn, disconnect)[-1][1:] == (
        f"meter:{meter}",
        f"rejected by the meter: meter {address} refused relay_control: password error or unauthorised",
    )
    assert site.gateway.relay(address) is RelayState.CLOSED
    assert site.supply(account) == "connected"
    assert site.alarms(meter) == []  # refused without trying: nothing about the relay to alarm on


def test_a_modbus_model_without_a_relay_rejects_the_disconnect(site_for: Callable[..., Site]) -> None:
    site = site_for()
    account = site.exhaust(site.modbus(NO_RELAY_UNIT))
    site.until(lambda: site.states(account)[:1] == ["failed"], "the disconnect failed")
    disconnect = site.commands(account)[0][0]
    assert _trail(site.conn, disconnect)[-1][2] == (
        "rejected by the meter: model eastron_sdm120 has no relay: nothing written"
    )
    assert site.supply(account) == "connected"


@pytest.mark.parametrize("protocol", ["modbus", "dlt645"])
def test_an_unreachable_gateway_is_never_sent_to_and_the_command_expires(
    site_for: Callable[..., Site], protocol: str
) -> None:
    site = site_for()
    meter = f"gone-{protocol}"
    port = free_port()  # nobody listens on it
    import_meters(
        site.conn,
        [
            MeterRow(
                meter,
                protocol,
                None,
                "test",
                "hiking_dds238_2_znsr" if protocol == "modbus" else None,
                1,
                "active",
                None,
                endpoint=f"127.0.0.1:{port}",
                unit_id=1 if protocol == "modbus" else None,
                address="000000000042" if protocol == "dlt645" else None,
            )
        ],
    )
    account = site.exhaust(meter)
    site.until(lambda: site.states(account) == ["expired"], "the disconnect expired", timeout_s=15)
    disconnect = site.commands(account)[0][0]
    trail = _trail(site.conn, disconnect)
    assert (trail[0][0], trail[-1][0]) == ("created", "expired")
    refused = [detail for _, _, detail in trail if detail.startswith("not sent: ")]
    assert len(refused) >= 2  # tried again with backoff before the deadline
    assert all(f"127.0.0.1:{port}" in detail for detail in refused), refused
    command = store.get_command(site.conn, disconnect)
    assert command is not None
    assert command.attempts == 0  # nothing ever left
    assert site.supply(account) == "connected"


def test_a_silent_dlt645_meter_counts_as_sent_and_is_sent_again_until_expiry(site_for: Callable[..., Site]) -> None:
    site = site_for()
    meter, address = site.dlt645(3), site.gateway.addresses[2]
    site.gateway.set_fault(address, "no_answer")
    account = site.exhaust(meter)
    site.until(lambda: site.states(account) == ["expired"], "the disconnect expired", timeout_s=15)
    command = store.get_command(site.conn, site.commands(account)[0][0])
    assert command is not None
    assert command.attempts >= 2  # the request was written each time: sent, and sent again without an answer
    assert site.supply(account) == "connected"


def test_a_silent_modbus_unit_is_not_written_to(site_for: Callable[..., Site]) -> None:
    site = site_for()
    site.fleet.set_fault(RELAY_UNIT, NoAnswer())
    account = site.exhaust(site.modbus(RELAY_UNIT))
    site.until(lambda: site.states(account) == ["expired"], "the disconnect expired", timeout_s=15)
    command = store.get_command(site.conn, site.commands(account)[0][0])
    assert command is not None
    assert command.attempts == 0  # the relay's status read went unanswered: the write was never made
    site.fleet.set_fault(RELAY_UNIT, None)
    assert site.fleet.relay(RELAY_UNIT) is RelayState.CLOSED


@pytest.mark.parametrize("protocol", ["modbus", "dlt645"])
def test_a_relay_read_only_reads(site_for: Callable[..., Site], protocol: str) -> None:
    site = site_for()
    meter = site.modbus(RELAY_UNIT) if protocol == "modbus" else site.dlt645(1)
    exchanges = len(site.gateway.bus_log())
    read = request_relay_read(site.conn, meter, by="field-7", now=datetime.now(UTC), ttl=timedelta(seconds=30))
    site.until(lambda: store.get_command(site.conn, read.command_id).state is CommandState.CONFIRMED, "the read")  # type: ignore[union-attr]
    confirmed = store.get_command(site.conn, read.command_id)
    assert confirmed is not None
    assert confirmed.relay == "closed"
    if protocol == "dlt645":
        assert len(site.gateway.bus_log()) == exchanges + 1  # status word 3, and nothing else
    assert site.fleet.relay(RELAY_UNIT) is RelayState.CLOSED


def _worker_settings(database_url: str) -> Settings:
    return Settings(
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


def test_the_dispatch_worker_commands_mqtt_modbus_and_dlt645_meters(
    site_for: Callable[..., Site], database_url: str
) -> None:
    site = site_for()
    mqtt_meter = f"mq{uuid.uuid4().hex[:6]}"
    register(site.conn, [mqtt_meter])
    fleet = Fleet((SimMeter(mqtt_meter, None, "test", "SIM-1", MeterKind.RESIDENTIAL, 1_000_000),), (), seed=7)
    responder = CommandResponder(fleet, BrokerConfig(host=MQTT_HOST, port=MQTT_PORT), delay_s=(0.05, 0.1))
    responder.start()
    try:
        accounts = [site.exhaust(meter) for meter in (mqtt_meter, site.modbus(RELAY_UNIT), site.dlt645(1))]
        stop = threading.Event()
        thread = threading.Thread(target=run_dispatcher, args=(_worker_settings(database_url), database_url, stop))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while any(site.supply(a) != "disconnected" for a in accounts):
                assert time.monotonic() < deadline, [site.commands(a) for a in accounts]
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(15)
        assert not thread.is_alive()
    finally:
        responder.stop()
    assert responder.relay(mqtt_meter) is RelayState.OPEN
    assert site.fleet.relay(RELAY_UNIT) is RelayState.OPEN
    assert site.gateway.relay(site.gateway.addresses[0]) is RelayState.OPEN


def test_dispatch_once_applies_the_answers_of_the_polled_meters_it_commanded(
    site_for: Callable[..., Site], database_url: str
) -> None:
    site = site_for()
    accounts = [site.exhaust(site.modbus(RELAY_UNIT)), site.exhaust(site.dlt645(1))]
    totals = run_dispatcher(_worker_settings(database_url), database_url, threading.Event(), once=True)
    assert (totals.sent, totals.confirmed) == (2, 2)
    assert [site.states(a) for a in accounts] == [["confirmed"], ["confirmed"]]
    assert [site.supply(a) for a in accounts] == ["disconnected", "disconnected"]
