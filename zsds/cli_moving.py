"""Moving-object commands: ``zsds moving link``.

:func:`register` adds them to the main Typer app (listed in ``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]

moving_app = typer.Typer(help="Moving objects (known-object tagging, linking, MPC export).",
                         no_args_is_help=True)


def _nights(text: str) -> list[str]:
    nights = [n.strip() for n in text.split(",") if n.strip()]
    if not nights or any(len(n) != 8 or not n.isdigit() for n in nights):
        raise typer.BadParameter(f"--nights must be YYYYMMDD,YYYYMMDD,..., not {text!r}")
    return nights


@moving_app.command("link")
def link_cmd(
    nights: str = typer.Option(..., "--nights", help="Nights YYYYMMDD, comma-separated."),
    candidates: Optional[Path] = typer.Option(
        None, "--candidates",
        help="Candidate table (Parquet or CSV); default: the candidates and streaks of the "
             "operations database."),
    orbits: Optional[Path] = typer.Option(
        None, "--orbits",
        help="Known-asteroid orbit file (CSV or Parquet); default: moving.orbits_path."),
    local: bool = typer.Option(False, "--serial", help="Run in this process, without Dask."),
):
    """Tag known asteroids, link unknown moving objects over the nights, fit their orbits.

    Writes ``moving/<last night>/tracks.parquet`` and ``tracks_mpc.txt`` under the archive
    root. Exit status: 0 tracks found, 2 none.
    """
    from .cli import state
    from .stages.moving import link_moving_objects, tracks_dir

    config = state.config
    night_list = _nights(nights)
    if local:
        tracks = link_moving_objects(config, night_list, candidates=candidates, orbits=orbits)
    else:
        from .pipeline.cluster import open_client

        with open_client(config) as client:
            tracks = link_moving_objects(config, night_list, client, candidates=candidates,
                                         orbits=orbits)
    cands = tracks.attrs["candidates"]
    typer.echo(f"{len(cands)} candidates, {int(cands['ssnamenr'].notna().sum())} tagged known, "
               f"{len(tracks)} tracks -> {tracks_dir(config.archive.root, max(night_list))}")
    raise typer.Exit(0 if len(tracks) else 2)


def register(app: typer.Typer) -> None:
    """Add ``zsds moving`` to the main app."""
    app.add_typer(moving_app, name="moving")
