"""Request and response bodies of the API; requests are parsed strictly from their raw JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from headend.api.errors import ProblemError, field_errors
from prepay_engine.account import RelayAction
from prepay_engine.ledger import DEFAULT_MAX_POSTING_FEN, PostingKind
from prepay_engine.policy import SupplyState

_M = TypeVar("_M", bound=BaseModel)

REF_PREFIX: Final = "#/components/schemas/"
# the request models documented through `json_body`; the application adds them to the OpenAPI components
BODY_MODELS: dict[str, type[BaseModel]] = {}

# prepay_engine.payments.CLIENT_ID_PATTERN: printable ASCII except ':'
TxnId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[!-9;-~]+$",
        description="The channel's transaction id, the idempotency key: 1–64 printable ASCII characters, no ':'.",
        examples=["WX20261122001"],
    ),
]
# prepay_engine.ledger.CUSTOMER_ID_PATTERN
AccountId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Prepaid account id.",
        examples=["A0001"],
    ),
]
# the years a payment can plausibly be dated in; outside them an offset could not even be applied safely
PLAUSIBLE_YEARS: Final = range(2000, 2100)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plausible_instant(value: datetime) -> datetime:
    if value.year not in PLAUSIBLE_YEARS:
        raise ValueError(f"must lie in the years {PLAUSIBLE_YEARS.start}–{PLAUSIBLE_YEARS.stop - 1}")
    return value.astimezone(UTC)


def _storable_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not hold control characters (such as NUL)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


# an aware time, answered in UTC; years outside PLAUSIBLE_YEARS refused (year 1 with +14:00 can't become UTC)
PlausibleInstant = Annotated[AwareDatetime, AfterValidator(_plausible_instant)]
# free text for audit trails and logs: anything PostgreSQL can store, tabs and line breaks allowed
StorableText = Annotated[str, AfterValidator(_storable_text)]
AmountFen = Annotated[
    int,
    Field(
        gt=0,
        le=DEFAULT_MAX_POSTING_FEN,
        description="Amount paid in fen (1/100 yuan): a JSON integer; floats, strings and booleans are refused.",
        examples=[10000],
    ),
]


class ChannelPaymentIn(BaseModel):
    """A payment a channel confirms: which transaction, for which account, how much, and when it succeeded."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "channel_txn_id": "WX20261122001",
                    "account_id": "A0001",
                    "amount_fen": 10000,
                    "paid_at": "2026-11-22T10:15:00+08:00",
                }
            ]
        },
    )

    channel_txn_id: TxnId
    account_id: AccountId
    amount_fen: AmountFen
    paid_at: PlausibleInstant = Field(description="When the payment succeeded at the channel: ISO 8601 with an offset.")


class CounterPaymentIn(BaseModel):
    """A payment taken at the counter; the account is the one in the path."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"channel_txn_id": "C-0042-20261122-0007", "amount_fen": 5000, "paid_at": None}]
        },
    )

    channel_txn_id: TxnId
    amount_fen: AmountFen
    paid_at: PlausibleInstant | None = Field(
        default=None,
        description="When the money was taken (ISO 8601 with an offset); omitted: as first received for this "
        "transaction id, else now.",
    )


class PaymentSplit(BaseModel):
    """How a payment was divided: emergency credit repaid first, then the debt share, the rest credited."""

    credited_fen: int
    emergency_credit_repaid_fen: int
    debt_recovered_fen: int


_PAYMENT_EXAMPLE: Final[dict[str, Any]] = {
    "channel": "wechat",
    "channel_txn_id": "WX20261122001",
    "account_id": "A0001",
    "amount_fen": 10000,
    "split": {"credited_fen": 8000, "emergency_credit_repaid_fen": 2000, "debt_recovered_fen": 0},
    "balance_after_fen": 7450,
    "emergency_credit_after_fen": 0,
    "debt_after_fen": 0,
    "paid_at": "2026-11-22T02:15:00Z",
    "received_at": "2026-11-22T02:15:03.512877Z",
}


class PaymentOut(BaseModel):
    """A credited payment as first received; every later delivery of the same transaction gets this body again."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PAYMENT_EXAMPLE]})

    channel: str
    channel_txn_id: str
    account_id: str
    amount_fen: int
    split: PaymentSplit
    balance_after_fen: int = Field(description="The prepaid balance right after this payment.")
    emergency_credit_after_fen: int = Field(description="Emergency credit still owed right after it.")
    debt_after_fen: int = Field(description="Debt still owed right after it.")
    paid_at: datetime = Field(description="When the channel took the money (UTC).")
    received_at: datetime = Field(description="When the head-end credited it (UTC).")


class PaymentDetail(PaymentOut):
    """A stored payment: as credited, who received it, and its reversal if any."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PAYMENT_EXAMPLE,
                    "received_by": "channel:wechat",
                    "reversed_at": None,
                    "reversal_reference": None,
                }
            ]
        }
    )

    received_by: str = Field(description="`channel:<channel>` for callbacks, the operator's name at the counter.")
    reversed_at: datetime | None
    reversal_reference: str | None


class PendingCommandOut(BaseModel):
    """The relay command the account waits on."""

    request_id: str
    meter_id: str
    sequence: int
    action: RelayAction


class AccountOut(BaseModel):
    """A prepaid account now: balances, supply, flags, the command it waits on, and what it is charged under."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "A0001",
                    "meter_id": "000000000001",
                    "tariff_code": "EXAMPLE-JS-RES-TIERED-TOU",
                    "policy_code": "default",
                    "zone": "Asia/Shanghai",
                    "balance_fen": 7450,
                    "emergency_credit_outstanding_fen": 0,
                    "debt_fen": 0,
                    "emergency_credit_limit_fen": 2000,
                    "debt_recovery_bps": 0,
                    "supply": "connected",
                    "protected": False,
                    "keep_supply": False,
                    "pending_command": None,
                    "charged_until": "2026-11-22T02:00:00Z",
                    "opened_at": "2026-11-01T00:00:00Z",
                }
            ]
        }
    )

    account_id: str
    meter_id: str = Field(description="The meter in service.")
    tariff_code: str
    policy_code: str
    zone: str = Field(description="IANA time zone of the account's local days.")
    balance_fen: int = Field(description="Prepaid balance; negative when usage ran past it.")
    emergency_credit_outstanding_fen: int = Field(description="Emergency credit lent and not yet repaid.")
    debt_fen: int = Field(description="Debt (arrears) owed.")
    emergency_credit_limit_fen: int = Field(description="Emergency credit the account may borrow.")
    debt_recovery_bps: int = Field(description="Share of each payment taken for debt, in 1/10000.")
    supply: SupplyState = Field(description="Relay state as last confirmed by read-back.")
    protected: bool = Field(description="Protected customer: never disconnected.")
    keep_supply: bool = Field(description="Keep supply (保电): no disconnects while set.")
    pending_command: PendingCommandOut | None
    charged_until: datetime = Field(description="Usage is charged up to this time (UTC).")
    opened_at: datetime


class LedgerBook(StrEnum):
    """Which of a customer's ledger accounts to list."""

    PREPAID = "prepaid"
    EMERGENCY_CREDIT = "emergency_credit"
    DEBT = "debt"


class LedgerEntryOut(BaseModel):
    """One posting on the account: its signed effect and the balance right after it."""

    seq: int = Field(description="Global posting sequence; pass the last one seen as `before_seq` for the next page.")
    posting_id: str
    kind: PostingKind
    at: datetime = Field(description="Business time of the posting (UTC).")
    delta_fen: int = Field(description="Effect on this account's balance.")
    balance_after_fen: int
    counter_account_id: str = Field(description="The ledger account on the other side.")
    reference: str
    reverses: str | None


class LedgerPage(BaseModel):
    """A page of an account's ledger, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "A0001",
                    "book": "prepaid",
                    "ledger_account_id": "customer:A0001:prepaid",
                    "balance_fen": 7450,
                    "entries": [
                        {
                            "seq": 1042,
                            "posting_id": "topup:wechat:WX20261122001",
                            "kind": "top_up",
                            "at": "2026-11-22T02:15:00Z",
                            "delta_fen": 10000,
                            "balance_after_fen": 7450,
                            "counter_account_id": "cash_in_transit:wechat",
                            "reference": "WX20261122001",
                            "reverses": None,
                        }
                    ],
                    "next_before_seq": 1042,
                }
            ]
        }
    )

    account_id: str
    book: LedgerBook
    ledger_account_id: str
    balance_fen: int = Field(description="The ledger account's balance now.")
    entries: list[LedgerEntryOut]
    next_before_seq: int | None = Field(description="`before_seq` of the next (older) page; null on the last page.")


class Health(BaseModel):
    """The service answers and its database does."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", "database": "ok"}]})

    status: str
    database: str


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body the route reads itself (see `parse_body`)."""
    BODY_MODELS[model.__name__] = model
    schema = {"$ref": REF_PREFIX + model.__name__}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class _DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(key)
        seen[key] = value
    return seen


def parse_body(model: type[_M], body: bytes) -> _M:
    """A request body parsed strictly (JSON types as they are, no coercion, no extra fields, no key twice); 422."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKeyError as exc:
        # a signed body whose key appears twice means one thing to us and maybe another to its signer
        raise ProblemError(422, f"body: the key {exc.args[0]!r} appears twice", code="duplicate_key") from None
    except (ValueError, RecursionError):
        pass  # not JSON, or nested beyond reason: pydantic below says where
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), ("body",))
        detail = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in errors)
        raise ProblemError(422, detail, errors=errors) from None
