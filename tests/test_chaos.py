"""Fault tolerance of the night runner: a worker SIGKILLed mid-night (issue 8)."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import archive_config
from zsds.pipeline.night import run_night
from zsds.sim.survey import SimulationSpec, simulate

NIGHT = "20261121"


@pytest.fixture()
def small_night(tmp_path):
    simulate(SimulationSpec(outdir=tmp_path / "in", fields=[655], ccds=[13], quads=[1, 2, 3, 4],
                            quad_shape=(260, 256), filters=["zr"], exposures_per_night=4,
                            n_bias=5, n_flat=5, seed=21, n_mba=0, n_nea=0, n_transients=0,
                            source_truth=False))
    config = archive_config(tmp_path / "archive", tmp_path / "in" / "refcat", DASK__N_WORKERS="2")
    return tmp_path, config


def test_sigkill_of_a_worker_processes_every_quadrant_exactly_once(small_night):
    root, config = small_night
    killed = []

    def chaos(n_done, client):
        if n_done == 3 and not killed:
            pids = client.run(os.getpid)  # {worker address: pid}
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    report = run_night(NIGHT, config, incoming=root / "in" / "raw", progress=False,
                       on_progress=chaos)
    assert killed, "the chaos hook never fired"
    assert report.count("failed") == 0
    assert len(report.outcomes) == 16 and len({o.job.key for o in report.outcomes}) == 16
    eng = sa.create_engine(config.database_url)
    sci = pd.read_sql("select expid, ccd_id, qid, pid from science_images", eng)
    proc = pd.read_sql("select * from processing", eng)
    # exactly one row per quadrant in the database, every one done
    assert len(sci) == 16 and not sci.duplicated(["expid", "ccd_id", "qid"]).any()
    assert (proc.status == "done").all()
    assert not proc.duplicated(["stage", "expid", "ccd_id", "qid"]).any()
    assert len(proc[proc.stage == "calibrate"]) == 16
    # exactly one product set per quadrant, no temporary files left behind
    products = list((root / "archive" / "sci").rglob("*_sciimg.fits"))
    assert len(products) == 16
    assert not list((root / "archive").rglob("*.tmp*"))
