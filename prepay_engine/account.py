"""One prepaid customer account: usage charging, payments and the disconnect policy tied together, without I/O.

`PrepaidAccount` is a frozen value: the account's consumption curve (`UsageState`, meters over time), tariff,
payment terms, policy configuration and flags, the notices of its current low-balance episode, and the supply
state and pending relay command as the policy sees them. Each operation takes the utility's `Ledger` and `now`
and returns a typed result: what happened (charges, postings, payment outcome), the policy `Decision` taken
right after it, the requests the edge must write to its outboxes in the same transaction, and the new account
value. A request that changes nothing returns `Refused` with the unchanged account.

Decisions:

* **One ledger for the utility.** Revenue and each channel's cash in transit are shared house accounts, and a
  channel statement is reconciled against one cash-in-transit account for all customers, so accounts do not
  get a ledger of their own. Every operation takes the ledger as an argument and changes it all-or-nothing
  (usage postings go in batches of `MAX_BATCH_POSTINGS`, so they are validated against the ledger first). The
  customer id in the ledger is the account id. Balance changes made elsewhere (refunds, arrears conversions)
  are seen at the next decision; to end an episode on time, follow them with `decide`.
* **One consumption curve per account.** Tier bands count the customer's consumption, so an account has one
  `UsageState`; meters follow each other on it through `MeterReplacement` events (`meter_ids`, `serves`). A
  customer with two supply points has two accounts.
* **Usage postings** have the charge id as posting id and the interval end as time, so a replay of the same
  readings from an older account value (a retried transaction) maps onto the postings already made. A charge
  of 0 fen (no energy, or residue carried to a later charge) makes no posting: the ledger refuses empty amounts.
* **Notices belong to an episode.** The episode counter goes up when a decision opens a low-balance episode;
  notices are kept while it is open and forgotten when a decision finds it over (the policy's contract).
  A notice counts as sent when its request is made (`sent_at` is the decision's `now`).
* **Request ids are deterministic**: ``relay:<account>:<sequence>:<action>`` with the account's command
  sequence, ``notice:<account>:<episode>:warning:<threshold fen>`` or ``...:zero_balance``. A replay from an
  older account value makes the same ids, so the outbox can drop it by id.
* **The relay follows reality.** Every new relay command becomes the pending one (superseding the previous,
  always of the other action). An outcome clears the pending command if it is that command; a confirmed relay
  state updates the supply unless an outcome of a later command was already applied (a late report of an
  older command says nothing about now). A failed command leaves the supply as it was; the decision that
  follows asks again if the policy still wants the action.
"""

from __future__ import annotations

import functools
import itertools
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

from prepay_engine import payments
from prepay_engine.calendar import ChinaMainlandCalendar, WorkdayCalendar
from prepay_engine.ledger import (
    CUSTOMER_ID_PATTERN,
    MAX_BATCH_POSTINGS,
    REVENUE_ACCOUNT_ID,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Posting,
    Rejected,
    customer_accounts,
    differing_fields,
    emergency_credit_account_id,
    prepaid_account_id,
    usage_posting,
)
from prepay_engine.payments import (
    AlreadyApplied,
    AlreadyReversed,
    AlreadyToppedUp,
    Applied,
    PaymentTerms,
    Reversed,
    ToppedUp,
    TopUp,
    TopUpReversal,
    top_up_posting_id,
)
from prepay_engine.policy import (
    AccountSnapshot,
    Decision,
    Disconnect,
    DisconnectDeferred,
    Evidence,
    PendingCommand,
    PolicyConfig,
    Reason,
    Reconnect,
    SendWarning,
    SendZeroBalanceNotice,
    SentNotice,
    SentWarning,
    SentZeroBalanceNotice,
    SupplyState,
)
from prepay_engine.policy import decide as decide_policy
from prepay_engine.tariffs import SHANGHAI, Tariff
from prepay_engine.usage import (
    IntervalCharge,
    MeterRegister,
    UsageEvent,
    UsageResult,
    UsageState,
    charge_usage,
    interval_stamp,
    open_usage,
)

__all__ = [
    "CHINA_MAINLAND",
    "AccountReason",
    "CommandOutcomeRecorded",
    "CommandRequest",
    "Decided",
    "EmergencyCreditLent",
    "NotificationKind",
    "NotificationRequest",
    "PrepaidAccount",
    "ReadingsApplied",
    "Refused",
    "RelayAction",
    "RelayCommand",
    "RelayOutcome",
    "ReversalApplied",
    "Step",
    "TopUpApplied",
    "command_request_id",
    "is_quiet",
    "notification_request_id",
    "open_account",
    "usage_day_postings",
    "usage_postings",
    "usage_summary_posting",
]

CHINA_MAINLAND: Final = ChinaMainlandCalendar()


class AccountReason(StrEnum):
    """Why the account refused a request before it reached the ledger."""

    INVALID_ACCOUNT_ID = "invalid_account_id"
    LEDGER_NOT_READY = "ledger_not_ready"
    WRONG_ACCOUNT = "wrong_account"
    UNKNOWN_COMMAND = "unknown_command"


class RelayAction(StrEnum):
    """What a relay command asks the meter to do."""

    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


class RelayOutcome(StrEnum):
    """How a relay command ended, as the dispatcher reports it after reading the relay back."""

    CONFIRMED_OPEN = "confirmed_open"
    CONFIRMED_CLOSED = "confirmed_closed"
    CONFIRMED_RECONNECT_ALLOWED = "confirmed_reconnect_allowed"  # 合闸允许: armed, the customer closes it on site
    FAILED = "failed"  # failed, expired or superseded: the command did not move the relay


_OBSERVED_SUPPLY: Final[Mapping[RelayOutcome, SupplyState]] = MappingProxyType(
    {
        RelayOutcome.CONFIRMED_OPEN: SupplyState.DISCONNECTED,
        RelayOutcome.CONFIRMED_CLOSED: SupplyState.CONNECTED,
        RelayOutcome.CONFIRMED_RECONNECT_ALLOWED: SupplyState.RECONNECT_ALLOWED,
    }
)
_PENDING: Final[Mapping[RelayAction, PendingCommand]] = MappingProxyType(
    {RelayAction.DISCONNECT: PendingCommand.DISCONNECT, RelayAction.RECONNECT: PendingCommand.RECONNECT}
)


class NotificationKind(StrEnum):
    """What a customer notification says."""

    LOW_BALANCE_WARNING = "low_balance_warning"
    ZERO_BALANCE = "zero_balance"


def command_request_id(account_id: str, sequence: int, action: RelayAction) -> str:
    """Id of the account's `sequence`-th relay command."""
    return f"relay:{account_id}:{sequence}:{action.value}"


def notification_request_id(account_id: str, episode: int, threshold_fen: int | None) -> str:
    """Id of a notice of one episode: a warning for `threshold_fen`, or the zero-balance notice for None."""
    suffix = "zero_balance" if threshold_fen is None else f"warning:{threshold_fen}"
    return f"notice:{account_id}:{episode}:{suffix}"


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


# --- requests for the outboxes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """A relay command as the account tracks it; the dispatcher reports outcomes against it."""

    request_id: str
    account_id: str
    meter_id: str
    sequence: int
    action: RelayAction

    def __post_init__(self) -> None:
        assert self.sequence >= 1, self.sequence
        assert self.request_id == command_request_id(self.account_id, self.sequence, self.action), self.request_id


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A disconnect or reconnect to send, with the decision's reasons and evidence for the audit trail."""

    command: RelayCommand
    requested_at: datetime
    supersedes: RelayCommand | None
    reasons: tuple[Reason, ...]
    evidence: Evidence

    def __post_init__(self) -> None:
        assert self.reasons, "a relay command always carries its reasons"
        assert self.supersedes is None or self.supersedes.action is not self.command.action
        assert self.supersedes is None or self.supersedes.sequence < self.command.sequence

    @property
    def request_id(self) -> str:
        """The command's request id (the outbox key)."""
        return self.command.request_id

    @property
    def action(self) -> RelayAction:
        """Disconnect or reconnect."""
        return self.command.action


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """A low-balance warning or zero-balance notice to send to the customer."""

    request_id: str
    account_id: str
    kind: NotificationKind
    episode: int
    threshold_fen: int | None  # the warning threshold; None for the zero-balance notice
    balance_fen: int
    credit_fen: int
    requested_at: datetime
    reasons: tuple[Reason, ...]
    evidence: Evidence

    def __post_init__(self) -> None:
        assert (self.kind is NotificationKind.ZERO_BALANCE) == (self.threshold_fen is None)
        assert self.request_id == notification_request_id(self.account_id, self.episode, self.threshold_fen)
        assert self.reasons, "a notification always carries its reasons"


# --- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """An operation was applied: the account after it, the decision taken then, and the requests it made."""

    account: PrepaidAccount
    decision: Decision
    commands: tuple[CommandRequest, ...]
    notifications: tuple[NotificationRequest, ...]

    @property
    def wake_at(self) -> datetime | None:
        """When a deferred disconnect may next be allowed: call `decide` then (None: nothing to wait for)."""
        deferred = self.decision.of(DisconnectDeferred)
        return deferred[0].until if deferred else None


@dataclass(frozen=True, slots=True)
class ReadingsApplied(Step):
    """Readings were charged: the usage result, the usage postings made now and those already in the ledger."""

    usage: UsageResult
    posted: tuple[Posting, ...]
    replayed: tuple[Posting, ...]


@dataclass(frozen=True, slots=True)
class TopUpApplied(Step):
    """A top-up was credited, or was a duplicate delivery."""

    payment: ToppedUp | AlreadyToppedUp


@dataclass(frozen=True, slots=True)
class ReversalApplied(Step):
    """A top-up was reversed, or the reversal was a duplicate."""

    payment: Reversed | AlreadyReversed


@dataclass(frozen=True, slots=True)
class EmergencyCreditLent(Step):
    """Emergency credit was lent, or the request was a duplicate."""

    payment: Applied | AlreadyApplied


@dataclass(frozen=True, slots=True)
class CommandOutcomeRecorded(Step):
    """A relay command's outcome was recorded; whether it updated the supply state and cleared the pending command."""

    command: RelayCommand
    outcome: RelayOutcome
    supply_updated: bool
    pending_cleared: bool


@dataclass(frozen=True, slots=True)
class Decided(Step):
    """The policy was applied again (a deferred disconnect's time came, or a flag changed)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing changed, in the account or the ledger; `problem` says why."""

    account: PrepaidAccount
    problem: Conflict | Rejected


# --- the aggregate ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepaidAccount:
    """The state of one prepaid account; its money lives in the ledger under the customer id `account_id`."""

    account_id: str
    tariff: Tariff
    terms: PaymentTerms
    policy: PolicyConfig
    usage: UsageState
    protected: bool = False
    keep_supply: bool = False
    supply: SupplyState = SupplyState.CONNECTED
    pending: RelayCommand | None = None
    commands_requested: int = 0
    last_observed_sequence: int = 0  # sequence of the command whose confirmed relay state is the supply state
    notices: tuple[SentNotice, ...] = ()
    episode: int = 0  # low-balance episodes opened so far; the current one while in_episode
    in_episode: bool = False
    zone: ZoneInfo = SHANGHAI
    calendar: WorkdayCalendar = field(default=CHINA_MAINLAND, compare=False, repr=False)

    def __post_init__(self) -> None:
        assert CUSTOMER_ID_PATTERN.fullmatch(self.account_id), self.account_id
        assert 0 <= self.last_observed_sequence <= self.commands_requested
        if self.pending is not None:
            assert self.pending.account_id == self.account_id
            assert self.pending.sequence == self.commands_requested, "the pending command is the latest one"
        assert self.in_episode or not self.notices, "notices are kept only while their episode is open"
        assert self.episode >= (1 if self.in_episode else 0)
        zero = [n for n in self.notices if isinstance(n, SentZeroBalanceNotice)]
        warned = [n.threshold_fen for n in self.notices if isinstance(n, SentWarning)]
        assert len(zero) <= 1, "one zero-balance notice per episode"
        assert len(set(warned)) == len(warned), "one warning per threshold per episode"

    # ------------------------------------------------------------------ views

    @property
    def meter_in_service(self) -> str:
        """The meter on the account as far as known: the newest announced replacement's, else the current one."""
        if self.usage.pending_replacements:
            return self.usage.pending_replacements[-1].new_meter.meter_id
        return self.usage.meter.meter_id

    @property
    def meter_ids(self) -> tuple[str, ...]:
        """Every meter of the account, oldest first (replaced, in service, announced)."""
        ids = [r.old_meter_id for r in self.usage.replacements]
        ids.append(self.usage.meter.meter_id)
        ids.extend(r.new_meter.meter_id for r in self.usage.pending_replacements)
        return tuple(dict.fromkeys(ids))

    def serves(self, meter_id: str) -> bool:
        """True if readings of `meter_id` belong to this account."""
        return meter_id in self.meter_ids

    def snapshot(self, ledger: Ledger) -> AccountSnapshot:
        """The account as the policy sees it, with its balances from the ledger."""
        return self.snapshot_at(
            ledger.balance_fen(prepaid_account_id(self.account_id)),
            ledger.balance_fen(emergency_credit_account_id(self.account_id)),
        )

    def snapshot_at(self, balance_fen: int, emergency_credit_outstanding_fen: int) -> AccountSnapshot:
        """The account as the policy sees it, given its prepaid balance and outstanding emergency credit."""
        outstanding = emergency_credit_outstanding_fen
        # the policy counts only what may still be lent; lending is refused while any is outstanding
        available = self.terms.emergency_credit_fen if outstanding == 0 else 0
        return AccountSnapshot(
            account_id=self.account_id,
            balance_fen=balance_fen,
            emergency_credit_available_fen=available,
            emergency_credit_outstanding_fen=outstanding,
            protected=self.protected,
            keep_supply=self.keep_supply,
            supply=self.supply,
            pending_command=None if self.pending is None else _PENDING[self.pending.action],
        )

    # ------------------------------------------------------------------ operations

    def apply_readings(
        self, ledger: Ledger, events: Iterable[UsageEvent], complete_until: datetime, now: datetime
    ) -> ReadingsApplied | Refused:
        """Charge readings and replacements (any order, duplicates allowed), post the charges, then decide.

        Raises `TariffNotInForceError` (a configuration error) with nothing changed.
        """
        _require_aware(now, "now")
        usage = charge_usage(self.usage, events, self.tariff, complete_until=complete_until)
        postings = usage_postings(self.account_id, usage.charges)
        problem: Conflict | Rejected | None = self._ledger_problem(ledger)
        fresh: list[Posting] = []
        replayed: list[Posting] = []
        for posting in postings:
            stored = ledger.posting(posting.posting_id)
            if stored is None:
                fresh.append(posting)
            elif stored == posting:
                replayed.append(posting)
            else:
                problem = problem or Conflict(posting.posting_id, differing_fields(stored, posting))
            if posting.amount_fen > ledger.max_posting_fen:
                problem = problem or Rejected(
                    LedgerReason.AMOUNT_TOO_LARGE,
                    f"{posting.posting_id}: {posting.amount_fen} fen > limit {ledger.max_posting_fen}",
                )
        if problem is not None:
            return Refused(self, problem)
        # validated above, so no batch can be refused once the first one is in
        for start in range(0, len(fresh), MAX_BATCH_POSTINGS):
            outcome = ledger.post_all(fresh[start : start + MAX_BATCH_POSTINGS])
            assert isinstance(outcome, Posted), outcome
        account, decision, commands, notifications = replace(self, usage=usage.state)._conclude(ledger, now)
        return ReadingsApplied(account, decision, commands, notifications, usage, tuple(fresh), tuple(replayed))

    def apply_top_up(self, ledger: Ledger, request: TopUp, now: datetime) -> TopUpApplied | Refused:
        """Credit a channel's top-up once (repaying emergency credit first), then decide."""
        _require_aware(now, "now")
        if request.customer_id != self.account_id:
            return Refused(self, _wrong_account(f"top-up for {request.customer_id!r}"))
        outcome = payments.top_up(ledger, request, self.terms)
        if isinstance(outcome, Conflict | Rejected):
            return Refused(self, outcome)
        account, decision, commands, notifications = self._conclude(ledger, now)
        return TopUpApplied(account, decision, commands, notifications, outcome)

    def apply_reversal(self, ledger: Ledger, request: TopUpReversal, now: datetime) -> ReversalApplied | Refused:
        """Reverse one of this account's top-ups once (the balance may go negative), then decide."""
        _require_aware(now, "now")
        original = ledger.posting(top_up_posting_id(request.channel, request.channel_txn_id))
        if original is not None and original.credit_account_id != prepaid_account_id(self.account_id):
            return Refused(self, _wrong_account(f"top-up {request.channel}:{request.channel_txn_id} is another's"))
        outcome = payments.reverse_top_up(ledger, request)
        if isinstance(outcome, Conflict | Rejected):
            return Refused(self, outcome)
        account, decision, commands, notifications = self._conclude(ledger, now)
        return ReversalApplied(account, decision, commands, notifications, outcome)

    def lend_emergency_credit(
        self, ledger: Ledger, lend_id: str, requested_at: datetime, now: datetime
    ) -> EmergencyCreditLent | Refused:
        """Lend the terms' emergency credit once for `lend_id` (none may be outstanding), then decide."""
        _require_aware(now, "now")
        outcome = payments.lend_emergency_credit(ledger, self.account_id, lend_id, self.terms, requested_at)
        if isinstance(outcome, Conflict | Rejected):
            return Refused(self, outcome)
        account, decision, commands, notifications = self._conclude(ledger, now)
        return EmergencyCreditLent(account, decision, commands, notifications, outcome)

    def record_command_outcome(
        self, ledger: Ledger, command: RelayCommand, outcome: RelayOutcome, now: datetime
    ) -> CommandOutcomeRecorded | Refused:
        """Record how a relay command ended, so the supply state follows the relay; then decide."""
        _require_aware(now, "now")
        observed = self.with_command_outcome(command, outcome)
        if isinstance(observed, Rejected):
            return Refused(self, observed)
        after, supply_updated, pending_cleared = observed
        account, decision, commands, notifications = after._conclude(ledger, now)
        return CommandOutcomeRecorded(
            account, decision, commands, notifications, command, outcome, supply_updated, pending_cleared
        )

    def with_command_outcome(
        self, command: RelayCommand, outcome: RelayOutcome
    ) -> tuple[PrepaidAccount, bool, bool] | Rejected:
        """The account after a command's outcome (no decision yet), whether the supply moved and the pending cleared."""
        if command.account_id != self.account_id or not 1 <= command.sequence <= self.commands_requested:
            return Rejected(AccountReason.UNKNOWN_COMMAND, f"{command.request_id} is not a command of this account")
        observed = _OBSERVED_SUPPLY.get(outcome)
        supply_updated = observed is not None and command.sequence >= self.last_observed_sequence
        pending_cleared = self.pending == command
        after = replace(
            self,
            supply=observed if observed is not None and supply_updated else self.supply,
            last_observed_sequence=command.sequence if supply_updated else self.last_observed_sequence,
            pending=None if pending_cleared else self.pending,
        )
        return after, supply_updated, pending_cleared

    def set_flags(self, ledger: Ledger, *, protected: bool, keep_supply: bool, now: datetime) -> Decided:
        """Set the protected-customer and keep-supply (保电) flags, then decide."""
        _require_aware(now, "now")
        after = replace(self, protected=protected, keep_supply=keep_supply)
        account, decision, commands, notifications = after._conclude(ledger, now)
        return Decided(account, decision, commands, notifications)

    def decide(self, ledger: Ledger, now: datetime) -> Decided:
        """Apply the policy again at `now` (for instance at `wake_at`, when a friendly window ends)."""
        _require_aware(now, "now")
        account, decision, commands, notifications = self._conclude(ledger, now)
        return Decided(account, decision, commands, notifications)

    def is_quiet_at(self, balance_fen: int) -> bool:
        """True when deciding now could change nothing: no notification, no relay command, the same account.

        That is an account above every warning (so outside any low-balance episode, its credit not exhausted),
        with no notice of an episode to forget, no command pending and its supply connected: the policy would
        answer NoAction. A store may skip the decision of such an account after charging it.
        """
        return is_quiet(
            self.policy,
            balance_fen,
            in_episode=self.in_episode,
            has_notices=bool(self.notices),
            has_pending=self.pending is not None,
            supply=self.supply,
        )

    def decide_at(self, balance_fen: int, emergency_credit_outstanding_fen: int, now: datetime) -> Decided:
        """Apply the policy at `now` to balances read elsewhere (a store that holds the ledger)."""
        _require_aware(now, "now")
        snapshot = self.snapshot_at(balance_fen, emergency_credit_outstanding_fen)
        account, decision, commands, notifications = self._conclude_snapshot(snapshot, now)
        return Decided(account, decision, commands, notifications)

    # ------------------------------------------------------------------ internals

    def _ledger_problem(self, ledger: Ledger) -> Rejected | None:
        needed = (REVENUE_ACCOUNT_ID, prepaid_account_id(self.account_id))
        missing = [a for a in needed if ledger.account(a) is None]
        if missing:
            return Rejected(AccountReason.LEDGER_NOT_READY, f"ledger accounts not open: {', '.join(missing)}")
        return None

    def _conclude(
        self, ledger: Ledger, now: datetime
    ) -> tuple[PrepaidAccount, Decision, tuple[CommandRequest, ...], tuple[NotificationRequest, ...]]:
        return self._conclude_snapshot(self.snapshot(ledger), now)

    def _conclude_snapshot(
        self, snapshot: AccountSnapshot, now: datetime
    ) -> tuple[PrepaidAccount, Decision, tuple[CommandRequest, ...], tuple[NotificationRequest, ...]]:
        decision = decide_policy(self.policy, snapshot, self.notices, now, self.zone, self.calendar)
        active = decision.episode_active
        episode = self.episode + 1 if active and not self.in_episode else self.episode
        notices = self.notices if active else ()
        pending = self.pending
        sequence = self.commands_requested
        commands: list[CommandRequest] = []
        notifications: list[NotificationRequest] = []
        for action in decision.actions:
            if isinstance(action, SendWarning | SendZeroBalanceNotice):
                assert active, "notices belong to an open episode"
                threshold = action.threshold_fen if isinstance(action, SendWarning) else None
                sent: SentNotice = SentZeroBalanceNotice(now) if threshold is None else SentWarning(threshold, now)
                notices = (*notices, sent)
                notice_kind = (
                    NotificationKind.ZERO_BALANCE if threshold is None else NotificationKind.LOW_BALANCE_WARNING
                )
                notifications.append(
                    NotificationRequest(
                        request_id=notification_request_id(self.account_id, episode, threshold),
                        account_id=self.account_id,
                        kind=notice_kind,
                        episode=episode,
                        threshold_fen=threshold,
                        balance_fen=snapshot.balance_fen,
                        credit_fen=snapshot.credit_fen,
                        requested_at=now,
                        reasons=action.reasons,
                        evidence=action.evidence,
                    )
                )
            elif isinstance(action, Disconnect | Reconnect):
                sequence += 1
                kind = RelayAction.DISCONNECT if isinstance(action, Disconnect) else RelayAction.RECONNECT
                command = RelayCommand(
                    command_request_id(self.account_id, sequence, kind),
                    self.account_id,
                    self.meter_in_service,
                    sequence,
                    kind,
                )
                commands.append(CommandRequest(command, now, pending, action.reasons, action.evidence))
                pending = command
        after = replace(
            self,
            notices=notices,
            episode=episode,
            in_episode=active,
            pending=pending,
            commands_requested=sequence,
        )
        assert len(commands) <= 1, "at most one relay command per decision"
        if commands and commands[0].action is RelayAction.DISCONNECT:
            assert not after.protected, "protected customers are never disconnected"
            assert not after.keep_supply, "keep-supply forbids disconnects"
        return after, decision, tuple(commands), tuple(notifications)


def is_quiet(
    policy: PolicyConfig,
    balance_fen: int,
    *,
    in_episode: bool,
    has_notices: bool,
    has_pending: bool,
    supply: SupplyState,
) -> bool:
    """`PrepaidAccount.is_quiet_at` from the parts it looks at (a store can tell without building the account)."""
    return (
        balance_fen > policy.episode_ceiling_fen
        and not in_episode
        and not has_notices
        and not has_pending
        and supply is SupplyState.CONNECTED
    )


def usage_postings(account_id: str, charges: Iterable[IntervalCharge]) -> tuple[Posting, ...]:
    """The ledger postings of usage charges: one per charge of at least 1 fen, id = charge id, time = interval end."""
    return tuple(
        usage_posting(account_id, c.charge_id, c.amount_fen, c.interval_end, f"{c.meter_id} {c.energy_wh} Wh")
        for c in charges
        if c.amount_fen > 0
    )


def usage_summary_posting(account_id: str, charges: Sequence[IntervalCharge]) -> Posting | None:
    """One posting for consecutive usage charges of an account (None if they come to 0 fen).

    A store that keeps the charges themselves (one row per interval, keyed by charge id) posts their sum: the id
    names the account and the span, which consecutive batches never share, and the time is the span's end.
    """
    if not charges:
        return None
    for before, after in itertools.pairwise(charges):
        assert after.interval_start == before.interval_end, "a summary covers consecutive intervals"
    amount_fen = sum(c.amount_fen for c in charges)
    if amount_fen == 0:
        return None
    first, last = charges[0], charges[-1]
    posting_id = f"usage:{account_id}:{interval_stamp(first.interval_start)}-{interval_stamp(last.interval_end)}"
    energy_wh = sum(c.energy_wh for c in charges)
    return usage_posting(
        account_id, posting_id, amount_fen, last.interval_end, f"{len(charges)} intervals, {energy_wh} Wh"
    )


def usage_day_postings(
    account_id: str, charges: Sequence[IntervalCharge], zone: ZoneInfo
) -> tuple[tuple[Posting | None, tuple[IntervalCharge, ...]], ...]:
    """Summary postings of consecutive usage charges, one per local day of the account, each with its charges.

    A posting never straddles a local midnight, so the balance at the end of a day (postings at or before it)
    holds exactly that day's usage.
    """
    days: list[tuple[Posting | None, tuple[IntervalCharge, ...]]] = []
    first = 0
    while first < len(charges):
        # the charges are in time order: the day's run ends at the first interval from the next local midnight
        after = bisect_left(
            charges, _next_local_midnight(charges[first].interval_start, zone), lo=first, key=_interval_start
        )
        group = tuple(charges[first:after])
        days.append((usage_summary_posting(account_id, group), group))
        first = after
    return tuple(days)


@functools.lru_cache(maxsize=8192)
def _next_local_midnight(instant: datetime, zone: ZoneInfo) -> datetime:
    # every account charges the same grid: each interval start is converted once
    local_day = instant.astimezone(zone).date()
    return datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=zone)


def _interval_start(charge: IntervalCharge) -> datetime:
    return charge.interval_start


def _wrong_account(detail: str) -> Rejected:
    return Rejected(AccountReason.WRONG_ACCOUNT, f"{detail}: not this account")


def open_account(
    ledger: Ledger,
    account_id: str,
    *,
    meter: MeterRegister,
    opened_at: datetime,
    opening_register_wh: int,
    tariff: Tariff,
    terms: PaymentTerms,
    policy: PolicyConfig,
    cycle_usage_wh: int = 0,
    protected: bool = False,
    keep_supply: bool = False,
    supply: SupplyState = SupplyState.CONNECTED,
    zone: ZoneInfo = SHANGHAI,
    calendar: WorkdayCalendar = CHINA_MAINLAND,
) -> PrepaidAccount | Conflict | Rejected:
    """Open the customer's ledger accounts (idempotent) and the account, charging from the opening reading.

    The utility's house accounts (revenue, channels' cash in transit) must already be open. The prepaid
    balance's floor is the policy's credit limit (minus its disconnect threshold).
    """
    if not CUSTOMER_ID_PATTERN.fullmatch(account_id):
        return Rejected(AccountReason.INVALID_ACCOUNT_ID, f"account id {account_id!r} is not a ledger customer id")
    if ledger.account(REVENUE_ACCOUNT_ID) is None:
        return Rejected(AccountReason.LEDGER_NOT_READY, f"the house account {REVENUE_ACCOUNT_ID} is not open")
    opened = ledger.open_accounts(customer_accounts(account_id, credit_limit_fen=-policy.disconnect_threshold_fen))
    if opened is not None:
        return opened
    return PrepaidAccount(
        account_id=account_id,
        tariff=tariff,
        terms=terms,
        policy=policy,
        usage=open_usage(meter, opened_at, opening_register_wh, cycle_usage_wh=cycle_usage_wh),
        protected=protected,
        keep_supply=keep_supply,
        supply=supply,
        zone=zone,
        calendar=calendar,
    )
