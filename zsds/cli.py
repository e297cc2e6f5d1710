"""The ``zsds`` command line.

Every command reads the configuration once (``--config FILE`` or ``$ZSDS_CONFIG``, then
``ZSDS__SECTION__KEY`` environment overrides) and reports errors in one line naming the file,
keyword or configuration key concerned.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import ZsdsConfig, load_config
from .errors import ZsdsError

__all__ = ["app", "main"]

app = typer.Typer(help="zsds: survey science data system for a ZTF-like camera.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

log = logging.getLogger("zsds")


class _State:
    config_path: Optional[Path] = None
    _config: Optional[ZsdsConfig] = None

    @property
    def config(self) -> ZsdsConfig:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


state = _State()


def _setup_logging(level: str):
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")


@app.callback()
def _main(
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="ZSDS_CONFIG",
                                          help="YAML configuration file."),
    log_level: Optional[str] = typer.Option(None, "--log-level",
                                            help="DEBUG, INFO, WARNING or ERROR (default: config)."),
):
    """zsds: survey science data system for a ZTF-like wide-field camera."""
    state.config_path = config
    state._config = None
    level = log_level
    if level is None:
        try:
            level = state.config.logging.level
        except ZsdsError:
            level = "INFO"
    _setup_logging(level)


@config_app.command("show")
def config_show():
    """Print the effective configuration (defaults, file and environment merged)."""
    typer.echo(state.config.as_yaml(), nl=False)


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be a comma-separated list of integers, "
                                 f"not {text!r}") from None


def _quad_size(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--quad-size must be COLSxROWS (e.g. 3072x3080), not {text!r}") from None
    if cols < 64 or rows < 64:
        raise typer.BadParameter("--quad-size: quadrants need at least 64 x 64 pixels")
    return rows, cols


@app.command()
def simulate(
    outdir: Path = typer.Argument(..., help="Output directory (raw/, refcat/, truth/, ...)."),
    nights: int = typer.Option(1, min=1, help="Number of nights."),
    start_night: str = typer.Option("20261121", help="First night, YYYYMMDD (UTC)."),
    fields: str = typer.Option("655", help="Field IDs, comma-separated."),
    ccds: str = typer.Option(",".join(str(c) for c in range(1, 17)), help="CCD IDs, comma-separated."),
    quads: str = typer.Option("1,2,3,4", help="Quadrants rendered (others written blank)."),
    quad_size: str = typer.Option("3072x3080", help="Quadrant size COLSxROWS."),
    seed: int = typer.Option(1, help="Random seed (the output is a function of it)."),
    filters: str = typer.Option("zr,zg", help="Filter codes to alternate (zg, zr, zi)."),
    exposures_per_night: int = typer.Option(700, min=1, help="Object exposures per night."),
    seeing: Optional[float] = typer.Option(None, help="Fix the seeing FWHM (arcsec)."),
    sky_mag: Optional[float] = typer.Option(None, help="Fix the sky (mag/arcsec^2)."),
    n_bias: int = typer.Option(10, min=0, help="Biases per night."),
    n_flat: int = typer.Option(10, min=0, help="Dome flats per filter per night."),
    transients: int = typer.Option(5, min=0, help="Transients per quadrant footprint."),
    span_days: int = typer.Option(0, min=0, help="Spread the nights at random over this many "
                                  "days (0: consecutive nights)."),
    scatter_visits: bool = typer.Option(False, help="Exposures at random times in the night "
                                        "(default: evenly spaced)."),
    cosmic_rays: bool = typer.Option(True, help="Deposit cosmic rays (--no-cosmic-rays keeps "
                                     "every other random number: a twin survey)."),
    quiet_nights: int = typer.Option(0, min=0, help="Transients appear only after this many "
                                     "nights (a reference from those nights holds none)."),
    n_mba: int = typer.Option(40, min=0, help="Main-belt asteroids in the footprint."),
    n_nea: int = typer.Option(6, min=0, help="Near-Earth asteroids in the footprint."),
    source_truth: bool = typer.Option(True, help="Write per-quadrant source truth tables."),
    cloudy_fraction: float = typer.Option(0.0, min=0.0, max=1.0, help="Fraction of cloudy exposures."),
):
    """Simulate nights of the camera: reference catalogue, schedule, asteroids, raw files, truth."""
    from tqdm import tqdm

    from .camera import FILTERS, load_camera
    from .sim.survey import SimulationSpec, simulate as run

    camera = load_camera()
    field_ids = _int_list(fields, "--fields")
    for f in field_ids:
        if not camera.has_field(f):
            raise typer.BadParameter(f"--fields: field {f} is not in the field grid")
    ccd_ids = _int_list(ccds, "--ccds")
    if not ccd_ids or any(not 1 <= c <= 16 for c in ccd_ids):
        raise typer.BadParameter("--ccds: CCD IDs are 1..16")
    qids = _int_list(quads, "--quads")
    if not qids or any(q not in (1, 2, 3, 4) for q in qids):
        raise typer.BadParameter("--quads: quadrants are 1..4")
    filt = [f.strip() for f in filters.split(",") if f.strip()]
    if not filt or any(f not in FILTERS for f in filt):
        raise typer.BadParameter(f"--filters: use zg, zr, zi (got {filters!r})")
    if len(start_night) != 8 or not start_night.isdigit():
        raise typer.BadParameter("--start-night must be YYYYMMDD")
    spec = SimulationSpec(outdir=outdir, nights=nights, start_night=start_night, fields=field_ids,
                          ccds=ccd_ids, quads=qids, quad_shape=_quad_size(quad_size), seed=seed,
                          filters=filt, exposures_per_night=exposures_per_night,
                          seeing_arcsec=seeing, sky_mag=sky_mag, n_transients=transients,
                          quiet_nights=quiet_nights, span_days=span_days,
                          scatter_visits=scatter_visits, cosmic_rays=cosmic_rays,
                          n_mba=n_mba, n_nea=n_nea, source_truth=source_truth,
                          cloudy_fraction=cloudy_fraction, n_bias=n_bias, n_flat=n_flat)
    bar = tqdm(total=None, unit="file", desc="simulate", file=sys.stderr, dynamic_ncols=True)

    def progress(done, total, name):
        bar.total = total
        bar.update(1)
        bar.set_postfix_str(name, refresh=False)

    counts = run(spec, progress=progress)
    bar.close()
    log.info("simulated %s into %s", ", ".join(f"{v} {k}" for k, v in counts.items()), outdir)


@app.command("validate-raw")
def validate_raw_cmd(
    paths: list[Path] = typer.Argument(..., help="Raw files or folders (searched for *.fits.fz)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only invalid files."),
):
    """Check raw files against the raw camera format; exit 0 only if every file is valid."""
    from .io.raw import validate_raw

    files = _expand(paths)
    if not files:
        typer.echo("no raw files found in " + ", ".join(map(str, paths)), err=True)
        raise typer.Exit(2)
    n_bad = 0
    for f in files:
        problems = validate_raw(f)
        if problems:
            n_bad += 1
            for p in problems:
                typer.echo(f"INVALID {f}: {p}")
        elif not quiet:
            typer.echo(f"ok      {f}")
    typer.echo(f"{len(files) - n_bad} valid, {n_bad} invalid", err=True)
    raise typer.Exit(1 if n_bad else 0)


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.rglob("*.fits.fz")))
        else:
            files.append(p)
    return files


def _register_optional_commands():
    """Commands contributed by stage modules (each module registers its own)."""
    import importlib

    for name in ("zsds.cli_ops", "zsds.cli_pipeline", "zsds.cli_alerts", "zsds.cli_refimg", "zsds.cli_qa", "zsds.cli_subtract", "zsds.cli_lightcurves", "zsds.cli_moving", "zsds.cli_api", "zsds.cli_archive",
                 "zsds.cli_db"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)


_register_optional_commands()


def main():
    """Entry point of the ``zsds`` console script."""
    try:
        app()
    except ZsdsError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
