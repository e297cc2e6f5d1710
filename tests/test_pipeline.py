"""Instrumental calibration stage and the night runner, end to end on a small simulated night."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from astropy.io import fits
from typer.testing import CliRunner

from zsds.cli import app
from conftest import archive_config
from zsds.io.products import read_table
from zsds.pipeline.night import plan_night, run_night
from zsds.sim.survey import SimulationSpec, simulate

NIGHT = "20261121"
runner = CliRunner()


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    simulate(SimulationSpec(outdir=root / "incoming", fields=[655], ccds=[13], quads=[3],
                            quad_shape=(520, 512), filters=["zr"], exposures_per_night=3,
                            n_bias=5, n_flat=5, seed=11, n_mba=2, n_nea=0, seeing_arcsec=2.0))
    config = archive_config(root / "archive", root / "incoming" / "refcat")
    report = run_night(NIGHT, config, incoming=root / "incoming" / "raw", progress=False)
    return root, config, report


def _sql(config, query):
    eng = sa.create_engine(config.database_url)
    return pd.read_sql(query, eng)


def test_night_processes_every_quadrant_once(night):
    root, config, report = night
    assert report.count("failed") == 0
    assert report.count("done") == 3          # the rendered quadrant of 3 exposures
    assert report.count("bad") == 9           # blank quadrants: judged bad, with reasons
    proc = _sql(config, "select * from processing")
    # good quadrants run every stage (no reference yet: subtraction notes it, no alerts);
    # bad ones stop after calibration
    assert (proc.status == "done").all() and (proc.attempts == 1).all()
    stages = proc.groupby("qid").stage.nunique()
    assert stages[3] == 3 and (stages.drop(3) == 1).all()
    assert len(proc) == 3 * 3 + 9
    sci = _sql(config, "select * from science_images")
    assert len(sci) == 12 and sci.pid.is_unique
    bad = sci[sci.qid != 3]
    assert (bad.status == 0).all() and bad.reasons.str.contains("astrometry").all()


def test_good_quadrants_are_calibrated_against_truth(night):
    root, config, _ = night
    sci = _sql(config, "select * from science_images where qid = 3")
    truth = pd.read_parquet(root / "incoming" / "truth" / "exposures.parquet")
    truth = truth[(truth.qid == 3) & (truth.imgtype == "object")].set_index("expid")
    assert (sci.status == 1).all()
    dzp = sci.magzp.to_numpy() - truth.loc[sci.expid, "true_zp_quadrant"].to_numpy()
    assert np.all(np.abs(dzp) < 0.05), dzp  # small quadrant, no low-frequency flat yet
    assert (sci.astrom_rms_ra < 0.15).all() and (sci.astrom_nmatch > 50).all()
    seeing = truth.loc[sci.expid, "true_seeing_arcsec"].to_numpy()
    assert np.all(np.abs(sci.seeing_arcsec / seeing - 1) < 0.1)


def test_products_follow_the_ztf_layout(night):
    root, config, _ = night
    sci = _sql(config, "select * from science_images where qid = 3").iloc[0]
    base = root / "archive" / sci.path.replace("sciimg.fits", "")
    for suffix in ("sciimg.fits", "mskimg.fits", "psfcat.fits", "sexcat.fits",
                   "sciimgdaopsfcent.fits", "sciimgpsf.fits", "sciimlog.txt"):
        assert (base.parent / (base.name + suffix)).exists(), suffix
    hdr = fits.getheader(root / "archive" / sci.path)
    for key in ("MAGZP", "MAGZPUNC", "CLRCOEFF", "MAGLIM", "SEEING", "INFOBITS", "STATUS",
                "CTYPE1", "A_ORDER", "ASTRRMS1"):
        assert key in hdr, key
    assert hdr["CTYPE1"] == "RA---TAN-SIP"
    cat = read_table(root / "archive" / sci.path.replace("sciimg.fits", "psfcat.fits"))
    assert {"x", "y", "flux", "flux_err", "chi2", "sharpness", "ra", "dec", "mag"} <= set(cat.colnames)
    with fits.open(root / "archive" / sci.path.replace("sciimg.fits", "psfcat.fits")) as h:
        # on disk pixel columns are 1-based (FITS convention); in memory 0-based
        assert np.allclose(h[1].data["x"], np.asarray(cat["x"]) + 1)


def test_rerun_skips_done_and_force_reprocesses_without_duplicates(night):
    root, config, _ = night
    again = run_night(NIGHT, config, progress=False)
    assert again.outcomes == [] and again.skipped == 12
    plan = plan_night(NIGHT, config, force=True)
    assert len(plan.todo) == 12
    forced = run_night(NIGHT, config, force=True, progress=False)
    assert forced.count("failed") == 0
    assert len(_sql(config, "select * from science_images")) == 12
    assert (_sql(config, "select attempts from processing").attempts == 2).all()
    assert len(_sql(config, "select * from processing")) == 18


def test_plan_and_run_night_cli(night):
    root, config, _ = night
    env = {"ZSDS__ARCHIVE__ROOT": str(root / "archive"),
           "ZSDS__REFCAT__PATH": str(root / "incoming" / "refcat")}
    res = runner.invoke(app, ["plan", NIGHT], env=env)
    assert res.exit_code == 0 and "12 already done" in res.output
    res = runner.invoke(app, ["plan", "2026"], env=env)
    assert res.exit_code != 0 and "YYYYMMDD" in res.output
    res = runner.invoke(app, ["run-night", NIGHT, "--print-job-script"], env=env)
    assert res.exit_code == 0 and "#SBATCH" in res.output and "--lifetime" in res.output


def test_missing_calibrations_fail_the_quadrant_with_a_named_error(tmp_path):
    simulate(SimulationSpec(outdir=tmp_path / "in", fields=[655], ccds=[13], quads=[3],
                            quad_shape=(260, 256), filters=["zr"], exposures_per_night=1,
                            n_bias=0, n_flat=0, seed=3, n_mba=0, n_nea=0, n_transients=0))
    config = archive_config(tmp_path / "archive", tmp_path / "in" / "refcat")
    report = run_night(NIGHT, config, incoming=tmp_path / "in" / "raw", progress=False)
    assert report.count("failed") == 4
    assert all("CalibrationNotFoundError" in o.message and "CCD_ID=13" in o.message
               for o in report.outcomes)
