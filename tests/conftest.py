"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

from zsds.config import ZsdsConfig, load_config


def archive_config(archive: Path, refcat: Path, **extra: str) -> ZsdsConfig:
    """Configuration of a test archive: one Dask worker, dashboard on a free port.

    ``extra`` adds ``ZSDS__SECTION__KEY`` overrides, e.g. ``KAFKA__BOOTSTRAP_SERVERS="..."``.
    """
    env = {"ZSDS__ARCHIVE__ROOT": str(archive), "ZSDS__REFCAT__PATH": str(refcat),
           "ZSDS__DASK__N_WORKERS": "1", "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"}
    env.update({f"ZSDS__{k}": v for k, v in extra.items()})
    return load_config(environ=env)
