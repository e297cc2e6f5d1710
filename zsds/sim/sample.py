"""A small processed sample archive for the analyst notebooks, tutorials and tests.

:func:`sample_archive` simulates three nights of one field (field 655, CCD 13, readout
quadrant 3 of 512 x 520 pixels, a few r-band exposures a night) and processes them the way
the survey does:

========  =====================================================================================
night 1   ingested, calibrated; its good images co-added into the reference image (Zarr + FITS)
night 2   ingested, calibrated, ZOGY-subtracted against the reference: candidates and alerts
          (Avro archive, and Kafka when a broker is given); QA report written
both      lightcurve store built (HEALPix-partitioned Parquet)
night 3   raw files only, left unprocessed ("tonight"; notebook 1 processes it)
========  =====================================================================================

The work directory holds ``incoming/`` (what the simulator wrote: ``raw/``, ``refcat/``,
``truth/``), ``archive/`` (the zsds archive), ``zsds.yaml`` (its configuration: SQLite
database, one-worker LocalCluster) and ``sample.json`` (what was built; written last, so a
directory without it is rebuilt). About a minute on 2 cores.

A directory that already holds a finished sample archive is returned as it is, whatever the
arguments.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ZsdsConfig, load_config

__all__ = ["SampleArchive", "sample_archive", "NIGHTS", "FIELD_ID", "CCD_ID", "QID"]

#: The three simulated nights (UTC dates): reference night, subtraction night, "tonight".
NIGHTS = ("20261121", "20261122", "20261123")
FIELD_ID, CCD_ID, QID = 655, 13, 3
_MARKER = "sample.json"


@dataclass(frozen=True)
class SampleArchive:
    """A built sample archive (see the module docstring).

    Attributes
    ----------
    workdir : Path
    config_path : Path
        ``workdir/zsds.yaml``.
    nights : tuple of str
        Reference night, subtraction night, unprocessed night.
    field_id, ccd_id, qid : int
        The one simulated readout quadrant.
    filter_code : str
    """

    workdir: Path
    config_path: Path
    nights: tuple[str, str, str]
    field_id: int
    ccd_id: int
    qid: int
    filter_code: str

    @property
    def config(self) -> ZsdsConfig:
        """The archive's configuration (``zsds.yaml``, without environment overrides)."""
        return load_config(self.config_path, environ={})

    @property
    def incoming(self) -> Path:
        """Folder of the simulated raw files (``incoming/raw``)."""
        return self.workdir / "incoming" / "raw"

    @property
    def truth(self) -> Path:
        """Simulator truth tables (``variables.parquet``, ``transients.parquet``, ...)."""
        return self.workdir / "incoming" / "truth"


def _write_config(workdir: Path, bootstrap_servers: str | None) -> Path:
    data = {"archive": {"root": str(workdir / "archive")},
            "refcat": {"path": str(workdir / "incoming" / "refcat")},
            "dask": {"n_workers": 1, "dashboard_address": ":0"}}
    if bootstrap_servers:
        data["kafka"] = {"bootstrap_servers": bootstrap_servers}
    path = workdir / "zsds.yaml"
    path.write_text("# zsds sample archive (zsds.sim.sample)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def _load(workdir: Path) -> SampleArchive:
    info = json.loads((workdir / _MARKER).read_text())
    return SampleArchive(workdir=workdir, config_path=workdir / "zsds.yaml",
                         nights=tuple(info["nights"]), field_id=info["field_id"],
                         ccd_id=info["ccd_id"], qid=info["qid"], filter_code=info["filter_code"])


def sample_archive(workdir: str | Path, *, exposures: int = 5, seed: int = 7,
                   bootstrap_servers: str | None = None) -> SampleArchive:
    """Build (once) and return the sample archive in ``workdir``.

    Parameters
    ----------
    workdir : str or Path
        Created if missing; ``~`` is expanded. A finished sample archive there is reused.
    exposures : int
        Object exposures per night (at least 3, the fewest a reference is built from).
    seed : int
        Seed of the simulation (the data are a function of it).
    bootstrap_servers : str, optional
        Kafka bootstrap servers: alerts of night 2 are also sent there, and the configuration
        names the broker (``kafka.bootstrap_servers``).

    Returns
    -------
    SampleArchive

    Raises
    ------
    ZsdsError
        If a processing step fails (the message names the night and the step).
    """
    from distributed import Client, LocalCluster

    from ..errors import ZsdsError
    from ..pipeline.night import run_night
    from ..qa.report import make_night_report
    from ..stages.lightcurves import build_lightcurves
    from ..stages.refimg import build_references
    from .survey import SimulationSpec, simulate

    if exposures < 3:
        raise ValueError(f"exposures must be at least 3 (reference inputs), not {exposures}")
    workdir = Path(workdir).expanduser().resolve()
    if (workdir / _MARKER).exists():
        return _load(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for partial in ("incoming", "archive"):
        shutil.rmtree(workdir / partial, ignore_errors=True)
    simulate(SimulationSpec(outdir=workdir / "incoming", nights=len(NIGHTS), start_night=NIGHTS[0],
                            fields=[FIELD_ID], ccds=[CCD_ID], quads=[QID], quad_shape=(520, 512),
                            filters=["zr"], exposures_per_night=exposures, seeing_arcsec=2.0,
                            n_bias=5, n_flat=5, n_transients=15, variable_fraction=0.05,
                            n_mba=2, n_nea=0, seed=seed))
    config = load_config(_write_config(workdir, bootstrap_servers), environ={})
    incoming = workdir / "incoming" / "raw"
    # One in-process Dask worker for every step: no worker process to start and import zsds.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        on_cluster = config.model_copy(update={"dask": config.dask.model_copy(
            update={"cluster": cluster.scheduler_address})})

        def night(n: str) -> None:
            report = run_night(n, on_cluster, incoming=incoming, progress=False, quads=[QID])
            if report.count("failed") or not report.count("done"):
                raise ZsdsError(f"sample archive {workdir}: night {n}: {report.summary()}")

        night(NIGHTS[0])
        refs = build_references(config, min_frames=3, client=client)
        if not any(r.get("status") == "built" for r in refs):
            raise ZsdsError(f"sample archive {workdir}: no reference image built from night "
                            f"{NIGHTS[0]}: {refs}")
        night(NIGHTS[1])
        # a coarse HEALPix order: a few Parquet files instead of hundreds for one quadrant
        lcs = build_lightcurves(config, start_night=NIGHTS[0], end_night=NIGHTS[1],
                                client=client, order=9)
    if lcs.n_failed or not lcs.partitions:
        raise ZsdsError(f"sample archive {workdir}: lightcurves not built: {lcs.partitions}")
    make_night_report(NIGHTS[1], config)
    info = {"nights": list(NIGHTS), "field_id": FIELD_ID, "ccd_id": CCD_ID, "qid": QID,
            "filter_code": "zr", "exposures": exposures, "seed": seed,
            "bootstrap_servers": bootstrap_servers}
    (workdir / _MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return _load(workdir)
