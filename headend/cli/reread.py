"""`headend reread`: ask meters again for the load points they missed (补抄), as a tracked task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headend.cli.common import database, fail, instant, load_settings, table

MAX_FILE_BYTES = 10 * 1024 * 1024


def _meter_ids(path: Path) -> list[str]:
    """Meter ids from a file: one a line (or the first column of a CSV whose header names `meter_id`); # comments."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"{path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        cell = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not cell or (number == 1 and cell == "meter_id"):
            continue
        ids.append(cell)
    if not ids:
        raise fail(f"{path} names no meter")
    return ids


def reread_command(
    meter: Annotated[str | None, typer.Option("--meter", metavar="METER", help="Re-read this meter.")] = None,
    concentrator: Annotated[
        list[str] | None,
        typer.Option("--concentrator", metavar="DCU", help="Re-read every active meter behind it (repeatable)."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", metavar="FILE", help="Re-read the meters listed (one id a line).")
    ] = None,
    from_: Annotated[
        str, typer.Option("--from", metavar="TIME", help="Start, ISO 8601; without an offset local (HEADEND_TIMEZONE).")
    ] = "",
    to: Annotated[str | None, typer.Option("--to", metavar="TIME", help="End (exclusive); default now.")] = None,
    queue: Annotated[
        bool, typer.Option("--queue", help="Only ask: the running `headend poll` worker takes the task.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the task and its outcome as one JSON object.")] = False,
) -> None:
    """Re-read meters for [--from, --to): polled meters are asked now (DL/T 645 for their daily freezes), MQTT meters
    and concentrators get a `read_readings` command; prints what each meter recovered."""
    import asyncio
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from headend.db.connection import database_url
    from headend.reread.mqtt_requester import LazyMqttRequester
    from headend.reread.service import run_task_here
    from headend.reread.states import Scope
    from headend.reread.tasks import RereadError, create_task, load_task
    from headend.runtime.signals import stop_on_signals

    chosen = [name for name, given in (("--meter", meter), ("--concentrator", concentrator), ("--file", file)) if given]
    if len(chosen) != 1:
        raise typer.BadParameter("name exactly one of --meter, --concentrator, --file", param_hint="--meter")
    if not from_:
        raise typer.BadParameter("the start of the range is required", param_hint="--from")
    settings = load_settings()
    zone = ZoneInfo(settings.timezone)
    from_at, to_at = instant(from_, "--from", zone), instant(to, "--to", zone)
    if meter:
        scope, ids = Scope.METER, [meter]
    elif concentrator:
        scope, ids = Scope.CONCENTRATOR, list(concentrator)
    else:
        assert file is not None
        scope, ids = Scope.LIST, _meter_ids(file)
    with database(settings) as conn:
        try:
            task = create_task(conn, scope, ids, from_at, to_at, by="cli", now=datetime.now(UTC))
        except RereadError as exc:
            raise fail(str(exc)) from None
    if not queue:
        with database_url(settings) as url, stop_on_signals() as stop, LazyMqttRequester(settings) as requester:
            asyncio.run(run_task_here(settings, url, task.task_id, requester, stop))
        with database(settings) as conn:
            loaded = load_task(conn, task.task_id)
        assert loaded is not None
        task = loaded
    if as_json:
        typer.echo(json.dumps(task.to_json(zone), ensure_ascii=False))
        return
    typer.echo(
        f"{task.task_id}: {task.state}, {task.meters_total} meter(s), {task.intervals_recovered} of "
        f"{task.intervals_missing} missing load point(s) recovered"
        + (f" ({task.detail})" if task.detail else "")
        + (" — queued for the `headend poll` worker" if queue else "")
    )
    rows = [
        [
            m.meter_id,
            str(m.path),
            str(m.state),
            f"{m.intervals_recovered}/{m.intervals_missing}",
            m.detail or "",
        ]
        for m in task.meters
    ]
    if rows:
        typer.echo(table(["meter", "asked by", "state", "recovered", "detail"], rows))
