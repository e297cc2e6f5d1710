"""Archive API commands: ``zsds serve`` and ``zsds token issue|revoke|list``.

:func:`register` adds them to the main Typer app (listed in
``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

from typing import Optional

import typer

__all__ = ["register"]

token_app = typer.Typer(help="API tokens of the archive API (stored hashed).", no_args_is_help=True)


def serve_cmd(
    host: Optional[str] = typer.Option(None, "--host", help="Listen address (default: api.host)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535,
                                       help="TCP port (default: api.port)."),
):
    """Serve the HTTP archive API (FastAPI on uvicorn); OpenAPI at /openapi.json."""
    import uvicorn

    from .api.app import create_app
    from .cli import state

    config = state.config
    uvicorn.run(create_app(config), host=host or config.api.host, port=port or config.api.port,
                log_level=config.logging.level.lower())


def _engine():
    from .cli import state
    from .db.ops import engine_from_config

    return engine_from_config(state.config)


@token_app.command("issue")
def issue_cmd(
    name: str = typer.Argument(..., help="Holder of the token."),
    programs: str = typer.Option("1", "--programs", help="Entitled programids, e.g. 2,3."),
):
    """Create a token and print it (once: only its sha256 hash is stored)."""
    from .api.access import issue_token

    try:
        token = issue_token(_engine(), name, programs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(token)


@token_app.command("revoke")
def revoke_cmd(name_or_token: str = typer.Argument(..., help="Holder name or the token itself.")):
    """Revoke tokens at once (exit 1 if none matched)."""
    from .api.access import revoke_token

    n = revoke_token(_engine(), name_or_token)
    typer.echo(f"revoked {n} token(s)")
    raise typer.Exit(0 if n else 1)


@token_app.command("list")
def list_cmd():
    """List tokens: id, name, programs, created, revoked."""
    from .api.access import list_tokens

    for row in list_tokens(_engine()):
        revoked = row["revoked_at"].isoformat() if row["revoked_at"] else "active"
        created = row["created_at"].isoformat() if row["created_at"] else "-"
        typer.echo(f"{row['id']}\t{row['name']}\tprograms={row['programs']}\t{created}\t{revoked}")


def register(app: typer.Typer) -> None:
    """Add ``zsds serve`` and ``zsds token`` to the main app."""
    app.command("serve")(serve_cmd)
    app.add_typer(token_app, name="token")
