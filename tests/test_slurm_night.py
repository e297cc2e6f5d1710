"""The same night on a LocalCluster and on the local SLURM gives identical products (issue 8)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from zsds.config import load_config
from zsds.pipeline.night import run_night

NIGHT = "20261121"
pytestmark = pytest.mark.slurm


def _checksums(archive, suffixes=("psfcat.fits", "sexcat.fits", "sciimg.fits", "mskimg.fits")):
    out = {}
    for path in sorted((archive / "sci").rglob("*")):
        if path.name.endswith(suffixes):
            out[path.relative_to(archive).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_local_and_slurm_runs_give_identical_products(tmp_path, tiny_night_raw):
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM client not installed: run cluster/start-local-slurm.sh (CI does)")
    sums = {}
    for cluster in ("local", "slurm"):
        env = {"ZSDS__ARCHIVE__ROOT": str(tmp_path / cluster),
               "ZSDS__REFCAT__PATH": str(tiny_night_raw / "refcat"),
               "ZSDS__DASK__CLUSTER": cluster, "ZSDS__DASK__N_WORKERS": "1",
               "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"}
        report = run_night(NIGHT, load_config(environ=env), incoming=tiny_night_raw / "raw",
                           progress=False, quads=[3])
        assert report.count("failed") == 0 and len(report.outcomes) == 3
        sums[cluster] = _checksums(tmp_path / cluster)
    assert len(sums["local"]) == 12
    assert sums["local"] == sums["slurm"]
