"""`headend account`: open prepaid accounts, replace their meters, set their flags, change their tariff or policy,
show them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from headend.cli.common import command_group, database, fail, instant, load_settings, print_decision, yuan

account_app = command_group("Prepaid accounts.")


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
    from headend.engine.accounts import AccountError, open_account
    from headend.engine.catalog import Catalog
    from prepay_engine.payments import PaymentTerms

    settings = load_settings()
    start = instant(opened_at, "--opened-at", settings.zone)
    with database(settings) as conn:
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
            raise fail(str(exc)) from None
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
    from headend.engine.accounts import AccountError, replace_meter

    settings = load_settings()
    when = instant(at, "--at", settings.zone)
    with database(settings) as conn:
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
            raise fail(str(exc)) from None
    typer.echo(f"account {account_id}: meter {new_meter} in service from {when.isoformat()}")


@account_app.command("flags")
def account_flags(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    protected: Annotated[bool, typer.Option(help="Protected customer: never disconnected.")],
    keep_supply: Annotated[bool, typer.Option(help="Keep supply (保电): no disconnects while set.")],
) -> None:
    """Set the protected and keep-supply flags, then apply the policy."""
    from headend.engine.accounts import AccountError, set_flags
    from headend.engine.catalog import Catalog

    settings = load_settings()
    with database(settings) as conn:
        try:
            step = set_flags(
                conn,
                Catalog(),
                account_id,
                protected=protected,
                keep_supply=keep_supply,
                now=datetime.now(UTC),
                actor="cli",
            )
        except AccountError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"account {account_id}: protected={protected} keep_supply={keep_supply}")
    print_decision(step)


@account_app.command("change")
def account_change(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    tariff: Annotated[str | None, typer.Option(help="The tariff code the account moves to.")] = None,
    policy: Annotated[str | None, typer.Option(help="The disconnect policy the account moves to.")] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="When it takes effect, on the 15-minute grid (ISO; local if no offset); default: the next grid "
            "instant from now.",
        ),
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who asks (recorded in the history); default: cli:<login>.")] = None,
) -> None:
    """Change an account's tariff or policy from a stated time; recorded in its history (`account show`)."""
    from headend.engine.catalog import Catalog
    from headend.engine.plan_changes import PlanChangeError, PlanChangeKind, default_actor, request_change

    if (tariff is None) == (policy is None):
        raise typer.BadParameter("give either --tariff or --policy", param_hint="--tariff / --policy")
    settings = load_settings()
    effective_at = None if from_ is None else instant(from_, "--from", settings.zone)
    kind, code = (PlanChangeKind.TARIFF, tariff) if tariff is not None else (PlanChangeKind.POLICY, policy)
    assert code is not None
    with database(settings) as conn:
        try:
            change = request_change(
                conn,
                Catalog(),
                account_id,
                kind,
                code,
                effective_at=effective_at,
                now=datetime.now(UTC),
                actor=by or default_actor(),
            )
        except PlanChangeError as exc:
            raise fail(str(exc)) from None
    typer.echo(
        f"account {account_id}: {change.kind} {change.old_code} → {change.new_code} from "
        f"{change.effective_at.astimezone(settings.zone).isoformat()} (change #{change.change_id})"
    )


@account_app.command("cancel-change")
def account_cancel_change(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    change_id: Annotated[int, typer.Argument(help="The pending change's number (#N in `account show`).")],
    by: Annotated[str | None, typer.Option(help="Who cancels (recorded in the history); default: cli:<login>.")] = None,
) -> None:
    """Withdraw a pending tariff or policy change (the latest of its kind); the history keeps both."""
    from headend.engine.plan_changes import PlanChangeError, cancel_change, default_actor

    settings = load_settings()
    with database(settings) as conn:
        try:
            change = cancel_change(conn, account_id, change_id, now=datetime.now(UTC), actor=by or default_actor())
        except PlanChangeError as exc:
            raise fail(str(exc)) from None
    typer.echo(
        f"account {account_id}: change #{change.change_id} ({change.kind} {change.old_code} → {change.new_code} "
        f"from {change.effective_at.astimezone(settings.zone).isoformat()}) cancelled"
    )


@account_app.command("show")
def account_show(
    account_id: Annotated[str, typer.Argument(help="Account id.")],
    entries: Annotated[int, typer.Option(min=0, max=1000, help="Ledger entries to list, newest first.")] = 10,
) -> None:
    """Balance, supply state, tariff and policy with their change history, and the latest ledger entries."""
    from headend.engine.plan_changes import plan_history
    from headend.money import ledger_store
    from prepay_engine.ledger import emergency_credit_account_id, prepaid_account_id

    settings = load_settings()
    with database(settings) as conn:
        row = conn.execute(
            "SELECT meter_id, supply, protected, keep_supply, charged_until, consumed_wh, tariff_code, policy_code "
            "FROM prepaid_accounts WHERE account_id = %s",
            (account_id,),
        ).fetchone()
        if row is None:
            raise fail(f"no prepaid account {account_id!r}")
        balance = ledger_store.balance_fen(conn, prepaid_account_id(account_id))
        lent = ledger_store.balance_fen(conn, emergency_credit_account_id(account_id))
        history = ledger_store.history(conn, prepaid_account_id(account_id), limit=entries)
        changes = plan_history(conn, account_id)
    meter_id, supply, is_protected, keep, charged_until, consumed_wh, tariff_code, policy_code = row
    zone = settings.zone
    typer.echo(f"account {account_id}  meter {meter_id}  supply {supply}  balance {yuan(balance)}")
    typer.echo(
        f"emergency credit outstanding {yuan(lent)}  protected={is_protected}  keep_supply={keep}  "
        f"charged until {charged_until.astimezone(zone).isoformat()}  consumed {consumed_wh} Wh"
    )
    typer.echo(f"tariff {tariff_code}  policy {policy_code}")
    if changes:
        typer.echo(f"plan changes ({zone.key}):")
    for c in changes:
        cancelled = (
            ""
            if c.cancelled_at is None
            else f"; cancelled {c.cancelled_at.astimezone(zone):%Y-%m-%d %H:%M:%S} by {c.cancelled_by}"
        )
        typer.echo(
            f"  #{c.change_id}  {c.kind:<6}  from {c.effective_at.astimezone(zone):%Y-%m-%d %H:%M}  "
            f"{c.old_code} → {c.new_code}  {c.state}  requested {c.requested_at.astimezone(zone):%Y-%m-%d %H:%M:%S} "
            f"by {c.requested_by}{cancelled}"
        )
    if history and changes:
        typer.echo("ledger:")
    for entry in history:
        p = entry.posting
        typer.echo(
            f"  {p.at.astimezone(settings.zone):%Y-%m-%d %H:%M}  {p.kind:<24} {entry.delta_fen:>+10} fen  "
            f"→ {entry.balance_after_fen:>10} fen  {p.posting_id}"
        )
