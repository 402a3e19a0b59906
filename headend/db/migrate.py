"""Run the Alembic migrations (to head, or back to a revision), serialised by an advisory lock."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from headend.db.engine import make_engine, normalise_url
from headend.db.readiness import connection_failure

_MIGRATION_LOCK_KEY = 0x6865_6164  # any constant: only migrators take it


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", "headend:migrations")
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, *, require_timescaledb: bool, collection_timezone: str) -> None:
    """Upgrade the schema at `url` to the newest revision."""
    _locked(
        url,
        lambda cfg: command.upgrade(cfg, "head"),
        require_timescaledb=require_timescaledb,
        collection_timezone=collection_timezone,
    )


def downgrade(url: str, revision: str) -> None:
    """Take the schema at `url` back to `revision` (`base`: nothing), dropping what later revisions made."""
    _locked(url, lambda cfg: command.downgrade(cfg, revision))


def _locked(url: str, step: Callable[[Config], None], **attributes: object) -> None:
    """Run an Alembic `step` in one transaction holding the migration lock; `attributes` reach the migrations."""
    engine = make_engine(url, pool_size=1)
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:
            if isinstance(exc.orig, psycopg.OperationalError):
                raise connection_failure(url, exc.orig) from exc
            raise
        with connection as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            cfg.attributes.update(attributes)
            step(cfg)
    finally:
        engine.dispose()
