"""Rows of `prepaid_accounts` and `account_meters` ⇄ the pure `PrepaidAccount` value."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

from prepay_engine.account import CHINA_MAINLAND, PrepaidAccount, RelayAction, RelayCommand
from prepay_engine.calendar import WorkdayCalendar
from prepay_engine.money import FenAccumulator
from prepay_engine.payments import PaymentTerms
from prepay_engine.policy import PolicyConfig, SentNotice, SentWarning, SentZeroBalanceNotice, SupplyState
from prepay_engine.tariffs import Tariff
from prepay_engine.usage import MeterRegister, MeterReplacement, UsageState

# the columns an engine step changes (`state_values` gives them in this order)
STATE_COLUMNS: Final = (
    "protected",
    "keep_supply",
    "supply",
    "pending_command",
    "commands_requested",
    "last_observed_sequence",
    "notices",
    "episode",
    "in_episode",
    "usage_meter_id",
    "anchor_ts",
    "anchor_register_wh",
    "charged_until",
    "open_interval_meter_id",
    "carried_wh",
    "consumed_wh",
    "cycle_usage_wh",
    "charged_exact_yuan",
    "charged_fen",
)
# the STATE_COLUMNS of the charging state alone (`usage_values` gives them in this order)
USAGE_COLUMNS: Final = STATE_COLUMNS[STATE_COLUMNS.index("usage_meter_id") :]
# the columns `account_from_row` reads, in this order
ACCOUNT_COLUMNS: Final = (
    "account_id",
    "tariff_code",
    "policy_code",
    "emergency_credit_fen",
    "debt_recovery_bps",
    "zone",
    *STATE_COLUMNS,
    "meter_id",
    "seen_until",
    "due_at",
    "wake_at",
    "version",
    "next_tariff_change_at",
    "next_policy_change_at",
)
METER_COLUMNS: Final = (
    "account_id",
    "meter_id",
    "installed_at",
    "start_register_wh",
    "removed_at",
    "final_register_wh",
    "multiplier",
    "register_max_wh",
    "register_step_wh",
)


@dataclass(frozen=True, slots=True)
class AccountMeter:
    """One meter's time on an account."""

    account_id: str
    meter_id: str
    installed_at: datetime
    start_register_wh: int
    removed_at: datetime | None
    final_register_wh: int | None
    multiplier: int
    register_max_wh: int
    register_step_wh: int

    @property
    def register(self) -> MeterRegister:
        """The meter as the charging sees it."""
        return MeterRegister(self.meter_id, self.multiplier, self.register_max_wh, self.register_step_wh)


def meter_from_row(row: Sequence[Any]) -> AccountMeter:
    """An `account_meters` row selected with METER_COLUMNS."""
    return AccountMeter(*row)


def replacements(history: Sequence[AccountMeter]) -> tuple[MeterReplacement, ...]:
    """The replacements of an account's meter history (ordered by installation): old row closed, next row opened."""
    events = []
    for old, new in itertools.pairwise(history):
        assert old.removed_at is not None, old
        assert old.final_register_wh is not None, old
        assert new.installed_at == old.removed_at, (old, new)
        events.append(
            MeterReplacement(old.removed_at, old.meter_id, old.final_register_wh, new.register, new.start_register_wh)
        )
    return tuple(events)


def _notices(data: Sequence[Mapping[str, Any]]) -> tuple[SentNotice, ...]:
    notices: list[SentNotice] = []
    for item in data:
        sent_at = datetime.fromisoformat(item["sent_at"])
        if item["kind"] == "warning":
            notices.append(SentWarning(int(item["threshold_fen"]), sent_at))
        else:
            assert item["kind"] == "zero_balance", item
            notices.append(SentZeroBalanceNotice(sent_at))
    return tuple(notices)


def notices_json(notices: Sequence[SentNotice]) -> list[dict[str, Any]]:
    """The notices of the current episode as stored in `prepaid_accounts.notices`."""
    return [
        {"kind": "warning", "threshold_fen": n.threshold_fen, "sent_at": n.sent_at.isoformat()}
        if isinstance(n, SentWarning)
        else {"kind": "zero_balance", "sent_at": n.sent_at.isoformat()}
        for n in notices
    ]


def command_json(command: RelayCommand | None) -> dict[str, Any] | None:
    """A pending relay command as stored in `prepaid_accounts.pending_command`."""
    if command is None:
        return None
    return {
        "request_id": command.request_id,
        "meter_id": command.meter_id,
        "sequence": command.sequence,
        "action": str(command.action),
    }


def _command(account_id: str, data: Mapping[str, Any] | None) -> RelayCommand | None:
    if data is None:
        return None
    return RelayCommand(
        data["request_id"], account_id, data["meter_id"], int(data["sequence"]), RelayAction(data["action"])
    )


def usage_state_from_row(row: Mapping[str, Any], history: Sequence[AccountMeter]) -> UsageState:
    """The charging state of a `prepaid_accounts` row (ACCOUNT_COLUMNS) and its meter history (by installation)."""
    anchor_ts: datetime = row["anchor_ts"].astimezone(UTC)
    in_service = [m for m in history if m.meter_id == row["usage_meter_id"] and m.installed_at <= anchor_ts]
    assert in_service, f"account {row['account_id']}: meter {row['usage_meter_id']} is not in its history"
    consumed = tuple(r for r in replacements(history) if r.at <= anchor_ts) if len(history) > 1 else ()
    return UsageState(
        meter=in_service[-1].register,
        anchor_ts=anchor_ts,
        anchor_register_wh=row["anchor_register_wh"],
        charged_until=row["charged_until"].astimezone(UTC),
        open_interval_meter_id=row["open_interval_meter_id"],
        carried_wh=row["carried_wh"],
        consumed_wh=row["consumed_wh"],
        cycle_usage_wh=row["cycle_usage_wh"],
        accumulator=FenAccumulator(Decimal(row["charged_exact_yuan"]), row["charged_fen"]),
        replacements=consumed,
    )


def account_from_row(
    row: Mapping[str, Any],
    tariff: Tariff,
    policy: PolicyConfig,
    history: Sequence[AccountMeter],
    calendar: WorkdayCalendar = CHINA_MAINLAND,
    *,
    usage: UsageState | None = None,
) -> PrepaidAccount:
    """The pure account of a `prepaid_accounts` row (ACCOUNT_COLUMNS) and its meter history (by installation).

    `usage`, when given, is the account's charging state instead of the row's (charged since it was read).
    """
    return PrepaidAccount(
        account_id=row["account_id"],
        tariff=tariff,
        terms=PaymentTerms(row["emergency_credit_fen"], row["debt_recovery_bps"]),
        policy=policy,
        usage=usage_state_from_row(row, history) if usage is None else usage,
        protected=row["protected"],
        keep_supply=row["keep_supply"],
        supply=SupplyState(row["supply"]),
        pending=_command(row["account_id"], row["pending_command"]),
        commands_requested=row["commands_requested"],
        last_observed_sequence=row["last_observed_sequence"],
        notices=_notices(row["notices"]),
        episode=row["episode"],
        in_episode=row["in_episode"],
        zone=ZoneInfo(row["zone"]),
        calendar=calendar,
    )


def state_values(account: PrepaidAccount) -> tuple[Any, ...]:
    """The STATE_COLUMNS of an account, JSON columns as Python structures."""
    return (
        account.protected,
        account.keep_supply,
        str(account.supply),
        command_json(account.pending),
        account.commands_requested,
        account.last_observed_sequence,
        notices_json(account.notices),
        account.episode,
        account.in_episode,
        *usage_values(account.usage),
    )


def usage_values(usage: UsageState) -> tuple[Any, ...]:
    """The USAGE_COLUMNS of a charging state."""
    assert not usage.pending_readings, "the store feeds only readings it consumes"
    assert not usage.pending_replacements, "the store feeds only replacements it consumes"
    return (
        usage.meter.meter_id,
        usage.anchor_ts,
        usage.anchor_register_wh,
        usage.charged_until,
        usage.open_interval_meter_id,
        usage.carried_wh,
        usage.consumed_wh,
        usage.cycle_usage_wh,
        usage.accumulator.exact_total_yuan,
        usage.accumulator.charged_fen,
    )
