"""Tell an error caused by the rows being written from a database that is down, and word it as a refusal."""

from __future__ import annotations

import psycopg

# SQLSTATE classes of errors caused by the rows themselves: 22 data exception (a value out of range, a character
# the encoding lacks, a division by zero in a constraint), 23 integrity constraint violation, 54 program limit
# exceeded (an index entry too large). Every other class (08 connection, 40 transaction rollback, 53 resources,
# 57 operator intervention, 42 a schema not migrated yet …) is the database's, and worth retrying.
_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def is_data_fault(exc: BaseException) -> bool:
    """Whether `exc`, raised while writing rows, is the fault of the rows (writing them again fails again)."""
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is not None:
            return exc.sqlstate[:2] in _DATA_SQLSTATE_CLASSES
        return isinstance(exc, psycopg.DataError)  # refused before it was sent, e.g. NUL in a text parameter
    # raised on the way to the database by a conversion (an encoder, a dumper, datetime arithmetic)
    return isinstance(exc, ValueError | TypeError | ArithmeticError | RecursionError)


def refusal_reason(exc: BaseException, failed: str) -> str:
    """A dead letter's reason for rows refused with `exc`: the error's first line (and SQLSTATE); `failed` says
    what could not be done with them otherwise ("could not be stored")."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, psycopg.Error):
        sqlstate = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        return f"refused by the database: {first_line}{sqlstate}"
    return f"{failed}: {type(exc).__name__}: {first_line}"
