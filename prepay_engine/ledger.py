"""Double-entry ledger modelled on TigerBeetle: client-chosen posting ids, idempotent retries, limits on everything.

Chart of accounts. A balance is reported on the account's *normal side* (debits minus credits for a debit-normal
account, credits minus debits for a credit-normal one), so it is usually positive. Per account: id; normal side
(the side that increases it); what raises and lowers it; floor (lowest balance allowed).

* customer prepaid balance (liability: energy paid for, not yet used) — ``customer:<customer>:prepaid``; credit;
  raised by top-ups and emergency credit lent, lowered by usage, repayments, debt recovery, refunds;
  floor −credit_limit_fen, *soft* (see overdraw).
* emergency credit receivable (asset: lent to the customer) — ``customer:<customer>:emergency_credit``; debit;
  raised by lending, lowered by repayment; floor 0, hard.
* debt / arrears receivable (asset) — ``customer:<customer>:debt``; debit; raised when arrears are converted
  into debt, lowered by debt recovery; floor 0, hard.
* revenue, electricity sales (income) — ``revenue:electricity``; credit; raised by usage; no floor.
* cash in transit, one per payment channel (asset: collected by the channel, not yet settled to our bank) —
  ``cash_in_transit:<channel>``; debit; raised by top-ups, lowered by reversals and refund payouts; no floor.
* refunds payable (liability: refunds granted, not yet paid out) — ``refunds_payable``; credit; raised by a
  refund, lowered by its payout through a channel; floor 0, hard.

Posting kinds and the accounts they join (debit → credit): usage prepaid → revenue; top_up cash → prepaid;
emergency_credit_lend receivable → prepaid; emergency_credit_repay prepaid → receivable; debt_recovery
prepaid → debt; refund prepaid → refunds payable, or refunds payable → cash (the payout); reversal mirrors the
posting it reverses (same amount, accounts swapped, each posting reversed at most once, never a reversal);
adjustment joins any two accounts (operator corrections, arrears converted into debt).

Overdraw: a posting may take an account below its floor only when it is flagged ``overdraw`` and that account is
its *debit* account. Only these kinds may carry the flag:

* usage — the energy is already consumed; refusing the charge would not un-consume it, only lose it;
* reversal — the channel has already taken the money back; the ledger must record what happened;
* emergency_credit_repay and debt_recovery — only inside a batch whose earlier top_up credits the same account
  at least as much: they carve the top-up up, so the batch as a whole never lowers the balance.

An account lowered by a credit (the receivables) is never let below its floor: a repayment can't exceed what is
owed. Refunds and payouts never overdraw: refunds payable can't pay out more than was granted.

Ownership: a `Ledger` is mutable and owned by one caller (one unit of work, one thread). Every operation either
applies completely or leaves the ledger unchanged; nothing that was posted is ever changed or removed.

The rules themselves are pure functions (`account_problem`, `batch_problem`, `posting_problem`, `existing_outcome`,
`check_batch`) that `Ledger` and `headend.money.ledger_store` both call, so the two stores can't drift apart.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

MAX_BIGINT: Final = 2**63 - 1
DEFAULT_MAX_POSTING_FEN: Final = 100_000_000
MAX_BATCH_POSTINGS: Final = 16
MAX_REFERENCE_CHARS: Final = 256
# printable ASCII without spaces: ids end up in database keys, log lines and channel statements
ID_PATTERN: Final = re.compile(r"[\x21-\x7e]{1,160}")
CUSTOMER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
CHANNEL_PATTERN: Final = re.compile(r"[a-z0-9_]{1,32}")


class AccountKind(StrEnum):
    """What an account records; fixes its normal side."""

    CUSTOMER_PREPAID = "customer_prepaid"
    EMERGENCY_CREDIT_RECEIVABLE = "emergency_credit_receivable"
    DEBT_RECEIVABLE = "debt_receivable"
    REVENUE = "revenue"
    CASH_IN_TRANSIT = "cash_in_transit"
    REFUNDS_PAYABLE = "refunds_payable"


class Side(StrEnum):
    """Side of a posting or normal side of an account."""

    DEBIT = "debit"
    CREDIT = "credit"


NORMAL_SIDE: Final[Mapping[AccountKind, Side]] = MappingProxyType(
    {
        AccountKind.CUSTOMER_PREPAID: Side.CREDIT,
        AccountKind.EMERGENCY_CREDIT_RECEIVABLE: Side.DEBIT,
        AccountKind.DEBT_RECEIVABLE: Side.DEBIT,
        AccountKind.REVENUE: Side.CREDIT,
        AccountKind.CASH_IN_TRANSIT: Side.DEBIT,
        AccountKind.REFUNDS_PAYABLE: Side.CREDIT,
    }
)


class PostingKind(StrEnum):
    """Business meaning of a posting."""

    USAGE = "usage"
    TOP_UP = "top_up"
    REVERSAL = "reversal"
    REFUND = "refund"
    EMERGENCY_CREDIT_LEND = "emergency_credit_lend"
    EMERGENCY_CREDIT_REPAY = "emergency_credit_repay"
    DEBT_RECOVERY = "debt_recovery"
    ADJUSTMENT = "adjustment"


_K = AccountKind
# (debit kind, credit kind) pairs a posting kind may join; reversal and adjustment are checked otherwise
POSTING_SHAPES: Final[Mapping[PostingKind, frozenset[tuple[AccountKind, AccountKind]]]] = MappingProxyType(
    {
        PostingKind.USAGE: frozenset({(_K.CUSTOMER_PREPAID, _K.REVENUE)}),
        PostingKind.TOP_UP: frozenset({(_K.CASH_IN_TRANSIT, _K.CUSTOMER_PREPAID)}),
        PostingKind.EMERGENCY_CREDIT_LEND: frozenset({(_K.EMERGENCY_CREDIT_RECEIVABLE, _K.CUSTOMER_PREPAID)}),
        PostingKind.EMERGENCY_CREDIT_REPAY: frozenset({(_K.CUSTOMER_PREPAID, _K.EMERGENCY_CREDIT_RECEIVABLE)}),
        PostingKind.DEBT_RECOVERY: frozenset({(_K.CUSTOMER_PREPAID, _K.DEBT_RECEIVABLE)}),
        PostingKind.REFUND: frozenset(
            {(_K.CUSTOMER_PREPAID, _K.REFUNDS_PAYABLE), (_K.REFUNDS_PAYABLE, _K.CASH_IN_TRANSIT)}
        ),
    }
)
OVERDRAW_KINDS: Final = frozenset(
    {PostingKind.USAGE, PostingKind.REVERSAL, PostingKind.EMERGENCY_CREDIT_REPAY, PostingKind.DEBT_RECOVERY}
)
CARVE_OUT_KINDS: Final = frozenset({PostingKind.EMERGENCY_CREDIT_REPAY, PostingKind.DEBT_RECOVERY})


class LedgerReason(StrEnum):
    """Why the ledger rejected a request."""

    INVALID_ID = "invalid_id"
    INVALID_REFERENCE = "invalid_reference"
    INVALID_AMOUNT = "invalid_amount"
    AMOUNT_TOO_LARGE = "amount_too_large"
    NAIVE_TIME = "naive_time"
    SAME_ACCOUNT = "same_account"
    UNKNOWN_ACCOUNT = "unknown_account"
    WRONG_ACCOUNTS_FOR_KIND = "wrong_accounts_for_kind"
    REVERSES_NOT_ALLOWED = "reverses_not_allowed"
    UNKNOWN_POSTING = "unknown_posting"
    REVERSAL_MISMATCH = "reversal_mismatch"
    ALREADY_REVERSED = "already_reversed"
    OVERDRAW_NOT_ALLOWED = "overdraw_not_allowed"
    BELOW_FLOOR = "below_floor"
    OVERFLOW = "overflow"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    DUPLICATE_IN_BATCH = "duplicate_in_batch"
    PARTIALLY_POSTED = "partially_posted"
    INVALID_FLOOR = "invalid_floor"


@dataclass(frozen=True, slots=True)
class Account:
    """An account of the chart: id, kind, and the lowest normal-side balance allowed (None: unlimited)."""

    account_id: str
    kind: AccountKind
    floor_fen: int | None = None

    @property
    def normal_side(self) -> Side:
        """The side that increases this account's balance."""
        return NORMAL_SIDE[self.kind]


@dataclass(frozen=True, slots=True)
class Posting:
    """A transfer of amount_fen from debit to credit account; its client-chosen id makes retries idempotent."""

    posting_id: str
    debit_account_id: str
    credit_account_id: str
    amount_fen: int
    kind: PostingKind
    at: datetime
    reference: str = ""
    reverses: str | None = None
    overdraw: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of an account's history: the posting, its signed effect and the balance after it."""

    seq: int
    posting: Posting
    side: Side
    delta_fen: int
    balance_after_fen: int


@dataclass(frozen=True, slots=True)
class Posted:
    """The batch was applied; balances_fen holds each touched account's balance after it."""

    postings: tuple[Posting, ...]
    balances_fen: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class AlreadyPosted:
    """Every posting of the batch already exists with the same fields; nothing changed."""

    postings: tuple[Posting, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """An id already exists with different fields; nothing changed."""

    posting_id: str
    fields: tuple[str, ...]

    @property
    def reason(self) -> str:
        """One line naming the differing fields."""
        return f"{self.posting_id} already exists with a different {', '.join(self.fields)}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request broke a rule; nothing changed."""

    reason: StrEnum
    detail: str


@dataclass(frozen=True, slots=True)
class AccountOpened:
    """A new account was opened."""

    account: Account


@dataclass(frozen=True, slots=True)
class AccountAlreadyOpen:
    """The same account was already open; nothing changed."""

    account: Account


PostOutcome = Posted | AlreadyPosted | Conflict | Rejected
OpenOutcome = AccountOpened | AccountAlreadyOpen | Conflict | Rejected

REVENUE_ACCOUNT_ID: Final = "revenue:electricity"
REFUNDS_PAYABLE_ACCOUNT_ID: Final = "refunds_payable"


def prepaid_account_id(customer_id: str) -> str:
    """Id of a customer's prepaid balance."""
    return f"customer:{customer_id}:prepaid"


def emergency_credit_account_id(customer_id: str) -> str:
    """Id of a customer's emergency credit receivable."""
    return f"customer:{customer_id}:emergency_credit"


def debt_account_id(customer_id: str) -> str:
    """Id of a customer's debt (arrears) receivable."""
    return f"customer:{customer_id}:debt"


def cash_in_transit_account_id(channel: str) -> str:
    """Id of a payment channel's cash in transit."""
    return f"cash_in_transit:{channel}"


def customer_accounts(customer_id: str, *, credit_limit_fen: int) -> tuple[Account, Account, Account]:
    """The prepaid, emergency credit and debt accounts of one customer."""
    return (
        Account(prepaid_account_id(customer_id), AccountKind.CUSTOMER_PREPAID, -credit_limit_fen),
        Account(emergency_credit_account_id(customer_id), AccountKind.EMERGENCY_CREDIT_RECEIVABLE, 0),
        Account(debt_account_id(customer_id), AccountKind.DEBT_RECEIVABLE, 0),
    )


def house_accounts(channels: Iterable[str]) -> tuple[Account, ...]:
    """Revenue, refunds payable and one cash-in-transit account per channel."""
    return (
        Account(REVENUE_ACCOUNT_ID, AccountKind.REVENUE),
        Account(REFUNDS_PAYABLE_ACCOUNT_ID, AccountKind.REFUNDS_PAYABLE, 0),
        *(Account(cash_in_transit_account_id(c), AccountKind.CASH_IN_TRANSIT) for c in channels),
    )


def usage_posting(customer_id: str, posting_id: str, amount_fen: int, at: datetime, reference: str = "") -> Posting:
    """A usage charge: prepaid balance to revenue, allowed to overdraw."""
    return Posting(
        posting_id,
        prepaid_account_id(customer_id),
        REVENUE_ACCOUNT_ID,
        amount_fen,
        PostingKind.USAGE,
        at,
        reference,
        overdraw=True,
    )


def differing_fields(stored: Posting, requested: Posting) -> tuple[str, ...]:
    """Names of the fields in which two postings differ."""
    return tuple(f.name for f in fields(Posting) if getattr(stored, f.name) != getattr(requested, f.name))


def differing_account_fields(stored: Account, requested: Account) -> tuple[str, ...]:
    """Names of the fields in which two accounts differ."""
    return tuple(f.name for f in fields(Account) if getattr(stored, f.name) != getattr(requested, f.name))


def normal_balance(account: Account, debits_fen: int, credits_fen: int) -> int:
    """An account's balance on its normal side, from its debit and credit totals."""
    return debits_fen - credits_fen if account.normal_side is Side.DEBIT else credits_fen - debits_fen


def account_problem(account: Account, existing: Account | None) -> Conflict | Rejected | None:
    """Why an account can't be opened where `existing` is open under its id; None if it can or already is."""
    if existing is not None:
        if existing == account:
            return None
        return Conflict(account.account_id, differing_account_fields(existing, account))
    if not ID_PATTERN.fullmatch(account.account_id):
        return Rejected(LedgerReason.INVALID_ID, f"account id {account.account_id!r} is not 1..160 printable ASCII")
    # a new account starts at zero, which must satisfy its floor
    if account.floor_fen is not None and not -MAX_BIGINT <= account.floor_fen <= 0:
        return Rejected(LedgerReason.INVALID_FLOOR, f"floor {account.floor_fen} must be in -{MAX_BIGINT}..0")
    return None


def batch_problem(postings: Sequence[Posting]) -> Rejected | None:
    """Why a batch can't be posted as a whole (empty, too large, ids repeating); None if it can."""
    if not postings:
        return Rejected(LedgerReason.EMPTY_BATCH, "a batch needs at least one posting")
    if len(postings) > MAX_BATCH_POSTINGS:
        return Rejected(LedgerReason.BATCH_TOO_LARGE, f"{len(postings)} postings > {MAX_BATCH_POSTINGS}")
    ids = [p.posting_id for p in postings]
    if len(set(ids)) != len(ids):
        return Rejected(LedgerReason.DUPLICATE_IN_BATCH, "posting ids repeat within the batch")
    return None


def posting_problem(p: Posting, accounts: Mapping[str, Account], max_posting_fen: int) -> Rejected | None:
    """Why a posting is invalid by itself, given the open accounts; None if it is valid."""
    if not ID_PATTERN.fullmatch(p.posting_id):
        return Rejected(LedgerReason.INVALID_ID, f"posting id {p.posting_id!r} is not 1..160 printable ASCII")
    if len(p.reference) > MAX_REFERENCE_CHARS:
        return Rejected(LedgerReason.INVALID_REFERENCE, f"reference longer than {MAX_REFERENCE_CHARS} characters")
    # bool is an int subclass; True is never an amount
    if type(p.amount_fen) is not int or p.amount_fen <= 0:
        return Rejected(LedgerReason.INVALID_AMOUNT, f"amount_fen must be a positive integer, got {p.amount_fen!r}")
    if p.amount_fen > max_posting_fen:
        return Rejected(LedgerReason.AMOUNT_TOO_LARGE, f"{p.amount_fen} fen > limit {max_posting_fen}")
    if p.at.utcoffset() is None:
        return Rejected(LedgerReason.NAIVE_TIME, f"{p.posting_id}: time {p.at} has no UTC offset")
    if p.debit_account_id == p.credit_account_id:
        return Rejected(LedgerReason.SAME_ACCOUNT, f"{p.posting_id}: debit and credit are both {p.debit_account_id}")
    debit = accounts.get(p.debit_account_id)
    credit = accounts.get(p.credit_account_id)
    if debit is None or credit is None:
        missing = p.debit_account_id if debit is None else p.credit_account_id
        return Rejected(LedgerReason.UNKNOWN_ACCOUNT, f"{p.posting_id}: no account {missing}")
    if (p.kind is PostingKind.REVERSAL) != (p.reverses is not None):
        return Rejected(LedgerReason.REVERSES_NOT_ALLOWED, f"{p.posting_id}: reverses is set iff kind is reversal")
    shapes = POSTING_SHAPES.get(p.kind)
    if shapes is not None and (debit.kind, credit.kind) not in shapes:
        return Rejected(
            LedgerReason.WRONG_ACCOUNTS_FOR_KIND,
            f"{p.posting_id}: {p.kind} can't debit {debit.kind} and credit {credit.kind}",
        )
    if p.overdraw and p.kind not in OVERDRAW_KINDS:
        return Rejected(LedgerReason.OVERDRAW_NOT_ALLOWED, f"{p.posting_id}: {p.kind} may not overdraw")
    return None


def existing_outcome(
    postings: Sequence[Posting], stored: Mapping[str, Posting]
) -> AlreadyPosted | Conflict | Rejected | None:
    """The answer to a batch some of whose ids are already posted (`stored` by id); None when none of them is."""
    for posting in postings:
        old = stored.get(posting.posting_id)
        if old is not None and old != posting:
            return Conflict(posting.posting_id, differing_fields(old, posting))
    originals = tuple(stored[p.posting_id] for p in postings if p.posting_id in stored)
    if len(originals) == len(postings):
        return AlreadyPosted(originals)
    if originals:
        return Rejected(LedgerReason.PARTIALLY_POSTED, "part of this batch was posted in another batch")
    return None


def reversal_problem(p: Posting, target: Posting | None, *, already_reversed: bool) -> Rejected | None:
    """Why reversal `p` may not reverse `target` (the posting it names, None if there is none); None if it may."""
    if target is None:
        return Rejected(LedgerReason.UNKNOWN_POSTING, f"{p.posting_id}: no posting {p.reverses} to reverse")
    if target.kind is PostingKind.REVERSAL:
        return Rejected(LedgerReason.REVERSAL_MISMATCH, f"{p.posting_id}: a reversal is not reversed")
    if already_reversed:
        return Rejected(LedgerReason.ALREADY_REVERSED, f"{p.posting_id}: {p.reverses} is already reversed")
    mirrored = (p.debit_account_id, p.credit_account_id, p.amount_fen) == (
        target.credit_account_id,
        target.debit_account_id,
        target.amount_fen,
    )
    if not mirrored:
        return Rejected(LedgerReason.REVERSAL_MISMATCH, f"{p.posting_id}: must swap accounts and keep the amount")
    return None


@dataclass(frozen=True, slots=True)
class CheckedBatch:
    """A batch that passed `check_batch`: what applying it leaves behind."""

    # per touched account, in order of first touch: (debits, credits) totals and normal-side balance after the batch
    totals_fen: Mapping[str, tuple[int, int]]
    balances_fen: Mapping[str, int]
    # per posting: balances of its debit and of its credit account right after it
    balances_after_fen: tuple[tuple[int, int], ...]


def check_batch(
    postings: Sequence[Posting],
    accounts: Mapping[str, Account],
    totals_fen: Mapping[str, tuple[int, int]],
    reversal_targets: Mapping[str, Posting],
    reversed_before: Container[str],
) -> CheckedBatch | Rejected:
    """Check a batch in order against the totals it meets: reversals, carve-out room, overflow, floors.

    Every posting must have passed `posting_problem`; `accounts` and `totals_fen` (debits, credits) cover the accounts
    the batch touches, `reversal_targets` the postings it reverses (by id), `reversed_before` those reversed already.
    """
    debits: dict[str, int] = {}
    credits: dict[str, int] = {}
    reversed_in_batch: set[str] = set()
    top_up_room_fen: dict[str, int] = {}
    balances_after: list[tuple[int, int]] = []
    for p in postings:
        if p.reverses is not None:
            already = p.reverses in reversed_before or p.reverses in reversed_in_batch
            problem = reversal_problem(p, reversal_targets.get(p.reverses), already_reversed=already)
            if problem is not None:
                return problem
            reversed_in_batch.add(p.reverses)
        if p.kind is PostingKind.TOP_UP:
            top_up_room_fen[p.credit_account_id] = top_up_room_fen.get(p.credit_account_id, 0) + p.amount_fen
        if p.overdraw and p.kind in CARVE_OUT_KINDS:
            room = top_up_room_fen.get(p.debit_account_id, 0)
            if p.amount_fen > room:
                return Rejected(
                    LedgerReason.OVERDRAW_NOT_ALLOWED,
                    f"{p.posting_id}: a carve-out may overdraw only within a top-up earlier in the batch",
                )
            top_up_room_fen[p.debit_account_id] = room - p.amount_fen
        for account_id in (p.debit_account_id, p.credit_account_id):
            if account_id not in debits:
                debits[account_id], credits[account_id] = totals_fen[account_id]
        debits[p.debit_account_id] += p.amount_fen
        credits[p.credit_account_id] += p.amount_fen
        if debits[p.debit_account_id] > MAX_BIGINT or credits[p.credit_account_id] > MAX_BIGINT:
            return Rejected(LedgerReason.OVERFLOW, f"{p.posting_id}: totals would exceed {MAX_BIGINT}")
        after: list[int] = []
        for account_id, may_overdraw in ((p.debit_account_id, p.overdraw), (p.credit_account_id, False)):
            account = accounts[account_id]
            balance = normal_balance(account, debits[account_id], credits[account_id])
            lowered = (account_id == p.debit_account_id) == (account.normal_side is Side.CREDIT)
            if lowered and account.floor_fen is not None and balance < account.floor_fen and not may_overdraw:
                return Rejected(
                    LedgerReason.BELOW_FLOOR,
                    f"{p.posting_id}: {account_id} would be {balance} fen, below its floor {account.floor_fen}",
                )
            after.append(balance)
        balances_after.append((after[0], after[1]))
    return CheckedBatch(
        MappingProxyType({a: (debits[a], credits[a]) for a in debits}),
        MappingProxyType({a: normal_balance(accounts[a], debits[a], credits[a]) for a in debits}),
        tuple(balances_after),
    )


class Ledger:
    """Accounts and postings in memory; mutable, owned by one caller, every operation all-or-nothing."""

    __slots__ = (
        "_accounts",
        "_credits_fen",
        "_debits_fen",
        "_history",
        "_max_posting_fen",
        "_postings",
        "_reversed_by",
        "_seq_by_id",
    )

    def __init__(self, *, max_posting_fen: int = DEFAULT_MAX_POSTING_FEN) -> None:
        if not 0 < max_posting_fen <= MAX_BIGINT:
            raise ValueError(f"max_posting_fen must be in 1..{MAX_BIGINT}, got {max_posting_fen}")
        self._max_posting_fen = max_posting_fen
        self._accounts: dict[str, Account] = {}
        self._debits_fen: dict[str, int] = {}
        self._credits_fen: dict[str, int] = {}
        self._history: dict[str, list[Entry]] = {}
        self._postings: dict[str, Posting] = {}
        self._seq_by_id: dict[str, int] = {}
        self._reversed_by: dict[str, str] = {}

    @property
    def max_posting_fen(self) -> int:
        """Largest amount a single posting may carry."""
        return self._max_posting_fen

    # ------------------------------------------------------------------ accounts

    def open_account(self, account: Account) -> OpenOutcome:
        """Open an account; reopening the same account is a no-op, a different one under the same id a conflict."""
        checked = self._open_check(account)
        if checked is not None:
            return checked
        self._accounts[account.account_id] = account
        self._debits_fen[account.account_id] = 0
        self._credits_fen[account.account_id] = 0
        self._history[account.account_id] = []
        return AccountOpened(account)

    def open_accounts(self, accounts: Iterable[Account]) -> Conflict | Rejected | None:
        """Open several accounts all-or-nothing (already open ones are no-ops); None on success."""
        wanted: dict[str, Account] = {}
        for account in accounts:
            earlier = wanted.setdefault(account.account_id, account)
            if earlier != account:
                return Conflict(account.account_id, differing_account_fields(earlier, account))
            checked = self._open_check(account)
            if isinstance(checked, Conflict | Rejected):
                return checked
        for account in wanted.values():
            self.open_account(account)
        return None

    def _open_check(self, account: Account) -> AccountAlreadyOpen | Conflict | Rejected | None:
        existing = self._accounts.get(account.account_id)
        if existing is not None and existing == account:
            return AccountAlreadyOpen(existing)
        return account_problem(account, existing)

    def account(self, account_id: str) -> Account | None:
        """The account with this id, if open."""
        return self._accounts.get(account_id)

    def accounts(self) -> tuple[Account, ...]:
        """All accounts in opening order."""
        return tuple(self._accounts.values())

    def balance_fen(self, account_id: str, *, after_posting_id: str | None = None) -> int:
        """Normal-side balance now, or right after the given posting; KeyError for an unknown account or posting."""
        account = self._accounts[account_id]
        if after_posting_id is None:
            return normal_balance(account, self._debits_fen[account_id], self._credits_fen[account_id])
        history = self._history[account_id]
        seq = self._seq_by_id[after_posting_id]
        i = bisect.bisect_right(history, seq, key=lambda e: e.seq)
        return history[i - 1].balance_after_fen if i else 0

    def totals_fen(self, account_id: str) -> tuple[int, int]:
        """Debits posted and credits posted to an account, in fen."""
        return self._debits_fen[account_id], self._credits_fen[account_id]

    def history(self, account_id: str) -> tuple[Entry, ...]:
        """Every posting that touched an account, in posting order, with the running balance."""
        return tuple(self._history[account_id])

    # ------------------------------------------------------------------ postings

    def posting(self, posting_id: str) -> Posting | None:
        """The posting with this id, if posted."""
        return self._postings.get(posting_id)

    def postings(self) -> tuple[Posting, ...]:
        """All postings in the order they were applied."""
        return tuple(self._postings.values())

    def reversal_of(self, posting_id: str) -> Posting | None:
        """The posting that reversed this one, if any."""
        reversal_id = self._reversed_by.get(posting_id)
        return None if reversal_id is None else self._postings[reversal_id]

    def post(self, posting: Posting) -> PostOutcome:
        """Post one posting; see `post_all`."""
        return self.post_all((posting,))

    def post_all(self, postings: Sequence[Posting]) -> PostOutcome:
        """Post a batch all-or-nothing, in order; an identical retry of the whole batch is a no-op."""
        problem = batch_problem(postings)
        if problem is not None:
            return problem
        for posting in postings:
            problem = posting_problem(posting, self._accounts, self._max_posting_fen)
            if problem is not None:
                return problem
        existing = existing_outcome(postings, self._postings)
        if existing is not None:
            return existing
        return self._apply(postings)

    def _apply(self, postings: Sequence[Posting]) -> Posted | Rejected:
        touched = dict.fromkeys(a for p in postings for a in (p.debit_account_id, p.credit_account_id))
        totals = {a: (self._debits_fen[a], self._credits_fen[a]) for a in touched}
        checked = check_batch(postings, self._accounts, totals, self._postings, self._reversed_by)
        if isinstance(checked, Rejected):
            return checked
        seq = len(self._postings)
        for p, (debit_after, credit_after) in zip(postings, checked.balances_after_fen, strict=True):
            self._postings[p.posting_id] = p
            self._seq_by_id[p.posting_id] = seq
            if p.reverses is not None:
                self._reversed_by[p.reverses] = p.posting_id
            for account_id, side, balance in (
                (p.debit_account_id, Side.DEBIT, debit_after),
                (p.credit_account_id, Side.CREDIT, credit_after),
            ):
                delta = p.amount_fen if side is self._accounts[account_id].normal_side else -p.amount_fen
                self._history[account_id].append(Entry(seq, p, side, delta, balance))
            seq += 1
        for account_id, (debits_fen, credits_fen) in checked.totals_fen.items():
            self._debits_fen[account_id] = debits_fen
            self._credits_fen[account_id] = credits_fen
        return Posted(tuple(postings), checked.balances_fen)


def check_invariants(ledger: Ledger) -> None:
    """Assert double entry: debits = credits, Σ balances by side is zero, each balance = Σ its postings (replayed)."""
    accounts = {a.account_id: a for a in ledger.accounts()}
    totals = {account_id: ledger.totals_fen(account_id) for account_id in accounts}
    assert sum(d for d, _ in totals.values()) == sum(c for _, c in totals.values()), "debits != credits"
    by_side = {Side.DEBIT: 0, Side.CREDIT: 0}
    for account_id, account in accounts.items():
        by_side[account.normal_side] += ledger.balance_fen(account_id)
    assert by_side[Side.DEBIT] == by_side[Side.CREDIT], f"debit-normal != credit-normal balances: {by_side}"

    debits = dict.fromkeys(accounts, 0)
    credits = dict.fromkeys(accounts, 0)
    reversed_by: dict[str, str] = {}
    seen: dict[str, Posting] = {}
    for p in ledger.postings():
        assert p.amount_fen > 0, p
        assert p.debit_account_id != p.credit_account_id, p
        debits[p.debit_account_id] += p.amount_fen
        credits[p.credit_account_id] += p.amount_fen
        for account_id, may_overdraw in ((p.debit_account_id, p.overdraw), (p.credit_account_id, False)):
            account = accounts[account_id]
            lowered = (account_id == p.debit_account_id) == (account.normal_side is Side.CREDIT)
            balance = normal_balance(account, debits[account_id], credits[account_id])
            if lowered and account.floor_fen is not None and not may_overdraw:
                assert balance >= account.floor_fen, f"below floor after {p}: {balance}"
        if p.reverses is not None:
            target = seen[p.reverses]
            assert p.reverses not in reversed_by, f"reversed twice: {p.reverses}"
            mirrored = (target.credit_account_id, target.debit_account_id, target.amount_fen)
            assert (p.debit_account_id, p.credit_account_id, p.amount_fen) == mirrored, f"not a mirror: {p}"
            reversed_by[p.reverses] = p.posting_id
        seen[p.posting_id] = p
    for account_id, account in accounts.items():
        assert totals[account_id] == (debits[account_id], credits[account_id]), f"{account_id} != Σ its postings"
        balance = normal_balance(account, debits[account_id], credits[account_id])
        history = ledger.history(account_id)
        assert sum(e.delta_fen for e in history) == balance, f"{account_id} history != Σ its postings"
        assert not history or history[-1].balance_after_fen == balance, f"{account_id} running balance is off"
    for original_id, reversal_id in reversed_by.items():
        reversal = ledger.reversal_of(original_id)
        assert reversal is not None, original_id
        assert reversal.posting_id == reversal_id, original_id
