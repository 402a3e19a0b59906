"""Set-up mistakes as one line on stderr: what is wrong and what to do, a non-zero exit, no traceback.

The root command group (`ExplainingGroup`) catches what a command raises and explains the mistakes it knows: the
typed errors of `headend.db.errors`, a bad `HEADEND_*` setting, and (as a fallback) the driver's "relation does not
exist" and connection errors. `--log-level debug` prints the traceback first. Anything else propagates unchanged.

Only the standard library and typer are imported here: the driver's and pydantic's exception classes are looked up
in `sys.modules` when an exception happens (an exception of a library means that library is loaded).
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from headend.db.errors import InvalidDatabaseURLError, SetupError

FAILURE = 1
USAGE = 2  # a bad setting, like a bad argument
_MIGRATE = "run `headend migrate` first"
_SECRET_FIELDS = re.compile(r"password|secret|token|url", re.IGNORECASE)


class ExplainingGroup(TyperGroup):
    """A command group that turns known set-up mistakes raised by its commands into one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; explain a set-up mistake instead of a traceback (shown too at --log-level debug)."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            explained = explain(exc)
            if explained is None:
                raise
            message, code = explained
            if str(ctx.params.get("log_level", "")) == "debug":
                traceback.print_exception(exc)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None


def explain(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code of a known set-up mistake, or None for any other exception."""
    if type(exc).__module__.split(".")[0] in {"typer", "click"}:
        return None  # usage errors and exits: typer prints those itself
    for link in _causes(exc):
        if isinstance(link, SetupError):
            return str(link), USAGE if isinstance(link, InvalidDatabaseURLError) else FAILURE
        message = _settings_message(link)
        if message is not None:
            return message, USAGE
        message = _driver_message(link)
        if message is not None:
            return message, FAILURE
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling (SQLAlchemy wraps the driver's error as the cause)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def _settings_message(exc: BaseException) -> str | None:
    """`HEADEND_X='value': problem` for each invalid field of the settings, or None if `exc` is not about them."""
    pydantic_core = sys.modules.get("pydantic_core")
    settings = sys.modules.get("headend.settings")
    if pydantic_core is None or settings is None or not isinstance(exc, pydantic_core.ValidationError):
        return None
    if exc.title != settings.Settings.__name__:
        return None
    prefix = settings.Settings.model_config.get("env_prefix", "")
    problems = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error["loc"])
        problem = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        if not field:  # a check across settings names them itself
            problems.append(problem)
            continue
        shown = "" if _SECRET_FIELDS.search(field) or not isinstance(value, str) or value in problem else f"={value!r}"
        problems.append(f"{prefix}{field.upper()}{shown}: {problem[:1].lower()}{problem[1:]}")
    settings_word = "setting" if len(problems) == 1 else "settings"
    return f"invalid {settings_word} {'; '.join(problems)}; correct the environment or .env"


def _driver_message(exc: BaseException) -> str | None:
    """The fallbacks on the driver's errors that checks at start-up did not catch first."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return None
    if isinstance(exc, psycopg.errors.UndefinedTable):
        detail = str(exc).strip().splitlines()[0]
        return f"the database schema is not migrated or incomplete ({detail}); {_MIGRATE}"
    if isinstance(exc, psycopg.OperationalError) and str(exc).startswith("connection failed:"):
        reason = str(exc).strip().splitlines()[0].removeprefix("connection failed: ")
        return f"cannot connect to the database ({reason}); check HEADEND_DATABASE_URL and that PostgreSQL is running"
    return None
