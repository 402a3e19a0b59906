"""Operator commands of the prepay engine: tariffs, policies, accounts, payments, the runner and settlement."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from headend import ledger_store, payment_store
from headend.engine.accounts import AccountError, open_account, pay, replace_meter, reverse_payment, set_flags
from headend.engine.catalog import Catalog, CatalogError, put_calendar_year, put_policy, put_tariff
from headend.engine.runner import EngineRunner, tune_gc_for_batches, utc_now
from headend.engine.settlement import SettlementError, settle_day, settle_workers
from headend.services import connect_database, database_url
from headend.settings import Settings
from headend.signals import stop_on_signals
from prepay_engine.account import Decided
from prepay_engine.config_codec import (
    ConfigFormatError,
    calendar_year_from_json,
    loads_strict,
    policy_from_json,
    tariff_from_json,
)
from prepay_engine.ledger import Conflict, Rejected, emergency_credit_account_id, prepaid_account_id
from prepay_engine.money import fen_to_yuan
from prepay_engine.payments import (
    AlreadyReversed,
    AlreadyToppedUp,
    PaymentTerms,
    Reversed,
    ToppedUp,
    TopUp,
    TopUpReversal,
)

_T = TypeVar("_T")

tariff_app = typer.Typer(help="Tariffs (versioned prices).", no_args_is_help=True)
policy_app = typer.Typer(
    help="Disconnect policies (thresholds, notices, friendly-credit windows).", no_args_is_help=True
)
account_app = typer.Typer(help="Prepaid accounts.", no_args_is_help=True)
calendar_app = typer.Typer(help="Holiday calendar years declared by operators.", no_args_is_help=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="HEADEND_* environment") from None


def _instant(value: str | None, name: str, settings: Settings) -> datetime:
    """An ISO time from the command line; without an offset it is local time (HEADEND_TIMEZONE)."""
    if value is None:
        return utc_now()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=name) from None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=settings.zone)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _read_config(file: Path, parse: Callable[[object], _T]) -> _T:
    """Parse a JSON configuration file; a malformed one is a usage error naming the file and the JSON path."""
    try:
        return parse(loads_strict(file.read_bytes()))
    except ConfigFormatError as exc:
        raise _fail(f"{file}: {exc}", 2) from None


def _yuan(fen: int) -> str:
    return f"¥{fen_to_yuan(fen)}"


def _print_decision(step: Decided | None) -> None:
    if step is None:
        return
    for n in step.notifications:
        typer.echo(f"notification {n.request_id}: {n.kind} at balance {_yuan(n.balance_fen)}")
    for c in step.commands:
        typer.echo(f"command {c.request_id}: {c.action} meter {c.command.meter_id} — {c.reasons[0].text}")
    if step.wake_at is not None:
        typer.echo(f"disconnect deferred until {step.wake_at.isoformat()}")


@tariff_app.command("put")
def tariff_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Tariff JSON file.")],
) -> None:
    """Store a tariff from JSON (docs/tariff-format.md); versions already in force can't change."""
    tariff = _read_config(file, tariff_from_json)
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            stored = put_tariff(conn, tariff, stored_by="cli", now=utc_now())
        except CatalogError as exc:
            raise _fail(str(exc)) from None
    state = "stored as" if stored.created else "unchanged at"
    typer.echo(f"tariff {stored.code} {state} revision {stored.revision}")


@policy_app.command("put")
def policy_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Policy JSON file.")],
) -> None:
    """Store a disconnect policy from JSON; it applies from each account's next decision."""
    policy = _read_config(file, policy_from_json)
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        stored = put_policy(conn, policy, stored_by="cli")
    state = "stored as" if stored.created else "unchanged at"
    typer.echo(f"policy {stored.code} {state} revision {stored.revision}")


@calendar_app.command("put")
def calendar_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Calendar year JSON file.")],
) -> None:
    """Declare a year's public holidays and make-up working days (from the State Council notice)."""
    declared = _read_config(file, calendar_year_from_json)
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        changed = put_calendar_year(conn, declared, stored_by="cli", now=utc_now())
    state = "stored; accounts in a low-balance episode are decided again" if changed else "unchanged"
    typer.echo(
        f"calendar {declared.year}: {len(declared.holidays)} holiday(s), "
        f"{len(declared.makeup_working_days)} make-up working day(s) {state}"
    )


@account_app.command("open")
def account_open(
    account_id: Annotated[str, typer.Argument(help="Account id (1–32 letters, digits, '_' or '-').")],
    meter: Annotated[str, typer.Option(help="The registered meter that supplies the account.")],
    tariff: Annotated[str, typer.Option(help="Tariff code.")],
    policy: Annotated[str, typer.Option(help="Disconnect policy name.")],
    opened_at: Annotated[str | None, typer.Option(help="When charging starts (ISO; local if no offset).")] = None,
    opening_register_wh: Annotated[
        int | None, typer.Option(min=0, help="Register at opening; default: the meter's last reading then.")
    ] = None,
    emergency_credit_fen: Annotated[int, typer.Option(min=0, help="Emergency credit lent on request.")] = 0,
    debt_recovery_bps: Annotated[int, typer.Option(min=0, max=10_000, help="Share of top-ups taken for debt.")] = 0,
    cycle_usage_wh: Annotated[int, typer.Option(min=0, help="Energy of the current tier cycle already used.")] = 0,
    protected: Annotated[bool, typer.Option(help="Protected customer: never disconnected.")] = False,
    keep_supply: Annotated[bool, typer.Option(help="Keep supply (保电): no disconnects while set.")] = False,
) -> None:
    """Open a prepaid account on a meter; charging starts from the opening reading."""
    settings = _settings()
    start = _instant(opened_at, "--opened-at", settings)
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            account = open_account(
                conn,
                Catalog(),
                account_id,
                meter_id=meter,
                tariff_code=tariff,
                policy_code=policy,
                opened_at=start,
                opening_register_wh=opening_register_wh,
                terms=PaymentTerms(emergency_credit_fen, debt_recovery_bps),
                cycle_usage_wh=cycle_usage_wh,
                protected=protected,
                keep_supply=keep_supply,
                zone=settings.zone,
                actor="cli",
            )
        except AccountError as exc:
            raise _fail(str(exc)) from None
    typer.echo(
        f"account {account.account_id} opened on meter {meter} at {account.usage.anchor_ts.isoformat()} "
        f"(register {account.usage.anchor_register_wh} Wh)"
    )


@account_app.command("replace-meter")
def account_replace_meter(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    at: Annotated[str, typer.Option(help="When the meter was swapped (ISO; local if no offset).")],
    old_final_wh: Annotated[int, typer.Option(min=0, help="The old meter's final register.")],
    new_meter: Annotated[str, typer.Option(help="The registered meter that replaces it.")],
    new_start_wh: Annotated[int, typer.Option(min=0, help="The new meter's register at the swap.")] = 0,
) -> None:
    """Record a meter replacement; the account's consumption continues on the new meter."""
    settings = _settings()
    when = _instant(at, "--at", settings)
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            replace_meter(
                conn,
                account_id,
                at=when,
                old_final_register_wh=old_final_wh,
                new_meter_id=new_meter,
                new_start_register_wh=new_start_wh,
                actor="cli",
            )
        except AccountError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"account {account_id}: meter {new_meter} in service from {when.isoformat()}")


@account_app.command("flags")
def account_flags(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    protected: Annotated[bool, typer.Option(help="Protected customer: never disconnected.")],
    keep_supply: Annotated[bool, typer.Option(help="Keep supply (保电): no disconnects while set.")],
) -> None:
    """Set the protected and keep-supply flags, then apply the policy."""
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            step = set_flags(
                conn, Catalog(), account_id, protected=protected, keep_supply=keep_supply, now=utc_now(), actor="cli"
            )
        except AccountError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"account {account_id}: protected={protected} keep_supply={keep_supply}")
    _print_decision(step)


@account_app.command("show")
def account_show(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    entries: Annotated[int, typer.Option(min=0, max=1000, help="Ledger entries to list, newest first.")] = 10,
) -> None:
    """Balance, supply state and the latest ledger entries of an account."""
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        row = conn.execute(
            "SELECT meter_id, supply, protected, keep_supply, charged_until, consumed_wh FROM prepaid_accounts "
            "WHERE account_id = %s",
            (account_id,),
        ).fetchone()
        if row is None:
            raise _fail(f"no prepaid account {account_id!r}")
        balance = ledger_store.balance_fen(conn, prepaid_account_id(account_id))
        lent = ledger_store.balance_fen(conn, emergency_credit_account_id(account_id))
        history = ledger_store.history(conn, prepaid_account_id(account_id), limit=entries)
    meter_id, supply, is_protected, keep, charged_until, consumed_wh = row
    typer.echo(f"account {account_id}  meter {meter_id}  supply {supply}  balance {_yuan(balance)}")
    typer.echo(
        f"emergency credit outstanding {_yuan(lent)}  protected={is_protected}  keep_supply={keep}  "
        f"charged until {charged_until.astimezone(settings.zone).isoformat()}  consumed {consumed_wh} Wh"
    )
    for entry in history:
        p = entry.posting
        typer.echo(
            f"  {p.at.astimezone(settings.zone):%Y-%m-%d %H:%M}  {p.kind:<24} {entry.delta_fen:>+10} fen  "
            f"→ {entry.balance_after_fen:>10} fen  {p.posting_id}"
        )


def pay_command(
    account: Annotated[str, typer.Option(help="Account id.")],
    amount_fen: Annotated[int, typer.Option(min=1, help="Amount paid, in fen.")],
    channel: Annotated[str, typer.Option(help="Payment channel (lower-case, e.g. wechat, alipay, counter).")],
    txn: Annotated[str, typer.Option(help="The channel's transaction id (the idempotency key).")],
    paid_at: Annotated[
        str | None,
        typer.Option(
            help="When the channel took (or, with --reverse, gave back) the money (ISO); default: as first "
            "posted for this transaction, else now."
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option(help="Reverse this (whole) payment instead.")] = False,
) -> None:
    """Post a payment from a channel once per transaction id (or reverse it), then apply the policy."""
    settings = _settings()
    with database_url(settings) as url, connect_database(url) as conn:
        # a retry without --paid-at must be the same transaction, not a conflicting one stamped now
        stored = payment_store.payment(conn, channel, txn)
        first_at = None if stored is None else (stored.reversed_at if reverse else stored.paid_at)
        when = first_at if paid_at is None and first_at is not None else _instant(paid_at, "--paid-at", settings)
        try:
            if reverse:
                result = reverse_payment(conn, Catalog(), TopUpReversal(channel, txn, amount_fen, when), now=utc_now())
            else:
                request = TopUp(channel, txn, account, amount_fen, when)
                result = pay(conn, Catalog(), request, now=utc_now(), received_by="cli")
        except AccountError as exc:
            raise _fail(str(exc)) from None
    outcome = result.outcome
    if isinstance(outcome, Conflict | Rejected):
        raise _fail(f"refused: {outcome}")
    first = outcome.original if isinstance(outcome, AlreadyToppedUp | AlreadyReversed) else outcome
    what = {
        ToppedUp: "credited",
        AlreadyToppedUp: "duplicate, already credited",
        Reversed: "reversed",
        AlreadyReversed: "duplicate, already reversed",
    }[type(outcome)]
    typer.echo(
        f"{channel}:{txn} {_yuan(amount_fen)} {what}; balance after it {_yuan(first.balances.prepaid_fen)} "
        f"(emergency credit repaid {_yuan(first.split.emergency_credit_repaid_fen)}, "
        f"debt recovered {_yuan(first.split.debt_recovered_fen)})"
    )
    _print_decision(result.decided)


def engine_command(
    once: Annotated[bool, typer.Option(help="One sweep of the due accounts, then exit.")] = False,
) -> None:
    """Charge newly committed readings and apply the disconnect policy until stopped (SIGTERM/SIGINT)."""
    settings = _settings()
    tune_gc_for_batches()
    with database_url(settings) as url, connect_database(url) as conn, stop_on_signals() as stop:
        runner = EngineRunner(
            conn,
            settings.engine_lateness_s,
            settings.engine_batch_accounts,
            eager_on_grid=settings.engine_eager_on_grid,
            full_sweep_s=settings.engine_full_sweep_s,
        )
        stats = runner.sweep() if once else runner.run(stop, settings.engine_poll_s)
    typer.echo(
        f"stopped: {stats.accounts} accounts, {stats.charges} interval charges, {stats.postings} postings "
        f"({_yuan(stats.charged_fen)}), {stats.notifications} notifications, {stats.commands} relay commands"
    )


def settle_command(
    day: Annotated[str, typer.Option("--date", help="Local day to settle, YYYY-MM-DD.")],
    zone: Annotated[
        str | None, typer.Option(help="Settle the accounts of this time zone (default HEADEND_TIMEZONE).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Accounts in arrears to list.")] = 50,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Processes that charge (default HEADEND_SETTLE_WORKERS, 0 there: one per CPU, plus one)."
        ),
    ] = None,
) -> None:
    """Charge what is still uncharged, then report the day's usage and the accounts in arrears at its end."""
    try:
        local_day = date.fromisoformat(day)
    except ValueError:
        raise typer.BadParameter(f"{day!r} is not a date in the form YYYY-MM-DD", param_hint="--date") from None
    settings = _settings()
    try:
        tz = settings.zone if zone is None else ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {zone!r} (an IANA name such as Asia/Shanghai)") from None
    tune_gc_for_batches()
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            settled = settle_day(
                conn,
                Catalog(),
                local_day,
                tz,
                now=datetime.now(UTC),
                lateness_s=settings.engine_lateness_s,
                batch_accounts=settings.engine_batch_accounts,
                workers=workers or settle_workers(settings.settle_workers),
                url=url,
            )
        except SettlementError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "date": local_day.isoformat(),
                    "zone": settled.zone,
                    "start_utc": settled.start_utc.isoformat(),
                    "end_utc": settled.end_utc.isoformat(),
                    "accounts": settled.accounts,
                    "charges": settled.day.charges,
                    "energy_wh": settled.day.energy_wh,
                    "charged_fen": settled.day.charged_fen,
                    "run_charges": settled.run.charges,
                    "run_charged_fen": settled.run.charged_fen,
                    "incomplete_accounts": settled.incomplete_accounts,
                    "arrears_accounts": len(settled.arrears),
                    "arrears_fen": settled.arrears_fen,
                    "arrears": [
                        {
                            "account_id": a.account_id,
                            "balance_fen": a.balance_fen,
                            "debt_fen": a.debt_fen,
                            "owed_fen": a.owed_fen,
                            "supply": a.supply,
                        }
                        for a in settled.arrears[:limit]
                    ],
                }
            )
        )
        return
    typer.echo(
        f"settled {local_day} ({settled.zone}): {settled.accounts} accounts, {settled.day.charges} interval charges "
        f"of the day, {settled.day.energy_wh / 1000:.3f} kWh, {_yuan(settled.day.charged_fen)} "
        f"({settled.run.charges} charged by this run); {settled.incomplete_accounts} with intervals still unread; "
        f"{len(settled.arrears)} in arrears at the end of the day owing {_yuan(settled.arrears_fen)}"
    )
    for a in settled.arrears[:limit]:
        typer.echo(f"  {a.account_id:<32} owes {_yuan(a.owed_fen):>12}  balance {_yuan(a.balance_fen)}  {a.supply}")
