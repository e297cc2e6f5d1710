"""``zsds run-night`` and ``zsds plan``: the night runner on Dask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def _night(value: str) -> str:
    if len(value) != 8 or not value.isdigit():
        raise typer.BadParameter(f"NIGHT must be YYYYMMDD, not {value!r}")
    return value


def _ints(value: Optional[str], name: str) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated integers, not {value!r}") from None


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``zsds`` app."""
    from .cli import state

    @app.command("run-night")
    def run_night_cmd(
        night: str = typer.Argument(..., callback=_night, help="Night YYYYMMDD (UTC date)."),
        incoming: Optional[Path] = typer.Option(None, help="Folder of raw files; the night's "
                                                "files are ingested first."),
        cluster: Optional[str] = typer.Option(None, help="local, slurm or tcp://host:port "
                                              "(default: config dask.cluster)."),
        force: bool = typer.Option(False, help="Reprocess quadrants already done."),
        print_job_script: bool = typer.Option(False, "--print-job-script",
                                              help="Print the SLURM job script and exit."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        ccds: Optional[str] = typer.Option(None, help="Only these CCDs, e.g. 1,2,13."),
        quads: Optional[str] = typer.Option(None, help="Only these quadrants, e.g. 3."),
    ):
        """Process a night: ingest, calibrations, then every readout quadrant on Dask."""
        from .pipeline.cluster import slurm_job_script
        from .pipeline.night import run_night

        config = state.config
        if cluster:
            config = config.model_copy(update={"dask": config.dask.model_copy(update={"cluster": cluster})})
            type(config.dask).model_validate(config.dask.model_dump())
        if print_job_script:
            typer.echo(slurm_job_script(config))
            raise typer.Exit(0)
        report = run_night(night, config, incoming=incoming, force=force, progress=progress,
                           ccds=_ints(ccds, "--ccds"), quads=_ints(quads, "--quads"))
        typer.echo(report.summary())
        raise typer.Exit(0 if report.count("failed") == 0 else 1)

    @app.command("watch")
    def watch_cmd(
        incoming: Path = typer.Argument(..., exists=True, file_okay=False,
                                        help="Folder the camera writes raw files to."),
        poll: float = typer.Option(1.0, min=0.1, help="Polling interval, s."),
        settle: float = typer.Option(2.0, min=0.0, help="A file is complete when unchanged this long, s."),
        max_idle: Optional[float] = typer.Option(None, help="Stop after this long without new files, s."),
    ):
        """Real-time mode: ingest files as they land and process their quadrants at once."""
        from .pipeline.watch import watch

        report = watch(incoming, state.config, poll_s=poll, settle_s=settle, max_idle_s=max_idle)
        typer.echo(report.summary())

    @app.command("plan")
    def plan_cmd(
        night: str = typer.Argument(..., callback=_night, help="Night YYYYMMDD (UTC date)."),
        force: bool = typer.Option(False, help="Plan as if --force were given."),
        ccds: Optional[str] = typer.Option(None, help="Only these CCDs, e.g. 1,2,13."),
        quads: Optional[str] = typer.Option(None, help="Only these quadrants, e.g. 3."),
    ):
        """Dry run: what run-night would process, on which calibrations, what is done."""
        from .pipeline.night import plan_night

        typer.echo(plan_night(night, state.config, force=force, ccds=_ints(ccds, "--ccds"),
                              quads=_ints(quads, "--quads")).summary())
