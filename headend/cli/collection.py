"""`headend collection-report`: how completely the fleet was read on a day, at the first pass and after re-reads."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from headend.cli.common import database, load_settings, local_day
from headend.reports.grouping import GroupBy


def collection_report_command(
    day: Annotated[str, typer.Option("--date", help="Local day, YYYY-MM-DD (in HEADEND_TIMEZONE).")],
    by: Annotated[GroupBy | None, typer.Option(help="Break down by concentrator or region.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    unread_limit: Annotated[int, typer.Option(min=0, help="How many unread meters to list.")] = 50,
) -> None:
    """Collection success for a day: meters expected, read, with all 96 intervals, rate, worst first; for a re-read
    day its first pass beside it; unread polled meters with their last failed poll."""
    from headend.reports.collection import collection_report, format_report

    report_day = local_day(day)
    settings = load_settings()
    with database(settings) as conn:
        report = collection_report(conn, report_day, group_by=by, unread_limit=unread_limit)
    if report.timezone != settings.timezone:
        typer.echo(
            f"note: days are those of {report.timezone}, the zone the database's daily statistics were kept in "
            f"(HEADEND_TIMEZONE is {settings.timezone})",
            err=True,
        )
    typer.echo(json.dumps(report.to_json(), ensure_ascii=False) if as_json else format_report(report))
