"""``zsds db``: the operations database (schema upgrades).

:func:`register` adds the sub-app to the main CLI (listed in
``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

import typer

__all__ = ["register", "db_app"]

db_app = typer.Typer(help="The operations database.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the DDL without running it."),
):
    """Create missing tables, columns and indexes; record the schema version (idempotent).

    Run once after installing a new zsds version, before starting the services. Exit status
    0 when the database is (or would be) up to date; errors name what cannot be upgraded.
    """
    from .cli import state
    from .db.migrate import upgrade
    from .db.ops import make_engine

    engine = make_engine(state.config.database_url)
    try:
        plan = upgrade(engine, dry_run=dry_run)
        where = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    for statement in plan.statements:
        typer.echo(statement.rstrip() + ";")
    for name in plan.extra:
        typer.echo(f"-- extra (left alone): {name}", err=True)
    if plan.up_to_date:
        typer.echo(f"{where}: up to date (schema version {plan.target_version})", err=True)
    else:
        verb = "would apply" if dry_run else "applied"
        typer.echo(f"{where}: {verb} {len(plan.statements)} statement(s); schema version "
                   f"{plan.stored_version or 'none'} -> {plan.target_version}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``zsds db`` to the main app."""
    app.add_typer(db_app, name="db")
