"""Run the Alembic migrations (to head, or back to a revision), serialised by an advisory lock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from headend.db.engine import make_engine, normalise_url
from headend.db.grants import DEFAULT_ROLE_PREFIX, DbRole, apply_grants, role_name
from headend.db.readiness import connection_failure

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6865_6164  # any constant: only migrators (and `headend db roles` applying grants) take it


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", "headend:migrations")
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(
    url: str, *, require_timescaledb: bool, collection_timezone: str, role_prefix: str = DEFAULT_ROLE_PREFIX
) -> None:
    """Upgrade the schema at `url` to the newest revision, then give every service role its grants.

    The grants are applied on every run, in the migration's transaction: a table a revision added gets them at once,
    and a privilege changed by hand is put back to what headend.db.grants says.
    """

    def upgrade(cfg: Config) -> None:
        command.upgrade(cfg, "head")
        _grant(cfg.attributes["connection"], role_prefix)

    _locked(url, upgrade, require_timescaledb=require_timescaledb, collection_timezone=collection_timezone)


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
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            cfg.attributes.update(attributes)
            step(cfg)
    finally:
        engine.dispose()


def _grant(connection: Any, role_prefix: str) -> None:
    """Apply the grants map through the migration's own connection (and transaction)."""
    names = {role: role_name(role_prefix, role) for role in DbRole}
    applied = apply_grants(connection.connection.driver_connection, names)
    if applied.missing_roles:
        log.warning(
            "no database role %s: services can't use this schema under their own roles until `headend db roles` "
            "creates them (then migrate again, or let it apply the grants)",
            ", ".join(applied.missing_roles),
        )
    if applied.undecided:
        log.warning(
            "no grants decided for %s (headend.db.grants): no service role may use them", ", ".join(applied.undecided)
        )
