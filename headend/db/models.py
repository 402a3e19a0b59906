"""Typed SQLAlchemy models of the tables Alembic owns (the migrations are the source of truth)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_REGISTER_MAX_WH = 999_999_990  # DL/T 645 energy registers hold XXXXXX.XX kWh


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Concentrator(Base):
    """A data concentrator (DCU) that forwards the readings of many meters."""

    __tablename__ = "concentrators"

    concentrator_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    region: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Meter(Base):
    """An electricity meter; its id is its communication address."""

    __tablename__ = "meters"
    __table_args__ = (
        CheckConstraint("protocol IN ('mqtt', 'modbus', 'dlt645')", name="meters_protocol"),
        CheckConstraint("status IN ('active', 'inactive', 'removed')", name="meters_status"),
        CheckConstraint("multiplier > 0", name="meters_multiplier"),
        CheckConstraint("register_max_wh > 0", name="meters_register_max"),
        CheckConstraint("reconnect_mode IN ('direct', 'allowed')", name="meters_reconnect_mode"),
    )

    meter_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    protocol: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    concentrator_id: Mapped[str | None] = mapped_column(ForeignKey("concentrators.concentrator_id"), index=True)
    region: Mapped[str | None] = mapped_column(Text, index=True)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    multiplier: Mapped[int] = mapped_column(Integer, server_default="1")
    register_max_wh: Mapped[int] = mapped_column(BigInteger, server_default=str(DEFAULT_REGISTER_MAX_WH))
    installed_on: Mapped[date | None] = mapped_column(Date)  # local day; expected in reports from then on
    reconnect_mode: Mapped[str] = mapped_column(Text, server_default="direct")  # allowed: 合闸允许, button on site
    # where a polled meter answers (migration 0021): host:port, the serial bus behind it, Modbus unit or 645 address
    endpoint: Mapped[str | None] = mapped_column(Text)
    bus: Mapped[str | None] = mapped_column(Text)
    unit_id: Mapped[int | None] = mapped_column(SmallInteger)
    address: Mapped[str | None] = mapped_column(String(12))
    framing: Mapped[str | None] = mapped_column(Text)  # Modbus: tcp (MBAP) or rtu (through a transparent gateway)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ControlledSwitch(Base):
    """A customer's controlled switch (接控开关) registered by field staff; retired switches keep their row."""

    __tablename__ = "controlled_switches"
    __table_args__ = (
        CheckConstraint(
            "commissioning_state IN ('registered', 'testing', 'commissioned', 'failed', 'decommissioned')",
            name="controlled_switches_state",
        ),
        # migration 0023: one switch in service per number; a retired switch's number may be given again
        Index(
            "controlled_switches_number_in_service",
            "switch_number",
            unique=True,
            postgresql_where=text("retired_at IS NULL"),
        ),
    )

    switch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    switch_number: Mapped[str] = mapped_column(Text)
    controlled_device: Mapped[str] = mapped_column(Text)
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.meter_id"), index=True)
    location: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    registered_by: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_by: Mapped[str | None] = mapped_column(Text)
    retire_reason: Mapped[str | None] = mapped_column(Text)
    commissioning_state: Mapped[str] = mapped_column(Text, server_default="registered")


class ControlledSwitchChange(Base):
    """One change of a controlled switch, appended and never changed: who, when, what, each field before and after."""

    __tablename__ = "controlled_switch_changes"

    change_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    switch_id: Mapped[int] = mapped_column(ForeignKey("controlled_switches.switch_id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)  # registered, edited, retired, commissioning
    changes: Mapped[dict[str, object]] = mapped_column(JSONB)  # {"field": {"from": …, "to": …}}
    detail: Mapped[str | None] = mapped_column(Text)


class Reading(Base):
    """One register reading; unique on meter and time. Partitioned (or a hypertable) by `ts`."""

    __tablename__ = "readings"

    meter_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    energy_import_wh: Mapped[int] = mapped_column(BigInteger)
    energy_export_wh: Mapped[int | None] = mapped_column(BigInteger)
    power_w: Mapped[int | None] = mapped_column(Integer)
    voltage_v: Mapped[float | None] = mapped_column(Float)
    relay_state: Mapped[str | None] = mapped_column(Text)
    quality_flags: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    source: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeadLetter(Base):
    """A message, or one entry of a concentrator message, that could not be stored, with the reason."""

    __tablename__ = "dead_letters"

    dead_letter_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    item_index: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    payload_sha256: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerAccount(Base):
    """An account of the ledger's chart; its balance and totals are kept by the writer under a row lock."""

    __tablename__ = "ledger_accounts"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    normal_side: Mapped[str] = mapped_column(
        Text,
        Computed(
            "CASE WHEN kind IN ('customer_prepaid', 'revenue', 'refunds_payable') THEN 'credit' ELSE 'debit' END",
            persisted=True,
        ),
    )
    customer_id: Mapped[str | None] = mapped_column(
        Text,
        Computed(
            "CASE WHEN account_id ~ '^customer:[A-Za-z0-9_-]+:(prepaid|emergency_credit|debt)$' "
            "AND char_length(split_part(account_id, ':', 2)) <= 32 THEN split_part(account_id, ':', 2) END",
            persisted=True,
        ),
        index=True,
    )
    channel: Mapped[str | None] = mapped_column(
        Text,
        Computed(
            "CASE WHEN account_id ~ '^cash_in_transit:[a-z0-9_]+$' "
            "AND char_length(split_part(account_id, ':', 2)) <= 32 THEN split_part(account_id, ':', 2) END",
            persisted=True,
        ),
    )
    floor_fen: Mapped[int | None] = mapped_column(BigInteger)  # lowest normal-side balance allowed; NULL: none
    credit_limit_fen: Mapped[int | None] = mapped_column(
        BigInteger, Computed("CASE WHEN kind = 'customer_prepaid' THEN -floor_fen END", persisted=True)
    )
    balance_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    debits_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    credits_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerPosting(Base):
    """An append-only double-entry posting, with both accounts' balances right after it."""

    __tablename__ = "ledger_postings"
    __table_args__ = (
        Index("ix_ledger_postings_debit_account_seq", "debit_account_id", "seq"),
        Index("ix_ledger_postings_credit_account_seq", "credit_account_id", "seq"),
        Index("ledger_postings_reverses_key", "reverses", unique=True, postgresql_where=text("reverses IS NOT NULL")),
    )
    # the references (debit and credit accounts, reversed posting) are checked once per statement by the trigger
    # ledger_postings_references_exist instead of foreign keys: migration 0011

    posting_id: Mapped[str] = mapped_column(Text, primary_key=True)
    debit_account_id: Mapped[str] = mapped_column(Text)
    credit_account_id: Mapped[str] = mapped_column(Text)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reference: Mapped[str] = mapped_column(Text, server_default="")
    reverses: Mapped[str | None] = mapped_column(Text)
    overdraw: Mapped[bool] = mapped_column(Boolean, server_default=false())
    debit_balance_after_fen: Mapped[int] = mapped_column(BigInteger)
    credit_balance_after_fen: Mapped[int] = mapped_column(BigInteger)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
