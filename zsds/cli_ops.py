"""Operations commands: ``zsds ingest``, ``zsds calib bias NIGHT``, ``zsds calib flat NIGHT``.

:func:`register` adds them to the main Typer app (called from :mod:`zsds.cli`). Each prints a
concise line per file or product and exits non-zero when something failed.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def _config():
    from .cli import state
    return state.config


def _night(night: str) -> str:
    if len(night) != 8 or not night.isdigit():
        raise typer.BadParameter(f"NIGHT must be YYYYMMDD, not {night!r}")
    return night


def ingest_cmd(
    paths: list[Path] = typer.Argument(..., help="Raw files or folders (searched for *.fits.fz)."),
    move: bool = typer.Option(False, "--move", help="Remove sources once archived."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
):
    """Validate, archive (raw/) and register raw files; quarantine bad ones.

    Exit status: 0 all files ingested or already present, 1 some quarantined or failed,
    2 nothing found.
    """
    from .stages.ingest import expand_paths, ingest

    if not expand_paths(paths):
        typer.echo("no raw files found in " + ", ".join(map(str, paths)), err=True)
        raise typer.Exit(2)
    report = ingest(paths, _config(), move=move)
    for r in report.results:
        if r.status in ("ingested", "unchanged") and quiet:
            continue
        line = f"{r.status:<11} {r.source}"
        typer.echo(line + (f": {r.reason}" if r.reason else ""))
    typer.echo(report.summary(), err=True)
    raise typer.Exit(0 if report.ok else 1)


def _print_products(report):
    for caltype, fc, ccd, qid, path, status in report.products:
        typer.echo(f"{status:<8} {caltype:<10} {fc} c{ccd:02d} q{qid} {path}")
    typer.echo(report.summary(), err=True)


def calib_bias_cmd(night: str = typer.Argument(..., help="Night YYYYMMDD (UTC).")):
    """Master bias (+ unc, log) per CCD quadrant from the night's bias frames."""
    from .stages.calib import make_bias

    _print_products(make_bias(_night(night), _config()))


def calib_flat_cmd(night: str = typer.Argument(..., help="Night YYYYMMDD (UTC).")):
    """Hi-freq flat (+ unc, log) and bad-pixel mask per CCD quadrant and filter."""
    from .stages.calib import make_flat

    _print_products(make_flat(_night(night), _config()))


def register(app: typer.Typer) -> None:
    """Add ``ingest`` and ``calib {bias,flat}`` to ``app``."""
    app.command("ingest")(ingest_cmd)
    calib = typer.Typer(help="Calibration products of a night.", no_args_is_help=True)
    calib.command("bias")(calib_bias_cmd)
    calib.command("flat")(calib_flat_cmd)
    calib.command("lowflat")(calib_lowflat_cmd)
    app.add_typer(calib, name="calib")


def calib_lowflat_cmd(
    night: str = typer.Argument(..., help="Last night of the window, YYYYMMDD."),
    days: float = typer.Option(30.0, min=1.0, help="Window of calibrated exposures, days."),
    degree: int = typer.Option(3, min=1, max=6, help="Degree of the 2-D polynomial."),
):
    """Low-frequency flats from the photometric residuals of calibrated exposures."""
    from .cli import state
    from .stages.lowflat import make_lowflats

    report = make_lowflats(night, state.config, days=days, degree=degree)
    for line in report.made:
        typer.echo(f"made     {line}")
    for line in report.skipped:
        typer.echo(f"skipped  {line}")
    typer.echo(report.summary())
