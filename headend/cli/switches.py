"""`headend switches`: customers' controlled switches (接控开关); `headend meters find`: a meter as staff know it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import typer

from headend.cli.common import command_group, database, fail, load_settings, local_time, record, table, to_json, yuan
from headend.commissioning.states import SwitchTestResult

if TYPE_CHECKING:
    import psycopg

    from headend.commissioning.store import SwitchTest
    from headend.registry.meter_search import FoundMeter
    from headend.registry.switches import Switch, SwitchChange, SwitchError

switches_app = command_group(
    "Customers' controlled switches (接控开关): register, correct, retire, import, list; test them on site."
)

By = Annotated[str, typer.Option(help="Who does it (recorded with the switch and in its history).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _refused(exc: SwitchError) -> typer.Exit:
    return fail(str(exc))


def _switch_lines(switch: Switch, zone: ZoneInfo) -> list[str]:
    lines = [
        f"switch         {switch.switch_id}  {switch.switch_number}  ({switch.commissioning_state})",
        f"controls       {switch.controlled_device}",
        f"meter          {switch.meter_id}",
        f"location       {switch.location or '-'}",
        f"notes          {switch.notes or '-'}",
        f"registered     {local_time(switch.registered_at, zone)} by {switch.registered_by}",
        f"changed        {local_time(switch.updated_at, zone)} by {switch.updated_by}",
    ]
    if switch.retired_at is not None:
        lines.append(
            f"retired        {local_time(switch.retired_at, zone)} by {switch.retired_by}: {switch.retire_reason}"
        )
    return lines


def _change_line(change: SwitchChange, zone: ZoneInfo) -> str:
    fields = ", ".join(f"{field} {value['from']!r} → {value['to']!r}" for field, value in change.changes.items())
    detail = f"  ({change.detail})" if change.detail else ""
    return f"  {local_time(change.at, zone)}  {change.action:<12} {change.actor}: {fields or '-'}{detail}"


@switches_app.command("register")
def switches_register(
    number: Annotated[str, typer.Option(help="The switch's number as labelled on site (unique in service).")],
    device: Annotated[str, typer.Option(help="What it controls, e.g. 'box transformer 1 main switch'.")],
    meter: Annotated[str, typer.Option(help="The meter whose relay serves it (registered, active).")],
    by: By,
    location: Annotated[str | None, typer.Option(help="Where it is.")] = None,
    notes: Annotated[str | None, typer.Option(help="Anything else.")] = None,
    as_json: AsJson = False,
) -> None:
    """Register a controlled switch on an active meter."""
    from headend.registry.switches import SwitchError, register, validate_draft

    settings = load_settings()
    try:
        draft = validate_draft(number, device, meter, location, notes)
    except SwitchError as exc:
        raise typer.BadParameter(str(exc)) from None
    with database(settings) as conn:
        try:
            switch = register(conn, draft, by=by, now=datetime.now(UTC))
        except SwitchError as exc:
            raise _refused(exc) from None
    if as_json:
        typer.echo(to_json(record(switch), settings.zone))
        return
    typer.echo(f"switch {switch.switch_id} registered: {switch.switch_number} on meter {switch.meter_id}")


@switches_app.command("edit")
def switches_edit(
    switch_id: Annotated[int, typer.Argument(min=1, help="The switch's id.")],
    by: By,
    number: Annotated[str | None, typer.Option(help="A new number.")] = None,
    device: Annotated[str | None, typer.Option(help="What it controls.")] = None,
    meter: Annotated[str | None, typer.Option(help="Another meter (the switch is then registered again).")] = None,
    location: Annotated[str | None, typer.Option(help="Where it is ('' clears it).")] = None,
    notes: Annotated[str | None, typer.Option(help="Notes ('' clears them).")] = None,
    as_json: AsJson = False,
) -> None:
    """Correct some fields of a switch in service; each change is kept in its history."""
    from headend.registry.switches import SwitchError, edit

    given = {
        "switch_number": number,
        "controlled_device": device,
        "meter_id": meter,
        "location": location,
        "notes": notes,
    }
    changes = {field: value for field, value in given.items() if value is not None}
    if not changes:
        raise typer.BadParameter("nothing to change: give --number, --device, --meter, --location or --notes")
    settings = load_settings()
    with database(settings) as conn:
        try:
            switch, diff = edit(conn, switch_id, changes, by=by, now=datetime.now(UTC))
        except SwitchError as exc:
            raise _refused(exc) from None
    if as_json:
        typer.echo(to_json({**record(switch), "changed": diff}, settings.zone))
        return
    if not diff:
        typer.echo(f"switch {switch_id}: nothing changed (the values given are those stored)")
        return
    typer.echo(f"switch {switch_id} changed: {', '.join(diff)}")


@switches_app.command("retire")
def switches_retire(
    switch_id: Annotated[int, typer.Argument(min=1, help="The switch's id.")],
    reason: Annotated[str, typer.Option(help="Why it is retired (kept in its history).")],
    by: By,
) -> None:
    """Retire a switch: it stays with its history, decommissioned; its number may be given to its replacement."""
    from headend.registry.switches import SwitchError, retire

    with database(load_settings()) as conn:
        try:
            switch = retire(conn, switch_id, reason, by=by, now=datetime.now(UTC))
        except SwitchError as exc:
            raise _refused(exc) from None
    typer.echo(f"switch {switch.switch_id} ({switch.switch_number}) retired by {switch.retired_by}")


@switches_app.command("list")
def switches_list(
    meter: Annotated[str | None, typer.Option(help="Only this meter's switches.")] = None,
    number: Annotated[str | None, typer.Option(help="Only numbers starting with this (any case).")] = None,
    include_retired: Annotated[bool, typer.Option("--all", help="Retired switches too.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Switches to list.")] = 100,
    after: Annotated[int | None, typer.Option(min=0, help="Start after this switch id (the next page).")] = None,
    as_json: AsJson = False,
) -> None:
    """Switches by id: number, state, meter, controlled device, location."""
    from headend.registry.switches import list_switches

    settings = load_settings()
    with database(settings) as conn:
        page = list_switches(
            conn, meter_id=meter, number=number, include_retired=include_retired, limit=limit, after=after
        )
    if as_json:
        typer.echo(to_json({"switches": page.switches, "next_after": page.next_after}, settings.zone))
        return
    if not page.switches:
        typer.echo("no switches")
        return
    rows = [
        [
            str(s.switch_id),
            s.switch_number,
            s.commissioning_state.value,
            s.meter_id,
            s.controlled_device,
            s.location or "-",
        ]
        for s in page.switches
    ]
    typer.echo(table(["id", "number", "state", "meter", "controls", "location"], rows))
    if page.next_after is not None:
        typer.echo(f"{len(page.switches)} shown, more follow: --after {page.next_after}")


@switches_app.command("show")
def switches_show(
    switch_id: Annotated[int, typer.Argument(min=1, help="The switch's id.")], as_json: AsJson = False
) -> None:
    """One switch, retired or not, with its history (local time)."""
    from headend.registry.switches import get_switch, history

    settings = load_settings()
    with database(settings) as conn:
        switch = get_switch(conn, switch_id)
        if switch is None:
            raise fail(f"no switch {switch_id}")
        trail = history(conn, switch_id)
    if as_json:
        typer.echo(to_json({**record(switch), "history": trail}, settings.zone))
        return
    lines = _switch_lines(switch, settings.zone)
    lines.append("history")
    lines += [_change_line(change, settings.zone) for change in trail]
    typer.echo("\n".join(lines))


@switches_app.command("import")
def switches_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Switch CSV file.")],
    by: By,
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even when others are refused.")] = False,
) -> None:
    """Register switches from a CSV: switch_number,controlled_device,meter_id[,location,notes]."""
    from headend.registry.switch_import import SwitchFileError, import_switches, read_switch_file
    from headend.registry.switches import SwitchError

    try:
        parsed = read_switch_file(file)
    except (SwitchFileError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: {exc}", 2) from None
    with database(load_settings()) as conn:
        try:
            result = import_switches(
                conn, parsed, by=by, now=datetime.now(UTC), skip_invalid=skip_invalid, source=file.name
            )
        except SwitchError as exc:
            raise fail(f"{file}: nothing imported: {exc}", 1) from None
    for error in result.errors:
        typer.echo(f"error: {file}: {error}", err=True)
    if not result.imported:
        typer.echo(
            f"{len(result.errors)} row(s) refused; nothing imported (fix them, or pass --skip-invalid)", err=True
        )
        raise typer.Exit(1)
    skipped = f", {len(result.errors)} row(s) refused and skipped" if result.errors else ""
    typer.echo(f"{len(result.created)} switch(es) registered, {result.unchanged} unchanged{skipped}")
    if result.errors:
        raise typer.Exit(1)


def meters_find(
    query: Annotated[str, typer.Argument(help="Meter id, DL/T 645 address, host:port[/unit], account or switch no.")],
    limit: Annotated[int, typer.Option(min=1, max=50, help="Meters to show at most.")] = 20,
    as_json: AsJson = False,
) -> None:
    """Find meters by id, address, Modbus endpoint and unit, prepaid account or switch number; with their switches."""
    from headend.registry.meter_search import SearchError, search_meters

    settings = load_settings()
    with database(settings) as conn:
        try:
            found = search_meters(conn, query, limit=limit)
        except SearchError as exc:
            raise typer.BadParameter(str(exc), param_hint="QUERY") from None
    if as_json:
        typer.echo(to_json({"query": found.query, "meters": found.meters, "more": found.more}, settings.zone))
        return
    if not found.meters:
        raise fail(f"no meter matches {found.query!r}")
    typer.echo("\n\n".join(_found_text(meter, settings.zone) for meter in found.meters))
    if found.more:
        typer.echo(f"\n{len(found.meters)} shown, more match: narrow the query")


def _found_text(meter: FoundMeter, zone: ZoneInfo) -> str:
    if meter.unit_id is not None:
        place = f"{meter.endpoint}/{meter.unit_id}"
    elif meter.address is not None:
        place = f"{meter.endpoint} address {meter.address}"
    else:
        place = f"concentrator {meter.concentrator_id}" if meter.concentrator_id else "-"
    lines = [
        f"meter          {meter.meter_id}  ({meter.status})  matched by {', '.join(meter.matched_by)}",
        f"protocol       {meter.protocol}  model {meter.model or '-'}  at {place}  region {meter.region or '-'}",
        f"last reading   {local_time(meter.last_reading_at, zone) if meter.last_reading_at else 'never'}",
    ]
    relay = meter.relay
    if relay is None:
        lines.append("relay          never reported")
    else:
        armed = ", armed" if relay.ready_for_reconnection else ""
        lines.append(f"relay          {relay.relay}{armed}  reported {local_time(relay.reported_at, zone)}")
    account = meter.account
    if account is None:
        lines.append("account        none")
    else:
        balance = "-" if account.balance_fen is None else yuan(account.balance_fen)
        flags = "".join(
            [", protected" if account.protected else "", ", keep supply (保电)" if account.keep_supply else ""]
        )
        lines.append(f"account        {account.account_id}  balance {balance}  supply {account.supply}{flags}")
    lines.append(f"switches       {len(meter.switches) or 'none'}")
    lines += [
        f"  {s.switch_id}  {s.switch_number}  {s.commissioning_state.value}  {s.controlled_device}"
        f"{f'  at {s.location}' if s.location else ''}"
        for s in meter.switches
    ]
    return "\n".join(lines)


# --- the on-site commissioning test ---------------------------------------------------------------------------------

TestId = Annotated[int, typer.Argument(min=1, help="The test's id.")]
WAIT_POLL_S = 0.5


def _test_lines(test: SwitchTest, zone: ZoneInfo) -> list[str]:
    lines = [
        f"test           {test.test_id}  of switch {test.switch_id} on meter {test.meter_id}  ({test.state})",
        f"now            {test.detail}",
        f"requested      {local_time(test.requested_at, zone)} by {test.requested_by}",
    ]
    if test.approval_reason is not None:
        approved = (
            f"approved {local_time(test.approved_at, zone)} by {test.approved_by}"
            if test.approved_by is not None
            else "not approved yet"
        )
        lines.append(f"approval       {test.approval_reason}; {approved}")
    lines.append(f"started        {local_time(test.started_at, zone)}")
    lines.append(f"finished       {local_time(test.finished_at, zone)}")
    if test.result is not None:
        lines.append(
            f"result         {test.result} by {test.result_by} at {local_time(test.result_at, zone)}: "
            f"{test.result_note}"
        )
    lines.append("steps")
    lines += [f"  {s.ordinal}  {s.kind:<14} {s.state:<14} {s.relay or '-':<6} {s.detail}" for s in test.steps]
    return lines


def _follow_test(conn: psycopg.Connection[Any], test_id: int, zone: ZoneInfo, timeout_s: float) -> SwitchTest:
    """Print the test's changes as they happen (polling it) until it has finished or `timeout_s` has passed."""
    from headend.commissioning.store import get_test

    shown: dict[object, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        test = get_test(conn, test_id)
        assert test is not None, test_id
        for step in test.steps:
            now = (step.state.value, step.detail)
            if step.state.value != "pending" and shown.get(step.ordinal) != now:
                shown[step.ordinal] = now
                found = f" [{step.relay}]" if step.relay else ""
                typer.echo(
                    f"{local_time(datetime.now(UTC), zone)}  step {step.ordinal} {step.kind}: {step.state}{found} "
                    f"- {step.detail}"
                )
        if shown.get("test") != (test.state.value, test.detail):
            shown["test"] = (test.state.value, test.detail)
            typer.echo(f"{local_time(datetime.now(UTC), zone)}  test {test_id}: {test.detail}")
        if test.finished_at is not None or time.monotonic() >= deadline:
            return test
        time.sleep(WAIT_POLL_S)


@switches_app.command("test")
def switches_test(
    switch_id: Annotated[int, typer.Argument(min=1, help="The switch's id.")],
    by: By,
    wait: Annotated[
        bool, typer.Option("--wait", help="Print each step as it happens until the test has finished.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="With --wait: give up waiting after this many seconds.")] = 900,
) -> None:
    """Start the on-site commissioning test of a switch (read, open, confirm, close or allow closing, confirm).

    The running `headend dispatch` sends its steps. Exit status with --wait: 0 when every step passed, 1 otherwise.
    """
    from headend.commissioning.operations import SwitchTestError, start_test

    settings = load_settings()
    with database(settings) as conn:
        try:
            test = start_test(conn, switch_id, by=by, now=datetime.now(UTC))
        except SwitchTestError as exc:
            raise fail(str(exc)) from None
        typer.echo(f"test {test.test_id} of switch {switch_id} on meter {test.meter_id}: {test.detail}")
        for step in test.steps:
            typer.echo(f"  {step.ordinal}  {step.kind:<14} {step.detail}")
        if not wait:
            typer.echo(f"follow it: headend switches test-show {test.test_id}")
            return
        ended = _follow_test(conn, test.test_id, settings.zone, timeout)
    if ended.finished_at is None:
        raise fail(f"test {ended.test_id} has not finished after {timeout:g} s ({ended.state}): test-show it later")
    if ended.state.value != "passed":
        raise typer.Exit(1)
    typer.echo(
        f"record the result: headend switches test-result {ended.test_id} --result commissioned|failed "
        "--note NOTE --by WHO"
    )


@switches_app.command("test-show")
def switches_test_show(test_id: TestId, as_json: AsJson = False) -> None:
    """A commissioning test with its steps (local time)."""
    from headend.commissioning.store import get_test

    settings = load_settings()
    with database(settings) as conn:
        test = get_test(conn, test_id)
    if test is None:
        raise fail(f"no switch test {test_id}")
    if as_json:
        typer.echo(to_json(record(test), settings.zone))
        return
    typer.echo("\n".join(_test_lines(test, settings.zone)))


@switches_app.command("test-approve")
def switches_test_approve(test_id: TestId, by: By) -> None:
    """Approve a test awaiting approval (a protected or keep-supply customer): the dispatcher then runs it."""
    from headend.commissioning.operations import SwitchTestError, approve_test

    with database(load_settings()) as conn:
        try:
            test = approve_test(conn, test_id, by=by, now=datetime.now(UTC))
        except SwitchTestError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"test {test_id} approved by {test.approved_by}: {test.state}")


@switches_app.command("test-cancel")
def switches_test_cancel(
    test_id: TestId, reason: Annotated[str, typer.Option(help="Why it is withdrawn (kept with the test).")], by: By
) -> None:
    """Cancel a test that has not ended; the dispatcher puts the relay back where the account requires it."""
    from headend.commissioning.operations import SwitchTestError, cancel_test

    with database(load_settings()) as conn:
        try:
            test = cancel_test(conn, test_id, by=by, reason=reason, now=datetime.now(UTC))
        except SwitchTestError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"test {test_id} {test.detail}")


@switches_app.command("test-result")
def switches_test_result(
    test_id: TestId,
    result: Annotated[SwitchTestResult, typer.Option(help="What was seen on site: the switch's state from now on.")],
    note: Annotated[str, typer.Option(help="What was seen (kept in the switch's history).")],
    by: By,
) -> None:
    """Record the switch commissioned (after a test that passed) or failed, with a note, once the steps are over."""
    from headend.commissioning.operations import SwitchTestError, record_result

    with database(load_settings()) as conn:
        try:
            test = record_result(conn, test_id, result, note, by=by, now=datetime.now(UTC))
        except SwitchTestError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"switch {test.switch_id} {test.result} (test {test_id}) by {test.result_by}")
