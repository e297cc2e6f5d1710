"""Reference-image commands: ``zsds refimg build``.

:func:`register` adds them to the main Typer app (listed in ``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

from typing import Optional

import typer

__all__ = ["register"]

refimg_app = typer.Typer(help="Reference images (co-adds).", no_args_is_help=True)


@refimg_app.command("build")
def build_cmd(
    field: Optional[int] = typer.Option(None, "--field", help="Field ID (default: all)."),
    filter_code: Optional[str] = typer.Option(None, "--filter", help="zg, zr or zi (default: all)."),
    ccd: Optional[int] = typer.Option(None, "--ccd", help="CCD 1-16 (default: all)."),
    qid: Optional[int] = typer.Option(None, "--qid", help="Quadrant 1-4 (default: all)."),
    min_frames: int = typer.Option(15, "--min-frames", min=1, help="Fewest good epochal images."),
    local: bool = typer.Option(False, "--serial", help="Run in this process, without Dask."),
):
    """Build or update the references of quadrants with enough good images.

    Exit status: 0 all built or unchanged, 1 some failed, 2 nothing to build.
    """
    from .cli import state
    from .stages.refimg import build_references

    config = state.config
    if local:
        outcomes = build_references(config, field=field, filter_code=filter_code, ccd=ccd,
                                    qid=qid, min_frames=min_frames)
    else:
        from .pipeline.cluster import open_client

        with open_client(config) as client:
            outcomes = build_references(config, field=field, filter_code=filter_code, ccd=ccd,
                                        qid=qid, min_frames=min_frames, client=client)
    if not outcomes:
        typer.echo(f"no quadrant has {min_frames} good images", err=True)
        raise typer.Exit(2)
    for o in outcomes:
        head = f"{o['status']:<9} field {o['field_id']} {o['filter_code']} c{o['ccd_id']:02d} q{o['qid']}"
        tail = o.get("error") or f"v{o['version']} {o['n_frames']} frames {o['path']}"
        typer.echo(f"{head} {tail}")
    raise typer.Exit(1 if any(o["status"] == "failed" for o in outcomes) else 0)


def register(app: typer.Typer) -> None:
    """Add ``zsds refimg`` to the main app."""
    app.add_typer(refimg_app, name="refimg")
