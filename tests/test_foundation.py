"""Configuration, camera model, archive layout, raw-format validator and CLI (issue 2)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zsds.camera import linearize, delinearize, load_camera, tan_project
from zsds.cli import app
from zsds.config import load_config
from zsds.errors import ConfigError, RawFormatError
from zsds.io.paths import ArchiveLayout, filefracday_from_jd, parse_raw_name
from zsds.io.raw import RawQuadrant, read_raw, validate_raw, write_raw
from zsds.sim.survey import SimulationSpec, simulate

runner = CliRunner()


# -- configuration ------------------------------------------------------------------------
def test_config_layers_and_env_override(tmp_path):
    user = tmp_path / "zsds.yaml"
    user.write_text("archive:\n  root: data\ndask:\n  n_workers: 3\n")
    cfg = load_config(user, environ={"ZSDS__DASK__THREADS_PER_WORKER": "2"})
    assert cfg.archive.root == (tmp_path / "data").resolve()
    assert cfg.dask.n_workers == 3 and cfg.dask.threads_per_worker == 2
    assert cfg.database_url == f"sqlite:///{cfg.archive.root / 'zsds.sqlite'}"
    assert cfg.refcat_path == cfg.archive.root / "refcat"


@pytest.mark.parametrize("text, key", [
    ("dask:\n  clustr: local\n", "dask.clustr"),
    ("dask:\n  cluster: kubernetes\n", "dask.cluster"),
    ("logging:\n  level: LOUD\n", "logging.level"),
    ("processing:\n  fft_threads: 0\n", "processing.fft_threads"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(user, environ={})


def test_config_env_error_names_variable():
    with pytest.raises(ConfigError, match="ZSDS__NOSECTION"):
        load_config(environ={"ZSDS__NOSECTION": "1"})


def test_config_show_cli(tmp_path):
    res = runner.invoke(app, ["config", "show"], env={"ZSDS__ARCHIVE__ROOT": str(tmp_path)})
    assert res.exit_code == 0
    assert f"root: {tmp_path}" in res.output


# -- camera ---------------------------------------------------------------------------------
def test_layout_fit_reproduces_corners_and_pixel_scale():
    cam = load_camera()
    for ccd in (1, 8, 13, 16):
        for qid in (1, 2, 3, 4):
            q = cam.quadrant(ccd, qid)
            assert q.rms_deg * 3600 < 0.5  # corners reproduced to < 0.5 arcsec
            scale = np.sqrt(abs(np.linalg.det(q.matrix))) * 3600
            assert 1.005 < scale < 1.015
            # stored orientation: x to the west (EW decreasing), y to the south
            assert q.matrix[0, 0] < 0 and q.matrix[1, 1] < 0
    assert 5.0 < cam.focal_plane_extent() < 5.4


def test_quadrant_numbering_on_the_focal_plane():
    cam = load_camera()
    centre = {}
    for qid in (1, 2, 3, 4):
        ew, ns = cam.quadrant(6, qid).pixel_to_focal(1535.5, 1539.5)
        centre[qid] = (float(ew), float(ns))
    # north up, east right: q2 | q1 on top, q3 | q4 below
    assert centre[1][0] > centre[2][0] and centre[4][0] > centre[3][0]
    assert centre[1][1] > centre[4][1] and centre[2][1] > centre[3][1]


def test_nominal_wcs_agrees_with_gnomonic_layout():
    cam = load_camera()
    ra0, dec0 = 55.06078, 33.35
    w = cam.nominal_wcs(13, 3, ra0, dec0, shape=(3080, 3072))
    x, y = np.array([0.0, 1500.0, 3071.0]), np.array([0.0, 2000.0, 3079.0])
    ra, dec = w.pixel_to_world_values(x, y)
    xi, eta = tan_project(ra, dec, ra0, dec0)
    ew, ns = cam.quadrant(13, 3).pixel_to_focal(x, y)
    assert np.allclose(xi, ew, atol=1e-9) and np.allclose(eta, ns, atol=1e-9)


def test_nonlinearity_round_trip_and_sign():
    a, b = load_camera().nonlinearity(13, 2)
    true = np.linspace(1.0, 50000.0, 500)
    raw = delinearize(true, a, b)
    assert np.allclose(linearize(raw, a, b), true, rtol=1e-9)
    excess = raw / true - 1  # super-linear raw response, about 1% at its largest
    assert (excess >= 0).all() and 0.005 < excess.max() < 0.015


def test_camera_rejects_unknown_quadrant():
    with pytest.raises(ValueError, match="CCD_ID=17"):
        load_camera().quadrant(17, 1)


# -- archive layout ---------------------------------------------------------------------
def test_paths_follow_the_public_ztf_layout(tmp_path):
    lay = ArchiveLayout(tmp_path)
    name = "ztf_20200204197199_000812_zr_c04_o.fits.fz"
    assert lay.raw_path(name) == tmp_path / "raw/2020/0204/197199" / name
    assert lay.sci_path("20200204197199", 812, "zr", 4, 3, "sciimg.fits").relative_to(tmp_path).as_posix() == \
        "sci/2020/0204/197199/ztf_20200204197199_000812_zr_c04_o_q3_sciimg.fits"
    assert lay.cal_path("20200204", "hifreqflat", "zr", 4, 3, "unc.fits").relative_to(tmp_path).as_posix() == \
        "cal/2020/0204/hifreqflat/zr/ccd04/q3/ztf_20200204_zr_c04_q3_hifreqflatunc.fits"
    assert lay.cal_path("20200204", "bias", "zr", 4, 3).name == "ztf_20200204_OO_c04_q3_bias.fits"
    assert lay.ref_path(812, "zr", 4, 3, "refimg.fits").relative_to(tmp_path).as_posix() == \
        "ref/000/field000812/zr/ccd04/q3/ztf_000812_zr_c04_q3_refimg.fits"
    rn = parse_raw_name(name)
    assert (rn.field_id, rn.ccd_id, rn.filter_code, rn.type_code) == (812, 4, "zr", "o")
    with pytest.raises(ValueError, match="not a raw file name"):
        parse_raw_name("image.fits")


def test_filefracday_truncates_the_fraction():
    assert filefracday_from_jd(2458883.5) == "20200204000000"
    assert filefracday_from_jd(2458883.697199) == "20200204197199"


# -- raw validator ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("rawsim")
    simulate(SimulationSpec(outdir=out, fields=[655], ccds=[2], quads=[1], quad_shape=(130, 128),
                            filters=["zg"], exposures_per_night=1, n_bias=0, n_flat=0, seed=3,
                            n_mba=0, n_nea=0, n_transients=0, source_truth=False))
    return next((out / "raw").rglob("*_o.fits.fz"))


def _rewrite(src, dst, primary_edit=None, quad_edit=None):
    raw = read_raw(src)
    prim = raw.primary.copy()
    if primary_edit:
        primary_edit(prim)
    quads = [RawQuadrant(q.data.copy(), q.overscan.copy(), q.header.copy()) for q in raw.quadrants]
    if quad_edit:
        quad_edit(quads)
    return write_raw(dst, prim, quads)


def test_validator_accepts_simulated_file(valid_raw):
    assert validate_raw(valid_raw) == []


def test_validator_names_missing_keyword(valid_raw, tmp_path):
    bad = _rewrite(valid_raw, tmp_path / valid_raw.name, primary_edit=lambda h: h.remove("EXPTIME"))
    problems = validate_raw(bad)
    assert any("HDU 0" in p and "EXPTIME" in p for p in problems), problems
    with pytest.raises(RawFormatError, match="EXPTIME"):
        read_raw(bad)


def test_validator_names_mismatched_hdu_shapes(valid_raw, tmp_path):
    def shrink(quads):
        quads[1] = RawQuadrant(quads[1].data[:-2], quads[1].overscan, quads[1].header)
    problems = validate_raw(_rewrite(valid_raw, tmp_path / valid_raw.name, quad_edit=shrink))
    assert any("shapes differ" in p for p in problems), problems
    assert any("HDU 6" in p and "NAXIS2" in p for p in problems), problems


def test_validator_rejects_truncated_file(valid_raw, tmp_path):
    bad = tmp_path / valid_raw.name
    data = valid_raw.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    problems = validate_raw(bad)
    assert problems and all(p for p in problems)


def test_validator_rejects_wrong_quadrant_keywords(valid_raw, tmp_path):
    def wreck(quads):
        quads[2].header["AMP_ID"] = 0
        del quads[3].header["GAIN"]
    problems = validate_raw(_rewrite(valid_raw, tmp_path / valid_raw.name, quad_edit=wreck))
    assert any("HDU 3" in p and "AMP_ID" in p for p in problems)
    assert any("HDU 4" in p and "GAIN" in p for p in problems)


def test_validator_checks_the_file_name(valid_raw, tmp_path):
    renamed = tmp_path / valid_raw.name.replace("_c02_", "_c05_")
    shutil.copy(valid_raw, renamed)
    assert any("CCD_ID" in p for p in validate_raw(renamed))


def test_validate_raw_cli_exit_codes(valid_raw, tmp_path):
    good = runner.invoke(app, ["validate-raw", str(valid_raw)])
    assert good.exit_code == 0
    bad = tmp_path / valid_raw.name
    bad.write_bytes(valid_raw.read_bytes()[:5000])
    res = runner.invoke(app, ["validate-raw", str(valid_raw), str(bad)])
    assert res.exit_code == 1
    assert f"INVALID {bad}" in res.output


def test_simulate_cli_rejects_nonsense(tmp_path):
    res = runner.invoke(app, ["simulate", str(tmp_path), "--quads", "5"])
    assert res.exit_code != 0 and "--quads" in res.output
    res = runner.invoke(app, ["simulate", str(tmp_path), "--fields", "99999"])
    assert res.exit_code != 0 and "99999" in res.output


def test_every_command_has_help():
    for cmd in ([], ["simulate"], ["validate-raw"], ["config", "show"]):
        res = runner.invoke(app, cmd + ["--help"])
        assert res.exit_code == 0 and "Usage" in res.output
