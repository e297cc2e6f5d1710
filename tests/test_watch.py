"""Real-time mode (issue 8): files are processed as they land."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from conftest import archive_config
from zsds.pipeline.watch import LandingTracker, watch
from zsds.sim.survey import SimulationSpec, simulate

RAW = "ztf_20261121{:06d}_000655_zr_c13_o.fits.fz"


def test_tracker_waits_for_files_to_settle():
    t = LandingTracker(settle_s=2.0)
    a, b, junk = Path(RAW.format(100000)), Path(RAW.format(200000)), Path("notes.txt")
    assert t.observe(0.0, {a: (10, 1.0), junk: (5, 1.0)}) == []
    assert t.observe(1.0, {a: (20, 2.0)}) == []             # still growing
    assert t.observe(2.5, {a: (20, 2.0), b: (7, 3.0)}) == []  # stable for 1.5 s only
    landed = t.observe(3.5, {a: (20, 2.0), b: (7, 3.0)})
    assert landed == [(a, 0.0)]                               # landing time = first seen
    assert t.observe(5.0, {a: (20, 2.0), b: (7, 3.0)}) == [(b, 2.5)]
    assert t.observe(9.0, {a: (20, 2.0), b: (7, 3.0)}) == []  # never twice


def test_watch_processes_files_as_they_land(tmp_path):
    simulate(SimulationSpec(outdir=tmp_path / "sim", fields=[655], ccds=[13], quads=[3],
                            quad_shape=(260, 256), filters=["zr"], exposures_per_night=3,
                            n_bias=5, n_flat=5, seed=41, n_mba=0, n_nea=0, n_transients=0,
                            source_truth=False))
    files = sorted((tmp_path / "sim" / "raw").rglob("*.fits.fz"))
    incoming = tmp_path / "incoming"
    incoming.mkdir()

    def camera():  # calibrations first, then one object file every 2 s, written then renamed
        for f in files:
            tmp = incoming / (f.name + ".part")
            shutil.copy(f, tmp)
            tmp.rename(incoming / f.name)
            time.sleep(0.05 if not f.name.endswith("_o.fits.fz") else 2.0)

    config = archive_config(tmp_path / "archive", tmp_path / "sim" / "refcat")
    thread = threading.Thread(target=camera)
    thread.start()
    report = watch(incoming, config, poll_s=0.2, settle_s=0.5, max_files=len(files))
    thread.join()
    assert report.files == len(files) == 13
    assert report.quadrants == 12  # 3 object files x 4 quadrants
    assert len(report.latencies_s) == 12 and max(report.latencies_s) < 120
    eng = sa.create_engine(config.database_url)
    proc = pd.read_sql("select status from processing", eng)
    assert len(proc) == 12 and (proc.status == "done").all()
    cal = pd.read_sql("select caltype from calibrations", eng)
    assert {"bias", "hifreqflat"} <= set(cal.caltype)
