"""`headend migrate`: create or upgrade the database schema."""

from __future__ import annotations

import typer

from headend.cli.common import load_settings


def migrate() -> None:
    """Create or upgrade the database schema as its owner (TimescaleDB or partitions), then apply the roles' grants."""
    from headend.db.connection import migration_url
    from headend.db.migrate import migrate as run_migrations

    settings = load_settings()
    with migration_url(settings) as url:
        run_migrations(
            url,
            require_timescaledb=settings.require_timescaledb,
            collection_timezone=settings.timezone,
            role_prefix=settings.db_role_prefix,
        )
    typer.echo("schema is up to date")
