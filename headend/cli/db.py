"""`headend db roles`: the database roles the head-end's services connect as, created by an administrator."""

from __future__ import annotations

import typer

from headend.cli.common import command_group, fail, load_settings

db_app = command_group("The database's roles: least privilege for every service.")

# who connects as each role (headend.db.grants.DbRole), in the order printed
USED_BY = {
    "owner": "headend migrate (owns the schema)",
    "ingest": "headend ingest",
    "engine": "headend engine, headend settle",
    "dispatch": "headend dispatch",
    "api": "headend serve",
    "reporting": "dashboards (reads only)",
    "operator": "the other commands (meters, tariff, account, pay, command, api-token, …)",
}


@db_app.command("roles")
def roles_command() -> None:
    """Create or update the roles and their grants (passwords from HEADEND_DB_PASSWORD_*); print each service's URL."""
    from headend.db.connection import database_urls
    from headend.db.grants import DbRole
    from headend.db.roles import Password, password_variable, printable_url, setup_roles

    settings = load_settings()
    passwords = {}
    for role in DbRole:
        secret = getattr(settings, f"db_password_{role.value}")
        if secret is not None and secret.get_secret_value():
            passwords[role] = secret.get_secret_value()
    if settings.db_admin_url:
        admin_url = settings.db_admin_url
        done = setup_roles(admin_url, settings.db_role_prefix, passwords)
    elif settings.database_url:
        raise fail(
            "set HEADEND_DB_ADMIN_URL to a superuser's URL of the database (HEADEND_DATABASE_URL is a service's)"
        )
    else:
        with database_urls(settings) as urls:  # the embedded server, as its superuser
            assert urls.admin is not None
            admin_url = urls.admin
            done = setup_roles(admin_url, settings.db_role_prefix, passwords)
    created = [r.name for r in done.roles if r.created]
    typer.echo(f'database "{done.database}": roles {", ".join(r.name for r in done.roles)}')
    if created:
        typer.echo(f"created {', '.join(created)}")
    if done.timescaledb_created:
        typer.echo("created the timescaledb extension (the owner role can't)")
    if done.handed_over:
        typer.echo(f"handed {len(done.handed_over)} objects of the schema over to the owner role")
    typer.echo("grants applied" + (f"; none decided for {', '.join(done.undecided)}" if done.undecided else ""))
    typer.echo("")
    typer.echo("HEADEND_DATABASE_URL of each service:")
    for outcome in done.roles:
        note = {
            Password.SET: f"password set from {password_variable(outcome.role)}",
            Password.KEPT: f"password kept ({password_variable(outcome.role)} not given)",
            Password.NONE: "no password: logs in only by certificate, peer or trust authentication",
        }[outcome.password]
        url = printable_url(admin_url, outcome.role, outcome.name, outcome.password is not Password.NONE)
        typer.echo(f"  {outcome.role.value:<9}  {USED_BY[outcome.role.value]}; {note}")
        typer.echo(f"             {url}")
