"""Night QA report command: ``zsds report NIGHT``.

:func:`register` adds it to the main Typer app (listed in ``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def report_cmd(
    night: str = typer.Argument(..., help="Night YYYYMMDD (UTC date)."),
    outdir: Optional[Path] = typer.Option(None, "--outdir",
                                          help="Output folder (default <archive>/reports/NIGHT)."),
    open_path: bool = typer.Option(False, "--open-path",
                                   help="Print only the file:// URI of the page (to open it)."),
):
    """Write the night QA report: index.html (self-contained), report.json and the figures.

    Prints the overall verdict (green/amber/red), the quadrant counts and the page's path.
    """
    from .cli import state
    from .qa.report import make_night_report

    if len(night) != 8 or not night.isdigit():
        raise typer.BadParameter(f"NIGHT must be YYYYMMDD, not {night!r}")
    page = make_night_report(night, state.config, outdir=outdir)
    if open_path:
        typer.echo(page.resolve().as_uri())
        return
    numbers = json.loads((page.parent / "report.json").read_text())
    c = numbers["counts"]
    typer.echo(f"night {night}: {numbers['status'].upper()}; {c['planned']} quadrants planned, "
               f"{c['good']} good, {c['bad']} bad, {c['failed']} failed, {c['pending']} pending; "
               f"{len(numbers['red_exposures'])} exposure(s) flagged red")
    typer.echo(str(page))


def register(app: typer.Typer) -> None:
    """Add ``zsds report`` to the main app."""
    app.command("report")(report_cmd)
