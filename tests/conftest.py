"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from zsds.config import ZsdsConfig, load_config


def archive_config(archive: Path, refcat: Path, **extra: str) -> ZsdsConfig:
    """Configuration of a test archive: one Dask worker, dashboard on a free port.

    ``extra`` adds ``ZSDS__SECTION__KEY`` overrides, e.g. ``KAFKA__BOOTSTRAP_SERVERS="..."``.
    """
    env = {"ZSDS__ARCHIVE__ROOT": str(archive), "ZSDS__REFCAT__PATH": str(refcat),
           "ZSDS__DASK__N_WORKERS": "1", "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"}
    env.update({f"ZSDS__{k}": v for k, v in extra.items()})
    return load_config(environ=env)


@pytest.fixture(scope="session")
def processed_archive(tmp_path_factory) -> ZsdsConfig:
    """Configuration of a small processed archive with every product type, built once per session
    (:func:`zsds.sim.sample.sample_archive`: raw files, calibrations, science products, a
    reference in FITS and Zarr, difference images with candidates and archived alerts, the
    lightcurve store, a QA report). Treat it as read-only: copy it to modify it. (The notebook
    tests build their own: notebook 1 processes the sample's third night.)"""
    from zsds.sim.sample import sample_archive

    return sample_archive(tmp_path_factory.mktemp("processed"), exposures=4, seed=51).config


@pytest.fixture(scope="session")
def tiny_night_raw(tmp_path_factory) -> Path:
    """Simulator output (``raw/``, ``refcat/``, ``truth/``) of one small night, 20261121:
    field 655, CCD 13, quadrant 3 of 256 x 260 pixels, 3 r-band exposures, 5 biases and 5
    flats. For the SLURM tests; read-only."""
    from zsds.sim.survey import SimulationSpec, simulate

    out = tmp_path_factory.mktemp("tiny-night")
    simulate(SimulationSpec(outdir=out, fields=[655], ccds=[13], quads=[3], quad_shape=(260, 256),
                            filters=["zr"], exposures_per_night=3, n_bias=5, n_flat=5, seed=31,
                            n_mba=0, n_nea=0, n_transients=1))
    return out
