"""Run the Alembic migrations (to head, or back to a revision), serialised by an advisory lock."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from headend.db.engine import make_engine, normalise_url

_MIGRATION_LOCK_KEY = 0x6865_6164  # any constant: only migrators take it


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", "headend:migrations")
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, *, require_timescaledb: bool, collection_timezone: str) -> None:
    """Upgrade the schema at `url` to the newest revision."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            cfg.attributes["require_timescaledb"] = require_timescaledb
            cfg.attributes["collection_timezone"] = collection_timezone
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Take the schema at `url` back to `revision` (`base`: nothing), dropping what later revisions made."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()
