"""Lightcurve commands: ``zsds lightcurves build`` and ``zsds lightcurves cone``.

:func:`register` adds them to the main Typer app (listed in ``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

from typing import Optional

import typer

__all__ = ["register"]

lightcurves_app = typer.Typer(help="Lightcurves (matched PSF photometry, metrics).", no_args_is_help=True)


@lightcurves_app.command("build")
def build_cmd(
    start: str = typer.Option(..., "--start", help="First night, YYYYMMDD."),
    end: str = typer.Option(..., "--end", help="Last night, YYYYMMDD (inclusive)."),
    order: Optional[int] = typer.Option(None, "--order", min=0, max=19,
                                        help="HEALPix order of a new store (default: from the quadrant size)."),
    serial: bool = typer.Option(False, "--serial", help="Run in this process, without Dask."),
):
    """Build or incrementally update the lightcurve store from a range of nights.

    Exit status: 0 all partitions built, updated or unchanged; 1 some failed; 2 nothing to do.
    """
    from .cli import state
    from .stages.lightcurves import build_lightcurves

    config = state.config
    if serial:
        result = build_lightcurves(config, start_night=start, end_night=end, order=order)
    else:
        from .pipeline.cluster import open_client

        with open_client(config) as client:
            result = build_lightcurves(config, start_night=start, end_night=end, order=order,
                                       client=client)
    if not result.partitions:
        typer.echo(f"no calibrated quadrants between {start} and {end}", err=True)
        raise typer.Exit(2)
    for p in result.partitions:
        tail = p.get("error") or (f"{p['n_objects']} objects (+{p['n_new_objects']}), "
                                  f"{p['n_detections']} detections, {p['n_new_epochs']} new epochs")
        typer.echo(f"{p['status']:<9} {p['part']} {tail}")
    typer.echo(f"store {result.store.root} (HEALPix order {result.order})")
    raise typer.Exit(1 if result.n_failed else 0)


@lightcurves_app.command("cone")
def cone_cmd(
    ra: float = typer.Argument(..., help="Right ascension, deg."),
    dec: float = typer.Argument(..., help="Declination, deg."),
    radius_arcsec: float = typer.Argument(..., help="Radius, arcsec."),
    detections: bool = typer.Option(False, "--detections", help="Print the detections too."),
    fmt: str = typer.Option("csv", "--format", help="csv or table."),
):
    """Objects (and detections) within a radius; prints CSV like the IRSA lightcurve API."""
    from .cli import state
    from .io.lcstore import FileOpenCounter, LightcurveStore, cone_search
    from .io.paths import ArchiveLayout

    store = LightcurveStore(ArchiveLayout(state.config.archive.root).lightcurves_dir)
    if not store.exists():
        typer.echo(f"no lightcurve store at {store.root}; run zsds lightcurves build", err=True)
        raise typer.Exit(2)
    counter = FileOpenCounter()
    res = cone_search(store, ra, dec, radius_arcsec, detections=detections, counter=counter,
                      columns=["filter_code", "field_id", "ccd_id", "qid", "ngoodobs", "lc_median",
                               "lc_standard_deviation", "ls_period_1"])
    table = res.detections if detections else res.objects
    typer.echo(table.to_csv(index=False) if fmt == "csv" else table.to_string(index=False))
    typer.echo(f"{len(res.objects)} objects; {counter.count} files opened", err=True)


def register(app: typer.Typer) -> None:
    """Add ``zsds lightcurves`` to the main app."""
    app.add_typer(lightcurves_app, name="lightcurves")
