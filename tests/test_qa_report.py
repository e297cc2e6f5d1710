"""The night QA report (issue 8): it renders, and its numbers match the database.

One tiny simulated night is processed by the real pipeline (module fixture, ~1 minute); a
failure and a bad-seeing exposure are then injected into the database, and the report made.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from astropy.io import fits
from typer.testing import CliRunner

from zsds.config import load_config
from zsds.pipeline.night import run_night
from zsds.qa.ledger import ProjectionAssumptions, fits_size, product_suffix
from zsds.qa.metrics import QAThresholds, Threshold, first_reason
from zsds.qa.report import SECTIONS, make_night_report
from zsds.sim.survey import SimulationSpec, simulate

NIGHT = "20261121"
INJECTED = "RuntimeError: injected failure for the QA test"
BAD_SEEING = 5.5


def _sql(config, query, **params) -> pd.DataFrame:
    engine = sa.create_engine(config.database_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(query), conn, params=params)
    finally:
        engine.dispose()


def _execute(config, *statements):
    engine = sa.create_engine(config.database_url)
    try:
        with engine.begin() as conn:
            for stmt, params in statements:
                conn.execute(sa.text(stmt), params)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    simulate(SimulationSpec(outdir=root / "in", fields=[655], ccds=[13], quads=[3],
                            quad_shape=(260, 256), exposures_per_night=3, n_bias=5, n_flat=5,
                            filters=["zr"], seed=1))
    env = {"ZSDS__ARCHIVE__ROOT": str(root / "archive"),
           "ZSDS__REFCAT__PATH": str(root / "in" / "refcat"),
           "ZSDS__DASK__N_WORKERS": "1", "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"}
    config = load_config(environ=env)
    run_night(NIGHT, config, incoming=root / "in" / "raw", progress=False)
    expids = _sql(config, "select expid from exposures where night = :n and imgtype = 'object' "
                          "order by obsjd", n=NIGHT).expid.tolist()
    assert len(expids) == 3
    # a quadrant that failed with a traceback (a failure leaves no science image)
    failed = {"e": expids[0], "c": 13, "q": 1}
    tb = ('Traceback (most recent call last):\n  File "zsds/stages/calibrate.py", line 1, '
          f"in calibrate_job\n    raise RuntimeError\n{INJECTED}\n")
    _execute(config,
             ("delete from science_images where expid = :e and ccd_id = :c and qid = :q", failed),
             ("update processing set status = 'failed', message = :m where expid = :e "
              "and ccd_id = :c and qid = :q", {**failed, "m": tb}),
             ("update quadrant_images set status = 'failed' where expid = :e and ccd_id = :c "
              "and qid = :q", failed))
    # an exposure with bad seeing
    _execute(config, ("update science_images set seeing_arcsec = :s where expid = :e",
                      {"s": BAD_SEEING, "e": expids[2]}))
    page = make_night_report(NIGHT, config)
    report = json.loads((page.parent / "report.json").read_text())
    return config, page, report, expids


# -- rendering -------------------------------------------------------------------------------
def test_page_renders_every_section_with_embedded_figures(night):
    config, page, report, _ = night
    assert page == Path(config.archive.root) / "reports" / NIGHT / "index.html"
    text = page.read_text()
    for sid, title in SECTIONS:
        assert f'id="{sid}"' in text and title in text
    figures = report["figures"]
    assert {"time_series.png", "candidates_hist.png", "focal_plane_seeing.png",
            "focal_plane_maglim.png", "focal_plane_zp_deficit.png",
            "focal_plane_astrom_rms.png"} <= set(figures)
    assert text.count("data:image/png;base64,") == len(figures)
    for name in figures:
        assert (page.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r">\s*nan\s*<", text, re.I)          # missing values print as a dash


def test_json_is_strict_and_complete(night):
    _, page, report, _ = night
    json.loads((page.parent / "report.json").read_text(), parse_constant=pytest.fail)
    for key in ("counts", "exposures", "quadrants", "failures", "bad_reasons", "candidates",
                "ledger", "processing_time", "projection", "thresholds", "status"):
        assert key in report
    assert report["status"] == "red"


# -- numbers against the database --------------------------------------------------------------
def test_counts_match_database(night):
    config, _, report, _ = night
    c = report["counts"]
    planned = _sql(config, "select count(*) n from quadrant_images q join exposures e "
                           "on e.expid = q.expid where e.night = :n and e.imgtype = 'object'",
                   n=NIGHT).n[0]
    sci = _sql(config, "select status from science_images where night = :n", n=NIGHT)
    proc = _sql(config, "select status from processing", n=NIGHT)
    assert c["planned"] == planned == 12
    assert c["failed"] == (proc.status == "failed").sum() == 1
    assert c["processed"] == len(sci) == 11
    assert c["good"] == (sci.status == 1).sum()
    assert c["bad"] == (sci.status == 0).sum()
    assert c["pending"] == 0
    assert c["exposures"] == 3
    assert c["failure_fraction"] == pytest.approx(1 / 12)
    assert c["failure_colour"] == "amber"


def test_exposure_medians_match_database(night):
    config, _, report, expids = night
    sci = _sql(config, "select expid, seeing_arcsec, maglim, magzp, astrom_rms_ra, "
                       "astrom_rms_dec from science_images where night = :n", n=NIGHT)
    sci["astrom"] = np.hypot(sci.astrom_rms_ra, sci.astrom_rms_dec)
    expected = sci.groupby("expid").median()
    got = {e["expid"]: e for e in report["exposures"]}
    assert sorted(got) == sorted(expids)
    for expid, row in expected.iterrows():
        for col, key in (("seeing_arcsec", "seeing"), ("maglim", "maglim"), ("magzp", "magzp"),
                         ("astrom", "astrom_rms")):
            if np.isnan(row[col]):
                assert got[expid][key] is None
            else:
                assert got[expid][key] == pytest.approx(row[col], rel=1e-12)
        assert got[expid]["n_images"] == (sci.expid == expid).sum()


def test_raw_ledger_matches_database_and_disk(night):
    config, _, report, _ = night
    raw = _sql(config, "select path, size_bytes, imgtype from raw_files where night = :n", n=NIGHT)
    root = Path(config.archive.root)
    disk = sum(os.path.getsize(root / p) for p in raw.path)
    ledger = report["ledger"]["raw"]
    assert ledger["total_bytes"] == raw.size_bytes.sum() == disk
    assert ledger["disk_bytes"] == disk and ledger["missing"] == 0
    assert ledger["files"] == len(raw)
    by_type = {t["imgtype"]: t for t in ledger["by_imgtype"]}
    assert by_type["object"]["bytes"] == raw.size_bytes[raw.imgtype == "object"].sum()
    assert ledger["compression_ratio"] > 1.0          # raw files are tile-compressed


def test_product_ledger_matches_files_on_disk(night):
    config, _, report, _ = night
    root = Path(config.archive.root)
    files = [p for area in ("sci", "cal") for p in (root / area / "2026" / "1121").rglob("*")
             if p.is_file()]
    products = report["ledger"]["products"]
    assert report["ledger"]["products_total_bytes"] == sum(p.stat().st_size for p in files)
    sciimg = [p for p in products if (p["area"], p["suffix"]) == ("sci", "sciimg.fits")]
    n_sci = len(list((root / "sci").rglob("*_sciimg.fits")))
    assert sciimg and sciimg[0]["files"] == n_sci


def test_processing_time_matches_database(night):
    config, _, report, _ = night
    proc = _sql(config, "select stage, started_at, finished_at from processing "
                        "where finished_at is not null")
    sec = (pd.to_datetime(proc.finished_at, format="mixed")
           - pd.to_datetime(proc.started_at, format="mixed")).dt.total_seconds()
    st = report["processing_time"]["stages"]["calibrate"]
    assert st["n"] == len(proc)
    assert st["total_s"] == pytest.approx(sec.sum())
    sci_sec = _sql(config, "select sum(seconds) s from science_images").s[0]
    assert report["processing_time"]["science_seconds"]["total_s"] == pytest.approx(sci_sec)


def test_projection_follows_its_assumptions(night):
    config, _, report, _ = night
    p = report["projection"]
    a = p["assumptions"]
    assert a["exposures_per_night"] == ProjectionAssumptions().exposures_per_night
    assert a["observed_quadrants_per_exposure"] == 4          # one CCD of 4 quadrants
    assert a["camera_scale"] == pytest.approx(16)
    assert a["pixel_scale"] == pytest.approx(3080 * 3072 / (260 * 256))
    assert p["bytes_per_year"] == pytest.approx(p["bytes_per_night"] * a["nights_per_year"])
    assert p["bytes_per_night"] == pytest.approx(sum(p["per_night_by_kind"].values()))
    raw_obj = report["ledger"]["raw"]["by_imgtype"]
    obj = next(t["bytes"] for t in raw_obj if t["imgtype"] == "object")
    assert p["per_night_by_kind"]["raw_object"] == pytest.approx(
        obj / 3 * 700 * a["camera_scale"] * a["pixel_scale"])


# -- failures and thresholds -----------------------------------------------------------------
def test_injected_failure_is_in_the_failures_table(night):
    _, page, report, expids = night
    fails = report["failures"]
    assert len(fails) == 1
    f = fails[0]
    assert (f["expid"], f["ccd_id"], f["qid"], f["stage"]) == (expids[0], 13, 1, "calibrate")
    assert f["reason"] == INJECTED
    assert report["failure_reasons"] == {INJECTED: 1}
    section = page.read_text().split('id="failures"')[1].split("</section>")[0]
    assert INJECTED in section and str(expids[0]) in section


def test_bad_seeing_exposure_is_flagged_red(night):
    _, page, report, expids = night
    assert report["red_exposures"] == [expids[2]]
    exp = {e["expid"]: e for e in report["exposures"]}
    assert exp[expids[2]]["seeing"] == pytest.approx(BAD_SEEING)
    assert exp[expids[2]]["colour_seeing"] == "red"
    assert exp[expids[0]]["colour_seeing"] != "red"
    section = page.read_text().split('id="exposures"')[1].split("</section>")[0]
    row = next(r for r in section.split("<tr>") if str(expids[2]) in r)
    assert '<td class="red">5.50</td>' in row


def test_bad_reasons_come_from_infobits(night):
    config, _, report, _ = night
    sci = _sql(config, "select infobits from science_images where status = 0")
    from zsds.core.qaflags import flag_names
    expected = {}
    for bits in sci.infobits:
        for name in flag_names(int(bits)):
            expected[name] = expected.get(name, 0) + 1
    assert report["bad_reasons"] == expected


def test_cli_report_prints_the_page(night, tmp_path):
    from zsds.cli import app
    import zsds.cli_qa

    if "report" not in {c.name for c in app.registered_commands}:
        zsds.cli_qa.register(app)
    config, _, _, _ = night
    cfg = tmp_path / "zsds.yaml"
    cfg.write_text(yaml.safe_dump({"archive": {"root": str(config.archive.root)},
                                   "refcat": {"path": str(config.refcat_path)}}))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["--config", str(cfg), "report", NIGHT, "--outdir", str(out),
                                      "--open-path"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (out / "index.html").resolve().as_uri()


# -- pure helpers ----------------------------------------------------------------------------
def test_threshold_colours():
    seeing = Threshold("seeing", "arcsec", 2.5, 4.0)
    assert [seeing.colour(v) for v in (2.0, 2.5, 3.0, 4.0, 4.1, float("nan"), None)] == \
        ["green", "green", "amber", "amber", "red", "grey", "grey"]
    depth = Threshold("maglim", "mag", 20.5, 20.0, higher_is_better=True)
    assert [depth.colour(v) for v in (21.0, 20.2, 19.9)] == ["green", "amber", "red"]


def test_thresholds_follow_config():
    config = load_config(environ={"ZSDS__ARCHIVE__ROOT": "/tmp/x",
                                  "ZSDS__CALIBRATE__MAX_SEEING_ARCSEC": "3.0"})
    t = QAThresholds.from_config(config)
    assert t.seeing.red == 3.0 and t.seeing.colour(3.2) == "red"


def test_first_reason():
    assert first_reason("Traceback (most recent call last):\n  File x\nValueError: bad\n") \
        == "ValueError: bad"
    assert first_reason("AlgorithmError: too few stars\nmore") == "AlgorithmError: too few stars"
    assert first_reason(None) == "(no message)"


def test_product_suffix():
    assert product_suffix("ztf_20261121151041_000655_zr_c13_o_q3_sciimg.fits") == "sciimg.fits"
    assert product_suffix("ztf_20261121_OO_c13_q3_biasunc.fits") == "biasunc.fits"
    assert product_suffix("123456.avro") == ".avro"


def test_fits_size_from_headers(tmp_path):
    data = np.arange(100 * 120, dtype=np.int16).reshape(120, 100)
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(data).writeto(plain)
    size = fits_size(plain)
    assert size.uncompressed_bytes == size.file_bytes == plain.stat().st_size
    assert not size.compressed
    packed = tmp_path / "packed.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(packed)
    size = fits_size(packed)
    assert size.compressed and size.n_hdus == 2
    # primary header + image header (1 or 2 blocks) + 120*100*2 bytes of data in 9 blocks
    assert size.uncompressed_bytes - 9 * 2880 in (2 * 2880, 3 * 2880)
