"""An account survives the trip through its database row: state columns and meter history back to the same value."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from headend.engine.account_rows import (
    STATE_COLUMNS,
    AccountMeter,
    account_from_row,
    replacements,
    state_values,
)
from prepay_engine import account as pure
from prepay_engine.ledger import Ledger, house_accounts
from prepay_engine.payments import PaymentTerms
from prepay_engine.policy import FriendlyCreditWindows, PolicyConfig
from prepay_engine.tariffs import SHANGHAI, example_jiangsu_residential
from prepay_engine.usage import MeterRegister, MeterReplacement, RegisterReading, UsageEvent

START = datetime(2026, 11, 20, 1, 3, tzinfo=UTC)
POLICY = PolicyConfig(
    name="strict",
    warning_thresholds_fen=(3000, 1000),
    disconnect_threshold_fen=0,
    notice_period=timedelta(0),
    friendly=FriendlyCreditWindows(None, None, weekends=False, public_holidays=False, eve_of_public_holidays=False),
)
TARIFF = example_jiangsu_residential()


def _row(account: pure.PrepaidAccount) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(STATE_COLUMNS, state_values(account), strict=True))
    row.update(
        account_id=account.account_id,
        emergency_credit_fen=account.terms.emergency_credit_fen,
        debt_recovery_bps=account.terms.debt_recovery_bps,
        zone=account.zone.key,
    )
    return row


def test_an_account_with_notices_a_pending_command_and_a_replaced_meter_round_trips() -> None:
    ledger = Ledger()
    assert ledger.open_accounts(house_accounts(())) is None
    opened = pure.open_account(
        ledger,
        "acc-1",
        meter=MeterRegister("old", multiplier=2),
        opened_at=START,
        opening_register_wh=5_000,
        tariff=TARIFF,
        terms=PaymentTerms(emergency_credit_fen=50, debt_recovery_bps=1500),
        policy=POLICY,
    )
    assert isinstance(opened, pure.PrepaidAccount)
    swap = START + timedelta(hours=1, minutes=7)
    new = MeterRegister("new", register_max_wh=99_999_990)
    events: list[UsageEvent] = [
        RegisterReading("old", START + timedelta(minutes=40), 5_900),
        MeterReplacement(swap, "old", 6_100, new, 10),
        RegisterReading("new", swap + timedelta(minutes=50), 2_000),
    ]
    step = opened.apply_readings(ledger, events, START + timedelta(hours=3), START + timedelta(hours=3))
    assert isinstance(step, pure.ReadingsApplied)
    account = step.account
    # the charges drove the balance below zero: notices were sent and a disconnect is pending
    assert account.notices
    assert account.pending is not None
    assert account.usage.replacements
    history = [
        AccountMeter("acc-1", "old", START, 5_000, swap, 6_100, 2, 999_999_990, 10),
        AccountMeter("acc-1", "new", swap, 10, None, None, 1, 99_999_990, 10),
    ]
    assert replacements(history) == (MeterReplacement(swap, "old", 6_100, new, 10),)

    loaded = account_from_row(_row(account), TARIFF, POLICY, history)

    assert loaded == account
    assert loaded.zone == SHANGHAI


def test_an_account_before_its_replacement_loads_the_old_meter() -> None:
    ledger = Ledger()
    assert ledger.open_accounts(house_accounts(())) is None
    opened = pure.open_account(
        ledger,
        "acc-2",
        meter=MeterRegister("old"),
        opened_at=START,
        opening_register_wh=0,
        tariff=TARIFF,
        terms=PaymentTerms(),
        policy=POLICY,
    )
    assert isinstance(opened, pure.PrepaidAccount)
    later = START + timedelta(days=1)
    history = [
        AccountMeter("acc-2", "old", START, 0, later, 900, 1, 999_999_990, 10),
        AccountMeter("acc-2", "new", later, 0, None, None, 1, 999_999_990, 10),
    ]
    loaded = account_from_row(_row(opened), TARIFF, POLICY, history)
    assert loaded == replace(opened)
    assert loaded.usage.meter.meter_id == "old"
    assert loaded.usage.replacements == ()
