"""Tariff and policy changes of prepaid accounts from a stated instant, on the real PostgreSQL: charged exactly
across the change by the runner and the settlement, decided under the new policy from its instant, kept as history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from headend.engine.accounts import pay
from headend.engine.catalog import Catalog, put_policy, put_tariff
from headend.engine.plan_changes import (
    PlanChangeError,
    PlanChangeKind,
    PlanChangeState,
    cancel_change,
    plan_history,
    request_change,
)
from headend.engine.runner import EngineRunner
from headend.engine.settlement import settle_day, tally_problems
from headend.money import ledger_store
from prepay_engine.money import round_yuan_to_fen
from prepay_engine.payments import TopUp
from prepay_engine.tariffs import SHANGHAI, FlatPrice, Tariff, TariffVersion
from prepay_engine.usage import MeterRegister, RegisterReading, charge_usage, open_usage
from tests.integration.conftest import admin_connection, count, register
from tests.integration.engine_support import (
    DAY_START,
    STRICT_POLICY,
    TARIFF,
    open_test_account,
    seed_catalog,
    series,
    store_readings,
)

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
LATENESS_S = 600.0
NOW = DAY_START + timedelta(days=1, hours=2)
NOON = DAY_START + timedelta(hours=12)  # 2026-11-20 12:00 in Asia/Shanghai
FLAT = Tariff(
    "FLAT-1",
    "flat one yuan",
    (TariffVersion(date(2020, 1, 1), "test: one yuan per kWh at all hours", FlatPrice(Decimal("1.0000"))),),
)
LENIENT = replace(STRICT_POLICY, name="lenient", warning_thresholds_fen=(1000,), disconnect_threshold_fen=-100_000)
PEAK, VALLEY = Decimal("0.5583"), Decimal("0.3583")  # the example tariff's prices in the first band


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh migrated database."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _catalog(conn: Conn) -> Catalog:
    catalog = seed_catalog(conn)
    put_tariff(conn, FLAT, stored_by="test", now=DAY_START)
    put_policy(conn, LENIENT, stored_by="test")
    return catalog


def _open(conn: Conn, catalog: Catalog, account_id: str, meter_id: str, policy: str = STRICT_POLICY.name) -> None:
    register(conn, [meter_id])
    open_test_account(conn, catalog, account_id, meter_id, policy_code=policy)


def _change(
    conn: Conn, catalog: Catalog, account_id: str, code: str, at: datetime | None, now: datetime, kind: str = "tariff"
) -> int:
    change = request_change(
        conn, catalog, account_id, PlanChangeKind(kind), code, effective_at=at, now=now, actor="test-operator"
    )
    return change.change_id


def _runner(conn: Conn, catalog: Catalog, now: datetime, *, eager: bool = False) -> EngineRunner:
    return EngineRunner(conn, LATENESS_S, 50, clock=lambda: now, catalog=catalog, eager_on_grid=eager)


def _stored_charges(conn: Conn, account_id: str) -> list[tuple[datetime, int, Decimal, int]]:
    rows = conn.execute(
        "SELECT interval_start, energy_wh, amount_yuan, amount_fen FROM usage_charges WHERE account_id = %s "
        "ORDER BY interval_start",
        (account_id,),
    ).fetchall()
    return [(r[0], int(r[1]), Decimal(r[2]), int(r[3])) for r in rows]


def _two_spans(
    meter_id: str, readings: list[tuple[str, datetime, int]], at: datetime, until: datetime
) -> list[tuple[datetime, int, Decimal, int]]:
    """The charges of the example tariff up to `at` and the flat one after it, each span charged on its own."""
    state = open_usage(MeterRegister(meter_id), DAY_START, 1_000_000)
    before = charge_usage(
        state, [RegisterReading(m, ts, wh) for m, ts, wh in readings if ts <= at], TARIFF, complete_until=at
    )
    assert before.state.charged_until == at
    # the example tariff is tiered, the flat one not: the counter starts again (it prices nothing here)
    after = charge_usage(
        replace(before.state, cycle_usage_wh=0),
        [RegisterReading(m, ts, wh) for m, ts, wh in readings if ts > at],
        FLAT,
        complete_until=until,
    )
    return [(c.interval_start, c.energy_wh, c.amount_yuan, c.amount_fen) for c in (*before.charges, *after.charges)]


def _local_price(interval_start: datetime) -> Decimal:
    hour = interval_start.astimezone(SHANGHAI).hour
    return PEAK if 8 <= hour < 21 else VALLEY


def _row(conn: Conn, account_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT tariff_code, policy_code, next_tariff_change_at, next_policy_change_at, wake_at "
        "FROM prepaid_accounts WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_runner_prices_intervals_before_a_change_with_the_old_tariff_and_from_it_with_the_new(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    for account_id in ("a1", "a2"):
        _change(conn, catalog, account_id, FLAT.code, NOON, now=DAY_START)
    on_grid = series("m1", DAY_START + STEP, 96, STEP, 1_000_400, 400)
    # a2: off the grid from 11:30 to 12:30, with a gap from 11:50 to 12:20 across the change
    gappy = [
        r for r in series("m2", DAY_START + STEP, 96, STEP, 1_000_400, 400) if not NOON - STEP <= r[1] <= NOON + STEP
    ]
    gappy += [("m2", NOON - timedelta(minutes=10), 1_018_900), ("m2", NOON + timedelta(minutes=20), 1_019_600)]
    store_readings(conn, on_grid + gappy)

    stats = _runner(conn, catalog, NOW).sweep()

    assert stats.charges == 2 * 96
    charged = _stored_charges(conn, "a1")
    assert charged == _two_spans("m1", on_grid, NOON, NOW)
    # in fen: 400 Wh at the example's peak or valley price before noon (its residue carried), 40 fen each after
    assert [c[2] for c in charged[:48]] == [400 * _local_price(c[0]) / 1000 for c in charged[:48]]
    assert [(c[2], c[3]) for c in charged[48:]] == [(Decimal("0.4000000"), 40)] * 48
    assert sum(c[3] for c in charged) == -ledger_store.balance_fen(conn, "customer:a1:prepaid")
    # the gap is spread as without the change; each of its intervals priced by the tariff at its start
    across = _stored_charges(conn, "a2")
    alone = charge_usage(
        open_usage(MeterRegister("m2"), DAY_START, 1_000_000),
        [RegisterReading(*r) for r in gappy],
        TARIFF,
        complete_until=NOW,
    )
    assert [(c[0], c[1]) for c in across] == [(c.interval_start, c.energy_wh) for c in alone.charges]
    assert [c[2] for c in across] == [
        c[1] * (_local_price(c[0]) if c[0] < NOON else Decimal("1.0000")) / 1000 for c in across
    ]
    assert {NOON - STEP, NOON} <= {c[0] for c in across if c[1] % 400}  # the gap's intervals, split off the grid
    assert sum(c[3] for c in across) == round_yuan_to_fen(sum((c[2] for c in across), Decimal(0)))
    for account_id in ("a1", "a2"):
        assert _row(conn, account_id)[:3] == (FLAT.code, STRICT_POLICY.name, None)
        [change] = plan_history(conn, account_id)
        assert (change.state, change.old_code, change.new_code) == (PlanChangeState.APPLIED, TARIFF.code, FLAT.code)
    assert tally_problems(conn) == []
    assert ledger_store.check_invariants(conn) == ()


def test_a_change_in_the_future_is_applied_by_the_runner_when_charging_gets_there(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    ten = DAY_START + timedelta(hours=10)
    readings = series("m1", DAY_START + STEP, 56, STEP, 1_000_400, 400)  # to 14:00
    store_readings(conn, [r for r in readings if r[1] <= ten], now=ten)
    change_id = _change(conn, catalog, "a1", FLAT.code, NOON, now=ten)

    assert _runner(conn, catalog, ten, eager=True).sweep().charges == 40  # on-grid readings up to now, at once
    assert _row(conn, "a1")[:3] == (TARIFF.code, STRICT_POLICY.name, NOON)
    assert [c.state for c in plan_history(conn, "a1")] == [PlanChangeState.PENDING]

    two = DAY_START + timedelta(hours=14)
    store_readings(conn, [r for r in readings if r[1] > ten], now=two)
    runner = _runner(conn, catalog, two, eager=True)
    assert runner.react().charges == 16  # 10:00–14:00, charged as the readings are stored
    charged = _stored_charges(conn, "a1")
    assert charged == _two_spans("m1", readings, NOON, two)
    assert {c[2] for c in charged if c[0] >= NOON} == {Decimal("0.4000000")}
    assert all(c[2] == 400 * _local_price(c[0]) / 1000 for c in charged if c[0] < NOON)
    assert _row(conn, "a1")[:3] == (FLAT.code, STRICT_POLICY.name, None)
    assert [(c.change_id, c.state) for c in plan_history(conn, "a1")] == [(change_id, PlanChangeState.APPLIED)]


def test_the_settlement_charges_across_a_change_the_runner_never_reached(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    _change(conn, catalog, "a1", FLAT.code, NOON, now=DAY_START)
    readings = {m: series(m, DAY_START + STEP, 96, STEP, 1_000_400, 400) for m in ("m1", "m2")}
    store_readings(conn, readings["m1"] + readings["m2"])

    settled = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=1)

    changed, unchanged = _stored_charges(conn, "a1"), _stored_charges(conn, "a2")
    assert changed == _two_spans("m1", readings["m1"], NOON, NOW)
    assert changed[:48] == [(s, e, y, f) for s, e, y, f in unchanged[:48]]  # the same until noon
    assert [c[3] for c in changed[48:]] == [40] * 48
    assert settled.day.charged_fen == sum(c[3] for c in changed + unchanged)
    assert _row(conn, "a1")[0] == FLAT.code
    assert tally_problems(conn) == []


def test_a_change_that_would_reprice_charged_intervals_is_refused_as_are_other_bad_changes(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    store_readings(conn, series("m1", DAY_START + STEP, 48, STEP, 1_000_400, 400))  # to 12:00
    _runner(conn, catalog, NOW).sweep()
    charged_until = NOON

    def refused(match: str, code: str, at: datetime | None, now: datetime = NOW, kind: str = "tariff") -> None:
        with pytest.raises(PlanChangeError, match=match):
            _change(conn, catalog, "a1", code, at, now, kind)

    refused(
        "charged up to 2026-11-20T12:00:00\\+08:00: a tariff change from 2026-11-20T11:45:00\\+08:00 would "
        "reprice intervals already charged",
        FLAT.code,
        charged_until - STEP,
    )
    refused("not on the 15-minute grid", FLAT.code, charged_until + timedelta(minutes=5))
    refused("no tariff 'NOPE'", "NOPE", charged_until)
    refused("already on tariff", TARIFF.code, charged_until)
    later = replace(FLAT, code="FLAT-2027", versions=(replace(FLAT.versions[0], effective_from=date(2027, 1, 1)),))
    put_tariff(conn, later, stored_by="test", now=NOW)
    refused("not in force at 2026-11-20T04:00:00\\+00:00", later.code, charged_until)
    refused("policy change can't take effect before now", LENIENT.name, NOW - STEP, kind="policy")
    # from charged_until itself: the open interval is not charged yet
    first = _change(conn, catalog, "a1", FLAT.code, charged_until, now=NOW)
    refused("must take effect after it", TARIFF.code, charged_until)
    assert count(conn, "SELECT count(*) FROM account_plan_changes") == 1
    assert [c.change_id for c in plan_history(conn, "a1")] == [first]


def test_a_policy_change_decides_from_its_instant_and_wakes_the_account_for_it(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1", policy=LENIENT.name)
    _open(conn, catalog, "a2", "m2", policy=LENIENT.name)
    ten = DAY_START + timedelta(hours=10)
    # readings to 09:30, all chargeable at 10:00 (nothing left waiting for the lateness): ~¥6 used
    store_readings(conn, series("m1", DAY_START + STEP, 38, STEP, 1_000_400, 400), now=ten)
    # a2 is in credit and stays quiet, which wakes it no more: only its policy change does
    pay(conn, catalog, TopUp("wechat", "WX-2", "a2", 100_000, DAY_START), now=DAY_START, received_by="test")
    store_readings(conn, series("m2", DAY_START + STEP, 38, STEP, 1_000_400, 400), now=ten)
    at = NOON
    for account_id in ("a1", "a2"):
        _change(conn, catalog, account_id, STRICT_POLICY.name, at, now=ten, kind="policy")
    back = at + timedelta(hours=2)
    _change(conn, catalog, "a2", LENIENT.name, back, now=ten, kind="policy")  # two pending: strict for two hours
    assert _row(conn, "a1")[3:] == (at, at)  # woken at the change
    assert _row(conn, "a2")[3:] == (at, at)  # at the first one

    assert _runner(conn, catalog, ten).sweep().decided == 2
    # under the lenient policy: a warning below ¥10, no disconnect above −¥1,000
    assert count(conn, "SELECT count(*) FROM notification_outbox WHERE account_id = 'a1'") == 1
    assert count(conn, "SELECT count(*) FROM command_requests") == 0
    assert _row(conn, "a1")[1:] == (LENIENT.name, None, at, at)
    assert _row(conn, "a2")[3:] == (at, at)  # quiet, yet woken at its change
    assert _runner(conn, catalog, at - timedelta(minutes=1)).sweep().accounts == 0

    assert _runner(conn, catalog, at).sweep().decided == 2
    # the strict policy decides at once: a1's credit is exhausted, a2's is not
    assert [tuple(r) for r in conn.execute("SELECT account_id, action FROM command_requests").fetchall()] == [
        ("a1", "disconnect")
    ]
    assert _row(conn, "a1")[1:4] == (STRICT_POLICY.name, None, None)
    assert _row(conn, "a2") == (TARIFF.code, STRICT_POLICY.name, None, back, back)  # quiet: woken at the next
    assert [c.state for c in plan_history(conn, "a1")] == [PlanChangeState.APPLIED]
    assert [c.state for c in plan_history(conn, "a2")] == [PlanChangeState.APPLIED, PlanChangeState.PENDING]
    assert _runner(conn, catalog, back).sweep().decided == 1
    assert _row(conn, "a2") == (TARIFF.code, LENIENT.name, None, None, None)
    assert [c.old_code for c in plan_history(conn, "a2")] == [LENIENT.name, STRICT_POLICY.name]


def test_a_payment_after_a_policy_change_is_decided_under_the_new_policy_before_the_runner_gets_there(
    conn: Conn,
) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1", policy=LENIENT.name)
    ten = DAY_START + timedelta(hours=10)
    store_readings(conn, series("m1", DAY_START + STEP, 40, STEP, 1_000_400, 400), now=ten)
    _runner(conn, catalog, ten).sweep()
    _change(conn, catalog, "a1", STRICT_POLICY.name, NOON, now=ten, kind="policy")
    after = NOON + timedelta(minutes=5)

    paid = pay(conn, catalog, TopUp("wechat", "WX-1", "a1", 100, after), now=after, received_by="test")

    assert paid.decided is not None
    assert [str(c.action) for c in paid.decided.commands] == ["disconnect"]  # still below ¥0: strict cuts
    assert _row(conn, "a1")[1] == STRICT_POLICY.name
    assert [c.state for c in plan_history(conn, "a1")] == [PlanChangeState.APPLIED]


def test_pending_changes_can_be_cancelled_from_the_latest_and_the_history_keeps_everything(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    first = _change(conn, catalog, "a1", FLAT.code, NOON, now=DAY_START)
    second = _change(conn, catalog, "a1", TARIFF.code, NOON + timedelta(hours=2), now=DAY_START)
    assert _row(conn, "a1")[2] == NOON
    with pytest.raises(PlanChangeError, match=f"followed by #{second}"):
        cancel_change(conn, "a1", first, now=DAY_START, actor="test")
    cancel_change(conn, "a1", second, now=DAY_START, actor="test")
    with pytest.raises(PlanChangeError, match="already cancelled"):
        cancel_change(conn, "a1", second, now=DAY_START, actor="test")
    assert _row(conn, "a1")[2] == NOON  # the first is still pending
    third = _change(conn, catalog, "a1", TARIFF.code, NOON + timedelta(hours=1), now=DAY_START)
    store_readings(conn, series("m1", DAY_START + STEP, 96, STEP, 1_000_400, 400))
    _runner(conn, catalog, NOW).sweep()
    with pytest.raises(PlanChangeError, match="in force since"):
        cancel_change(conn, "a1", third, now=NOW, actor="test")
    charged = _stored_charges(conn, "a1")
    flat_hour = [c for c in charged if NOON <= c[0] < NOON + timedelta(hours=1)]
    assert [c[3] for c in flat_hour] == [40] * 4  # one hour on the flat tariff, then back
    assert all(c[2] == 400 * _local_price(c[0]) / 1000 for c in charged if not NOON <= c[0] < NOON + timedelta(hours=1))
    history = plan_history(conn, "a1")
    assert [(c.change_id, c.state, c.old_code, c.new_code) for c in history] == [
        (first, PlanChangeState.APPLIED, TARIFF.code, FLAT.code),
        (third, PlanChangeState.APPLIED, FLAT.code, TARIFF.code),
        (second, PlanChangeState.CANCELLED, FLAT.code, TARIFF.code),
    ]
    assert (history[2].cancelled_by, history[0].requested_by, history[0].requested_at) == (
        "test",
        "test-operator",
        DAY_START,
    )
    assert _row(conn, "a1")[:3] == (TARIFF.code, STRICT_POLICY.name, None)


def test_the_plan_history_is_append_only(conn: Conn) -> None:
    catalog = _catalog(conn)
    _open(conn, catalog, "a1", "m1")
    change = _change(conn, catalog, "a1", FLAT.code, NOON, now=DAY_START)
    cancel_change(conn, "a1", change, now=DAY_START, actor="test")
    for table, column in (
        ("account_plan_changes", "requested_by"),
        ("account_plan_change_cancellations", "cancelled_by"),
    ):
        for statement in (
            f"UPDATE {table} SET {column} = 'someone'",
            f"DELETE FROM {table}",
            f"TRUNCATE {table} CASCADE",
        ):
            # the trigger refuses even the superuser (no head-end role is granted these at all: test_db_roles.py)
            with admin_connection(conn) as admin, pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                admin.execute(statement)
    assert count(conn, "SELECT count(*) FROM account_plan_changes") == 1
    assert datetime.now(UTC) > NOW
