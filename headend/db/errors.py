"""Set-up mistakes the database layer detects: each message says what is wrong and what to do.

Only the standard library here: the command line imports these classes to recognise them without loading a driver.
"""

from __future__ import annotations


class SetupError(Exception):
    """A set-up mistake an operator can fix; `str()` is one line saying what is wrong and what to do."""


class InvalidDatabaseURLError(SetupError, ValueError):
    """HEADEND_DATABASE_URL is not a PostgreSQL URL."""


class DatabaseUnavailableError(SetupError):
    """The database server cannot be reached, or refuses the connection."""


class DatabaseMissingError(SetupError):
    """The server is up but the database named in the URL does not exist."""


class SchemaNotReadyError(SetupError):
    """The database is not migrated to the revision this headend needs."""


class TimescaleDBUnavailableError(SetupError):
    """TimescaleDB is required (HEADEND_REQUIRE_TIMESCALEDB) but cannot be loaded on this server."""
