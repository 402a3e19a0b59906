"""Prepaid policy: from an account snapshot to notification and relay decisions, with reasons and inputs.

Pure: the clock (`now`), the local zone and the holiday calendar are arguments; nothing is read or written.
The decision is a value. The edge persists its actions (notifications outbox, command requests) in the same
transaction as the posting that caused them, and keeps the evidence for audit.

Rules (each one is pinned by tests/unit/prepay/test_policy.py):

Amounts
  * credit = balance_fen + emergency_credit_available_fen. Emergency credit already lent is part of the
    balance (the ledger has posted it), so only the part the account may still draw counts here.
  * The credit is exhausted when credit <= disconnect_threshold_fen (0, or a negative credit limit).
    Otherwise the account is in credit. A balance of exactly zero with threshold 0 is exhausted.
  * Warning threshold t is crossed when balance_fen <= t. Thresholds are strictly descending and all above the
    disconnect threshold.

Low-balance episode
  * An episode is open while balance_fen <= the highest warning threshold (or the disconnect threshold if no
    warning is configured). Once the balance rises above it, the episode is over: `Decision.episode_active` is
    False, the notices passed in are ignored, and the edge must forget them. Contract: `notices` holds only
    the current episode's notices; the policy cannot tell an old episode's notice from a current one. A partial
    top-up that leaves the balance inside the band does not start a new episode, and no notice is repeated.
  * Notices are ordered by urgency: warnings from the highest threshold to the lowest, then the zero-balance
    notice. A notice is due only if neither it nor any more urgent notice has been sent in this episode.
  * If one step crosses several thresholds (¥50 to ¥5 with warnings at ¥30 and ¥10), we send ONE warning,
    for the lowest crossed threshold, because the ¥30 text would already be stale. `covers_thresholds_fen`
    lists every threshold the warning stands for. If the credit is already exhausted, we send only the
    zero-balance notice, which stands for all the warnings.

Disconnect (only when the credit is exhausted)
  * Never for an account already disconnected (without a pending reconnect) or with a disconnect pending: the
    decision is idempotent. A meter left in RECONNECT_ALLOWED, or a pending reconnect (a payment reversed),
    gets a disconnect under the same rules, since the customer could otherwise close the relay.
  * Never when any of these rules forbids it. The disconnect is then `DisconnectDeferred`, listing every
    rule that applied:
      - protected customer (life support, hospital...) or keep-supply (保电): until=None, no opportunity.
        Such accounts still get their warnings and zero-balance notice: only the disconnect is forbidden. A
        flag set while a disconnect is pending, or after the supply was cut, brings a `Reconnect` (superseding
        the pending disconnect) although the credit is exhausted: the flag means the supply stays on;
      - notice period: the disconnect waits until the zero-balance notice of this episode is
        `notice_period` old (elapsed time). The zero-balance notice goes out in the same decision that first
        finds the credit exhausted, so that decision starts the period. A partial top-up that does not end the
        episode does not restart it: the customer has had the notice;
      - friendly-credit windows in local time: nights [night_start, night_end) (may wrap midnight), weekends,
        public holidays, and optionally the eve of a public holiday (the local day before one);
      - calendar unsure: a day-based window is configured, and the calendar does not know the day: until=None.
  * `until` is the next opportunity: the earliest instant, at or after the notice deadline, that lies in no
    friendly window (found by walking window ends: Friday 19:00 gives Monday 08:00). If that walk runs into
    days the calendar does not know, `until` is None and the reasons say so.
  * Weekend means a Saturday or Sunday that is not a make-up working day (调休上班), so a make-up Saturday is
    an ordinary working day. A weekend day inside a holiday break is both weekend and public holiday.
    weekends=True with public_holidays=True means "disconnect on working days only".

Reconnect (when in credit, or when protected / keep-supply forbid the disconnect; never restricted by windows,
flags or notices)
  * `Reconnect` whenever a disconnect is pending (it supersedes it), or the supply is disconnected and no
    reconnect is pending. A paid-up account is never left disconnected.
  * Supply `RECONNECT_ALLOWED` (合闸允许: relay open, armed, customer presses the button on site) or a pending
    reconnect: nothing more to send; the decision notes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from prepay_engine.calendar import DayInfo, UnknownDay, WorkdayCalendar

__all__ = [
    "AccountSnapshot",
    "Action",
    "Decision",
    "Disconnect",
    "DisconnectDeferred",
    "Evidence",
    "FriendlyCreditWindows",
    "FriendlyWindow",
    "NoAction",
    "PendingCommand",
    "PolicyConfig",
    "Reason",
    "ReasonCode",
    "Reconnect",
    "SendWarning",
    "SendZeroBalanceNotice",
    "SentNotice",
    "SentWarning",
    "SentZeroBalanceNotice",
    "SupplyState",
    "WindowKind",
    "decide",
]

_UTC = dt.UTC
# Each step of the walk jumps to the end of a window (at most two steps per day), so this spans over a year,
# far more than any run of friendly windows within the calendar's known range.
_MAX_WALK_STEPS = 1000


# --- inputs -------------------------------------------------------------------------------------------------


class SupplyState(StrEnum):
    """Relay state as last confirmed by read-back."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECT_ALLOWED = "reconnect_allowed"


class PendingCommand(StrEnum):
    """A relay command already requested and not yet final."""

    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


def _require_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (fen), got {type(value).__name__}")


def _require_aware(value: dt.datetime, name: str) -> None:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


@dataclass(frozen=True, slots=True)
class FriendlyCreditWindows:
    """When no disconnect may happen; hours are local wall-clock times, days come from the calendar."""

    night_start: dt.time | None
    night_end: dt.time | None
    weekends: bool
    public_holidays: bool
    eve_of_public_holidays: bool

    def __post_init__(self) -> None:
        if (self.night_start is None) != (self.night_end is None):
            raise ValueError("night_start and night_end are both set or both None")
        if self.night_start is not None and self.night_end is not None:
            if self.night_start.tzinfo is not None or self.night_end.tzinfo is not None:
                raise ValueError("night window times are local wall-clock times without tzinfo")
            if self.night_start == self.night_end:
                raise ValueError("an empty or all-day night window is ambiguous; use distinct start and end")
        for name in ("weekends", "public_holidays", "eve_of_public_holidays"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")

    @property
    def needs_calendar(self) -> bool:
        """True if any window depends on the holiday calendar."""
        return self.weekends or self.public_holidays or self.eve_of_public_holidays


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Validated disconnect policy configuration; `name` identifies it in audit records."""

    name: str
    warning_thresholds_fen: tuple[int, ...]
    disconnect_threshold_fen: int
    notice_period: dt.timedelta
    friendly: FriendlyCreditWindows

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a policy needs a name")
        _require_int(self.disconnect_threshold_fen, "disconnect_threshold_fen")
        if self.disconnect_threshold_fen > 0:
            raise ValueError("disconnect_threshold_fen is zero or a negative credit limit")
        if not isinstance(self.warning_thresholds_fen, tuple):
            raise TypeError("warning_thresholds_fen must be a tuple")
        for threshold in self.warning_thresholds_fen:
            _require_int(threshold, "warning threshold")
            if threshold <= self.disconnect_threshold_fen:
                raise ValueError("every warning threshold must be above the disconnect threshold")
        pairs = zip(self.warning_thresholds_fen, self.warning_thresholds_fen[1:], strict=False)
        if any(high <= low for high, low in pairs):
            raise ValueError("warning thresholds must be strictly descending")
        if not isinstance(self.notice_period, dt.timedelta) or self.notice_period < dt.timedelta(0):
            raise ValueError("notice_period must be a non-negative timedelta")
        if not isinstance(self.friendly, FriendlyCreditWindows):
            raise TypeError("friendly must be FriendlyCreditWindows")

    @property
    def episode_ceiling_fen(self) -> int:
        """Balance at or below which a low-balance episode is open."""
        return max(self.warning_thresholds_fen, default=self.disconnect_threshold_fen)


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The account facts the policy needs, as of `now`."""

    account_id: str
    balance_fen: int
    emergency_credit_available_fen: int
    emergency_credit_outstanding_fen: int
    protected: bool
    keep_supply: bool
    supply: SupplyState
    pending_command: PendingCommand | None

    def __post_init__(self) -> None:
        if not isinstance(self.account_id, str) or not self.account_id:
            raise ValueError("account_id is required")
        _require_int(self.balance_fen, "balance_fen")
        _require_int(self.emergency_credit_available_fen, "emergency_credit_available_fen")
        _require_int(self.emergency_credit_outstanding_fen, "emergency_credit_outstanding_fen")
        if self.emergency_credit_available_fen < 0 or self.emergency_credit_outstanding_fen < 0:
            raise ValueError("emergency credit amounts are non-negative")
        if not isinstance(self.protected, bool) or not isinstance(self.keep_supply, bool):
            raise TypeError("protected and keep_supply must be bool")
        if not isinstance(self.supply, SupplyState):
            raise TypeError("supply must be a SupplyState")
        if self.pending_command is not None and not isinstance(self.pending_command, PendingCommand):
            raise TypeError("pending_command must be a PendingCommand or None")

    @property
    def credit_fen(self) -> int:
        """Balance plus the emergency credit the account may still draw."""
        return self.balance_fen + self.emergency_credit_available_fen


@dataclass(frozen=True, slots=True)
class SentWarning:
    """A low-balance warning already sent in the current episode."""

    threshold_fen: int
    sent_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SentZeroBalanceNotice:
    """The zero-balance (disconnect ahead) notice already sent in the current episode."""

    sent_at: dt.datetime


SentNotice = SentWarning | SentZeroBalanceNotice


# --- outputs ------------------------------------------------------------------------------------------------


class ReasonCode(StrEnum):
    """Machine-readable reason codes carried by every action."""

    BALANCE_ABOVE_WARNINGS = "balance_above_warnings"
    BALANCE_AT_OR_BELOW_WARNING = "balance_at_or_below_warning"
    THRESHOLDS_CROSSED_IN_ONE_STEP = "thresholds_crossed_in_one_step"
    NOTICE_ALREADY_SENT = "notice_already_sent"
    CREDIT_EXHAUSTED = "credit_exhausted"
    CREDIT_AVAILABLE = "credit_available"
    NOTICE_PERIOD_RUNNING = "notice_period_running"
    NOTICE_PERIOD_ELAPSED = "notice_period_elapsed"
    OUTSIDE_FRIENDLY_WINDOWS = "outside_friendly_windows"
    PROTECTED_CUSTOMER = "protected_customer"
    KEEP_SUPPLY = "keep_supply"
    FRIENDLY_NIGHT = "friendly_night"
    FRIENDLY_WEEKEND = "friendly_weekend"
    FRIENDLY_PUBLIC_HOLIDAY = "friendly_public_holiday"
    FRIENDLY_EVE_OF_PUBLIC_HOLIDAY = "friendly_eve_of_public_holiday"
    CALENDAR_UNKNOWN = "calendar_unknown"
    NEXT_OPPORTUNITY_UNKNOWN = "next_opportunity_unknown"
    ALREADY_DISCONNECTED = "already_disconnected"
    DISCONNECT_PENDING = "disconnect_pending"
    SUPERSEDES_PENDING_DISCONNECT = "supersedes_pending_disconnect"
    SUPERSEDES_PENDING_RECONNECT = "supersedes_pending_reconnect"
    RECONNECT_PENDING = "reconnect_pending"
    AWAITING_CUSTOMER_RECONNECT = "awaiting_customer_reconnect"
    SUPPLY_DISCONNECTED = "supply_disconnected"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason: a stable code and a human sentence with the numbers in it."""

    code: ReasonCode
    text: str


class WindowKind(StrEnum):
    """Kinds of friendly-credit window."""

    NIGHT = "night"
    WEEKEND = "weekend"
    PUBLIC_HOLIDAY = "public_holiday"
    EVE_OF_PUBLIC_HOLIDAY = "eve_of_public_holiday"


_WINDOW_REASON = {
    WindowKind.NIGHT: ReasonCode.FRIENDLY_NIGHT,
    WindowKind.WEEKEND: ReasonCode.FRIENDLY_WEEKEND,
    WindowKind.PUBLIC_HOLIDAY: ReasonCode.FRIENDLY_PUBLIC_HOLIDAY,
    WindowKind.EVE_OF_PUBLIC_HOLIDAY: ReasonCode.FRIENDLY_EVE_OF_PUBLIC_HOLIDAY,
}


@dataclass(frozen=True, slots=True)
class FriendlyWindow:
    """A friendly-credit window in effect at some instant, and when it ends (local time)."""

    kind: WindowKind
    ends_at: dt.datetime
    detail: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything a decision was computed from, plus the derived facts it turned on."""

    now: dt.datetime
    local_now: dt.datetime
    zone: ZoneInfo
    config: PolicyConfig
    snapshot: AccountSnapshot
    notices_considered: tuple[SentNotice, ...]
    credit_fen: int
    credit_exhausted: bool
    episode_active: bool
    warning_thresholds_crossed_fen: tuple[int, ...]
    zero_balance_notice_at: dt.datetime | None
    notice_deadline: dt.datetime | None
    friendly_windows_now: tuple[FriendlyWindow, ...]
    today: DayInfo | UnknownDay | None


@dataclass(frozen=True, slots=True)
class SendWarning:
    """Send a low-balance warning for `threshold_fen` (standing for every threshold in `covers_thresholds_fen`)."""

    threshold_fen: int
    covers_thresholds_fen: tuple[int, ...]
    reasons: tuple[Reason, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class SendZeroBalanceNotice:
    """Tell the customer the credit is exhausted and supply will be cut (after any notice period)."""

    reasons: tuple[Reason, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Request a disconnect (relay trip)."""

    reasons: tuple[Reason, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Request a reconnect; it supersedes any pending disconnect."""

    reasons: tuple[Reason, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class DisconnectDeferred:
    """A disconnect is due but forbidden now; `until` is the next opportunity, None when there is none known."""

    until: dt.datetime | None
    reasons: tuple[Reason, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class NoAction:
    """Nothing to do; the reasons say why."""

    reasons: tuple[Reason, ...]
    evidence: Evidence


Action = SendWarning | SendZeroBalanceNotice | Disconnect | Reconnect | DisconnectDeferred | NoAction
_A = TypeVar("_A")


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one account at one instant."""

    account_id: str
    decided_at: dt.datetime
    episode_active: bool
    actions: tuple[Action, ...]
    notes: tuple[Reason, ...]
    evidence: Evidence = field(repr=False)

    def __post_init__(self) -> None:
        self._check_invariants()

    def of(self, kind: type[_A]) -> tuple[_A, ...]:
        """The actions of one kind, in order."""
        return tuple(a for a in self.actions if isinstance(a, kind))

    def _check_invariants(self) -> None:
        ev = self.evidence
        snap = ev.snapshot
        assert self.actions, "a decision always has at least one action"
        assert not (self.of(NoAction) and len(self.actions) > 1), "NoAction stands alone"
        relay = [a for a in self.actions if isinstance(a, Disconnect | Reconnect | DisconnectDeferred)]
        assert len(relay) <= 1, "at most one relay action"
        warnings, zero_notices = self.of(SendWarning), self.of(SendZeroBalanceNotice)
        assert not (warnings and zero_notices), "the zero notice stands for the warnings"
        assert len(warnings) <= 1, "at most one warning per decision"
        for action in self.actions:
            assert action.evidence is ev, "all actions share the decision's evidence"
            assert isinstance(action, NoAction) or action.reasons, "every action carries reasons"
        if self.of(Disconnect):
            assert ev.credit_exhausted
            assert not snap.protected, "protected customers are never disconnected"
            assert not snap.keep_supply, "keep-supply forbids disconnects"
            assert not ev.friendly_windows_now, "no disconnect inside a friendly-credit window"
            assert not isinstance(ev.today, UnknownDay), "no disconnect on a day the calendar does not know"
            assert ev.notice_deadline is not None
            assert _utc(ev.notice_deadline) <= _utc(ev.now), "no disconnect before the notice period ends"
            assert snap.pending_command is not PendingCommand.DISCONNECT
            assert snap.supply is not SupplyState.DISCONNECTED or snap.pending_command is PendingCommand.RECONNECT
        if self.of(Reconnect):
            # in credit, or a flag that forbids disconnects restores a supply cut before it was set
            assert not ev.credit_exhausted or snap.protected or snap.keep_supply
        for deferred in self.of(DisconnectDeferred):
            assert deferred.until is None or _utc(deferred.until) > _utc(ev.now)


# --- the policy ---------------------------------------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    # Aware datetimes sharing one tzinfo compare by wall clock in Python; compare instants in UTC instead.
    return value.astimezone(_UTC)


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _local_instant(day: dt.date, at: dt.time, zone: ZoneInfo, after: dt.datetime) -> dt.datetime:
    moment = dt.datetime.combine(day, at, tzinfo=zone)
    if _utc(moment) <= _utc(after):
        # Ambiguous wall time after a DST fall-back: the second occurrence is the one still ahead.
        moment = moment.replace(fold=1)
    assert _utc(moment) > _utc(after), "a friendly window must end after the instant it was found at"
    return moment


@dataclass(frozen=True, slots=True)
class _Scan:
    windows: tuple[FriendlyWindow, ...]
    today: DayInfo | UnknownDay | None
    unknown: UnknownDay | None


def _scan(at: dt.datetime, friendly: FriendlyCreditWindows, zone: ZoneInfo, calendar: WorkdayCalendar) -> _Scan:
    local = at.astimezone(zone)
    windows: list[FriendlyWindow] = []
    if friendly.night_start is not None and friendly.night_end is not None:
        start, end, clock = friendly.night_start, friendly.night_end, local.time()
        inside = start <= clock < end if start < end else (clock >= start or clock < end)
        if inside:
            end_day = local.date() if clock < end else local.date() + dt.timedelta(days=1)
            ends_at = _local_instant(end_day, end, zone, at)
            detail = f"night window {start:%H:%M}-{end:%H:%M} local, ends {ends_at.isoformat()}"
            windows.append(FriendlyWindow(WindowKind.NIGHT, ends_at, detail))
    if not friendly.needs_calendar:
        return _Scan(tuple(windows), None, None)
    today = calendar.classify(local.date())
    if isinstance(today, UnknownDay):
        return _Scan(tuple(windows), today, today)
    tomorrow_start = _local_instant(local.date() + dt.timedelta(days=1), dt.time(0), zone, at)
    if friendly.weekends and today.weekend:
        windows.append(FriendlyWindow(WindowKind.WEEKEND, tomorrow_start, f"{today.day:%A %Y-%m-%d} is a weekend day"))
    if friendly.public_holidays and today.public_holiday:
        detail = f"{today.day.isoformat()} is a public holiday ({today.holiday_name})"
        windows.append(FriendlyWindow(WindowKind.PUBLIC_HOLIDAY, tomorrow_start, detail))
    if friendly.eve_of_public_holidays:
        tomorrow = calendar.classify(local.date() + dt.timedelta(days=1))
        if isinstance(tomorrow, UnknownDay):
            return _Scan(tuple(windows), today, tomorrow)
        if tomorrow.public_holiday:
            detail = f"{today.day.isoformat()} is the eve of a public holiday ({tomorrow.holiday_name})"
            windows.append(FriendlyWindow(WindowKind.EVE_OF_PUBLIC_HOLIDAY, tomorrow_start, detail))
    return _Scan(tuple(windows), today, None)


def _next_opportunity(
    start: dt.datetime, friendly: FriendlyCreditWindows, zone: ZoneInfo, calendar: WorkdayCalendar
) -> dt.datetime | UnknownDay | None:
    at = start
    for _ in range(_MAX_WALK_STEPS):
        scan = _scan(at, friendly, zone, calendar)
        if scan.unknown is not None:
            return scan.unknown
        if not scan.windows:
            return at.astimezone(zone)
        at = max((w.ends_at for w in scan.windows), key=_utc)
    return None


def _is_covered(level_fen: int | None, notices: tuple[SentNotice, ...]) -> bool:
    """A notice level (a warning threshold, or None for zero balance) is covered by it or a more urgent one."""
    for notice in notices:
        if isinstance(notice, SentZeroBalanceNotice):
            return True
        if level_fen is not None and notice.threshold_fen <= level_fen:
            return True
    return False


def decide(
    config: PolicyConfig,
    snapshot: AccountSnapshot,
    notices: tuple[SentNotice, ...],
    now: dt.datetime,
    zone: ZoneInfo,
    calendar: WorkdayCalendar,
) -> Decision:
    """Decide notifications and relay actions for one account at `now`; a pure function of its arguments."""
    _require_aware(now, "now")
    for notice in notices:
        if not isinstance(notice, SentWarning | SentZeroBalanceNotice):
            raise TypeError(f"unexpected notice {notice!r}")
        _require_aware(notice.sent_at, "notice.sent_at")

    credit = snapshot.credit_fen
    exhausted = credit <= config.disconnect_threshold_fen
    episode_active = snapshot.balance_fen <= config.episode_ceiling_fen
    assert episode_active or not exhausted, "exhausted credit is always inside a low-balance episode"
    considered = tuple(notices) if episode_active else ()
    crossed = tuple(t for t in config.warning_thresholds_fen if snapshot.balance_fen <= t)

    sent_zero = [n.sent_at for n in considered if isinstance(n, SentZeroBalanceNotice)]
    local_now = now.astimezone(zone)
    # Times in the evidence and texts are local, so the same instant given in any zone gives the same decision.
    zero_notice_at = min(sent_zero, key=_utc).astimezone(zone) if sent_zero else None
    send_zero_now = exhausted and zero_notice_at is None
    if send_zero_now:
        zero_notice_at = local_now
    notice_deadline: dt.datetime | None = None
    if zero_notice_at is not None:
        # Elapsed time, not wall-clock time: add in UTC so a DST change cannot stretch or shrink the period.
        notice_deadline = (_utc(zero_notice_at) + config.notice_period).astimezone(zone)

    scan = _scan(now, config.friendly, zone, calendar) if exhausted else _Scan((), None, None)
    evidence = Evidence(
        now=now,
        local_now=local_now,
        zone=zone,
        config=config,
        snapshot=snapshot,
        notices_considered=considered,
        credit_fen=credit,
        credit_exhausted=exhausted,
        episode_active=episode_active,
        warning_thresholds_crossed_fen=crossed,
        zero_balance_notice_at=zero_notice_at,
        notice_deadline=notice_deadline,
        friendly_windows_now=scan.windows,
        today=scan.today,
    )

    actions: list[Action] = []
    notes: list[Reason] = []
    exhausted_reason = Reason(
        ReasonCode.CREDIT_EXHAUSTED,
        f"credit {_yuan(credit)} (balance {_yuan(snapshot.balance_fen)} + emergency credit available "
        f"{_yuan(snapshot.emergency_credit_available_fen)}) is at or below the disconnect threshold "
        f"{_yuan(config.disconnect_threshold_fen)}",
    )

    if not episode_active:
        notes.append(
            Reason(
                ReasonCode.BALANCE_ABOVE_WARNINGS,
                f"balance {_yuan(snapshot.balance_fen)} is above {_yuan(config.episode_ceiling_fen)}: "
                "no low-balance episode",
            )
        )

    relay: Disconnect | DisconnectDeferred | Reconnect | None
    if exhausted:
        if send_zero_now:
            actions.append(SendZeroBalanceNotice((exhausted_reason,), evidence))
        else:
            assert zero_notice_at is not None
            sent = zero_notice_at.isoformat()
            notes.append(Reason(ReasonCode.NOTICE_ALREADY_SENT, f"zero-balance notice already sent at {sent}"))
        relay = _relay_when_exhausted(config, snapshot, scan, exhausted_reason, evidence, calendar, notes)
    else:
        warning = _warning(config, snapshot, crossed, considered, evidence, notes)
        if warning is not None:
            actions.append(warning)
        relay = _relay_when_in_credit(config, snapshot, credit, evidence, notes)
    if relay is not None:
        actions.append(relay)

    if not actions:
        actions.append(NoAction(tuple(notes), evidence))
    return Decision(snapshot.account_id, now, episode_active, tuple(actions), tuple(notes), evidence)


def _warning(
    config: PolicyConfig,
    snapshot: AccountSnapshot,
    crossed: tuple[int, ...],
    considered: tuple[SentNotice, ...],
    evidence: Evidence,
    notes: list[Reason],
) -> SendWarning | None:
    if not crossed:
        return None
    lowest = min(crossed)
    if _is_covered(lowest, considered):
        notes.append(Reason(ReasonCode.NOTICE_ALREADY_SENT, f"a warning at or below {_yuan(lowest)} was already sent"))
        return None
    reasons = [
        Reason(
            ReasonCode.BALANCE_AT_OR_BELOW_WARNING,
            f"balance {_yuan(snapshot.balance_fen)} is at or below the warning threshold {_yuan(lowest)}",
        )
    ]
    newly_crossed = tuple(t for t in crossed if not _is_covered(t, considered))
    if len(newly_crossed) > 1:
        skipped = ", ".join(_yuan(t) for t in newly_crossed if t != lowest)
        reasons.append(
            Reason(
                ReasonCode.THRESHOLDS_CROSSED_IN_ONE_STEP,
                f"thresholds {skipped} were crossed in the same step; only the lowest warning is sent",
            )
        )
    return SendWarning(lowest, crossed, tuple(reasons), evidence)


def _relay_when_in_credit(
    config: PolicyConfig, snapshot: AccountSnapshot, credit: int, evidence: Evidence, notes: list[Reason]
) -> Reconnect | None:
    restored = Reason(
        ReasonCode.CREDIT_AVAILABLE,
        f"credit {_yuan(credit)} is above the disconnect threshold {_yuan(config.disconnect_threshold_fen)}",
    )
    if snapshot.pending_command is PendingCommand.DISCONNECT:
        superseding = Reason(ReasonCode.SUPERSEDES_PENDING_DISCONNECT, "a pending disconnect is superseded")
        return Reconnect((restored, superseding), evidence)
    if snapshot.pending_command is PendingCommand.RECONNECT:
        notes.append(Reason(ReasonCode.RECONNECT_PENDING, "a reconnect is already pending"))
        return None
    if snapshot.supply is SupplyState.DISCONNECTED:
        return Reconnect((restored, Reason(ReasonCode.SUPPLY_DISCONNECTED, "the relay is open")), evidence)
    if snapshot.supply is SupplyState.RECONNECT_ALLOWED:
        notes.append(
            Reason(ReasonCode.AWAITING_CUSTOMER_RECONNECT, "reconnect allowed; the customer closes the relay on site")
        )
    return None


def _forbidding_flags(snapshot: AccountSnapshot) -> tuple[Reason, ...]:
    """The flags that forbid cutting this customer's supply at all (and so restore it when it was cut)."""
    reasons = []
    if snapshot.protected:
        reasons.append(Reason(ReasonCode.PROTECTED_CUSTOMER, "protected customer: never disconnected"))
    if snapshot.keep_supply:
        reasons.append(Reason(ReasonCode.KEEP_SUPPLY, "keep-supply (保电) is set: no disconnect"))
    return tuple(reasons)


def _relay_when_exhausted(
    config: PolicyConfig,
    snapshot: AccountSnapshot,
    scan: _Scan,
    exhausted_reason: Reason,
    evidence: Evidence,
    calendar: WorkdayCalendar,
    notes: list[Reason],
) -> Disconnect | DisconnectDeferred | Reconnect | None:
    forbidding = _forbidding_flags(snapshot)
    if forbidding and snapshot.pending_command is PendingCommand.DISCONNECT:
        superseding = Reason(ReasonCode.SUPERSEDES_PENDING_DISCONNECT, "a pending disconnect is superseded")
        return Reconnect((*forbidding, superseding), evidence)
    if forbidding and snapshot.supply is SupplyState.DISCONNECTED and snapshot.pending_command is None:
        return Reconnect((*forbidding, Reason(ReasonCode.SUPPLY_DISCONNECTED, "the relay is open")), evidence)
    if snapshot.pending_command is PendingCommand.DISCONNECT:
        notes.append(Reason(ReasonCode.DISCONNECT_PENDING, "a disconnect is already pending"))
        return None
    if snapshot.supply is SupplyState.DISCONNECTED and snapshot.pending_command is not PendingCommand.RECONNECT:
        notes.append(Reason(ReasonCode.ALREADY_DISCONNECTED, "the supply is already disconnected"))
        return None

    now = evidence.now
    deadline = evidence.notice_deadline
    assert deadline is not None, "an exhausted account always has a zero-balance notice time"
    blockers: list[Reason] = []
    has_opportunity = True
    if snapshot.protected:
        blockers.append(Reason(ReasonCode.PROTECTED_CUSTOMER, "protected customer: never disconnected"))
        has_opportunity = False
    if snapshot.keep_supply:
        blockers.append(Reason(ReasonCode.KEEP_SUPPLY, "keep-supply (保电) is set: no disconnect"))
        has_opportunity = False
    if _utc(now) < _utc(deadline):
        blockers.append(
            Reason(
                ReasonCode.NOTICE_PERIOD_RUNNING,
                f"notice period {config.notice_period} since the zero-balance notice ends at {deadline.isoformat()}",
            )
        )
    blockers.extend(Reason(_WINDOW_REASON[w.kind], w.detail) for w in scan.windows)
    if scan.unknown is not None:
        blockers.append(Reason(ReasonCode.CALENDAR_UNKNOWN, f"{scan.unknown.explanation}: not disconnecting"))
        has_opportunity = False

    if not blockers:
        reasons = [exhausted_reason]
        if config.notice_period > dt.timedelta(0):
            reasons.append(Reason(ReasonCode.NOTICE_PERIOD_ELAPSED, f"notice period ended at {deadline.isoformat()}"))
        reasons.append(
            Reason(
                ReasonCode.OUTSIDE_FRIENDLY_WINDOWS,
                f"{evidence.local_now.isoformat()} is outside every friendly-credit window",
            )
        )
        if snapshot.pending_command is PendingCommand.RECONNECT:
            reasons.append(Reason(ReasonCode.SUPERSEDES_PENDING_RECONNECT, "a pending reconnect is superseded"))
        return Disconnect(tuple(reasons), evidence)

    until: dt.datetime | None = None
    if has_opportunity:
        start = max(now, deadline, key=_utc)
        found = _next_opportunity(start, config.friendly, evidence.zone, calendar)
        if isinstance(found, UnknownDay):
            blockers.append(Reason(ReasonCode.CALENDAR_UNKNOWN, f"next opportunity not known: {found.explanation}"))
        elif found is None:
            blockers.append(
                Reason(ReasonCode.NEXT_OPPORTUNITY_UNKNOWN, "no instant outside the friendly windows was found")
            )
        else:
            until = found
    return DisconnectDeferred(until, (exhausted_reason, *blockers), evidence)
