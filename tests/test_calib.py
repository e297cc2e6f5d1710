"""Calibration kernels (acceptance numbers on factory data) and the calibration stage."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits

from zsds.camera import load_camera
from zsds.core import calib as kern
from zsds.core.prepare import prepare_quadrant
from zsds.db import ops
from zsds.errors import CalibrationNotFoundError
from zsds.io.raw import read_raw
from zsds.stages.calib import make_bias, make_flat
from zsds.stages.ingest import ingest

from dbfixtures import config, db_url  # noqa: F401  (fixtures)
from rawfactory import GAIN, READ_NOISE_E, make_detector, make_raw

N = 10
SHAPE = (256, 260)
QIDS = (1, 3)  # two quadrants of opposite readout direction keep the test fast


def _prepare(path, master=None):
    cam, out = load_camera(), {}
    for q in read_raw(path).quadrants:
        if q.qid in QIDS:
            a, b = cam.nonlinearity(1, q.qid - 1)
            out[q.qid] = prepare_quadrant(
                q.data, q.overscan, q.qid, q.header["GAIN"], q.header["SATURATE"], a, b,
                master_bias=None if master is None else master[q.qid]).image
    return out


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """10 biases and 10 dome flats of ~25000 DN of one CCD with defects; their truth."""
    d = tmp_path_factory.mktemp("calnight")
    dets = [make_detector(SHAPE, 10 + q) for q in range(4)]
    biases = [_prepare(make_raw(d, imgtype="bias", expid=100 + i, obsjd=2458849.60 + i * 1e-3,
                                shape=SHAPE, detectors=dets).path) for i in range(N)]
    stacks = {q: kern.combine_bias(np.stack([b[q] for b in biases])) for q in QIDS}
    master = {q: stacks[q].image for q in QIDS}
    flats = [_prepare(make_raw(d, imgtype="flat", expid=200 + i, obsjd=2458849.65 + i * 1e-3,
                               shape=SHAPE, detectors=dets, flux=25000, exptime=5).path,
                      master) for i in range(N)]
    fstacks = {q: kern.combine_flat(np.stack([f[q] for f in flats])) for q in QIDS}
    return dets, stacks, fstacks


@pytest.mark.parametrize("qid", QIDS)
def test_master_bias_residual_within_acceptance(night, qid):
    dets, stacks, _ = night
    det = dets[qid - 1]
    good = det.defects == 0
    resid = stacks[qid].image - det.bias_pattern
    limit = 1.2 * (READ_NOISE_E / GAIN) / np.sqrt(N)
    assert np.sqrt(np.mean(resid[good] ** 2)) <= limit
    assert np.median(stacks[qid].unc) == pytest.approx(READ_NOISE_E / GAIN / np.sqrt(N),
                                                       rel=0.15)


@pytest.mark.parametrize("qid", QIDS)
def test_hifreq_flat_within_half_percent_of_true_response(night, qid):
    dets, _, fstacks = night
    det = dets[qid - 1]
    good = det.defects == 0
    flat = fstacks[qid].image
    assert np.median(flat) == pytest.approx(1.0, abs=1e-3)
    truth = det.response / np.median(det.response[good])
    rms = np.sqrt(np.mean((flat[good] / np.median(flat[good]) - truth[good]) ** 2))
    assert rms <= 0.005
    # the large-scale dome illumination (several % here) is gone
    assert np.ptp(kern.large_scale(flat)) < 0.01 < np.ptp(det.illumination)


@pytest.mark.parametrize("qid", QIDS)
def test_bad_pixel_mask_finds_defects_and_spares_good_pixels(night, qid):
    dets, stacks, fstacks = night
    det = dets[qid - 1]
    mask = kern.bad_pixel_mask(stacks[qid].image, stacks[qid].std, fstacks[qid].image)
    bad = det.defects != 0
    assert mask.dtype == np.uint16
    assert (mask[bad] != 0).mean() >= 0.99
    assert (mask[~bad] != 0).mean() <= 1e-4
    assert (mask[(det.defects & 1) != 0] & (kern.MASK_HOT | kern.MASK_HIGH_RESP)).all()
    dead = (det.defects & 2) != 0
    assert ((mask[dead] & (kern.MASK_DEAD | kern.MASK_LOW_RESP)) != 0).all()
    assert ((mask[(det.defects & 4) != 0] & kern.MASK_BADCOL) != 0).mean() > 0.9


def test_combine_bias_rejects_cosmic_rays():
    rng = np.random.default_rng(0)
    frames = rng.normal(0, 1.5, (8, 50, 50)).astype(np.float32)
    frames[3, 10, 10] = 5000
    res = kern.combine_bias(frames)
    assert abs(res.image[10, 10]) < 2.5
    assert res.nused[10, 10] == 7 and res.nused[0, 0] >= 7


def test_combine_flat_normalises_and_removes_gradient():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    resp = 1 + rng.normal(0, 0.01, (128, 128))
    frames = np.stack([20000 * (1 + 0.2 * xx) * resp * s for s in (0.9, 1.0, 1.1)])
    res = kern.combine_flat(frames)
    assert np.median(res.image) == pytest.approx(1.0, abs=1e-4)
    assert np.std(res.image / resp) < 0.002


# -- stage ----------------------------------------------------------------------------------
def _ingest_night(config, d, jd0=2458849.60, nb=3, nf=3, shape=(64, 60), expid0=0):
    dets = [make_detector(shape, q) for q in range(4)]
    for i in range(nb):
        make_raw(d, imgtype="bias", expid=expid0 + 100 + i, obsjd=jd0 + i * 1e-3, shape=shape,
                 detectors=dets)
    for i in range(nf):
        make_raw(d, imgtype="flat", expid=expid0 + 200 + i, obsjd=jd0 + 0.05 + i * 1e-3,
                 shape=shape, detectors=dets, flux=25000, exptime=5)
    assert ingest([d], config).ok


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(),
                   p.stat().st_mtime_ns) for p in (root / "cal").rglob("*") if p.is_file())


def test_stage_writes_registers_and_is_idempotent(tmp_path, config):
    _ingest_night(config, tmp_path / "in")
    bias = make_bias("20200101", config)
    flat = make_flat("20200101", config)
    assert {p[5] for p in bias.products + flat.products} == {"new"}
    assert len(bias.products) == 4 and len(flat.products) == 8
    q = config.archive.root / "cal/2020/0101/bias/OO/ccd01/q3"
    assert {p.name for p in q.iterdir()} == {"ztf_20200101_OO_c01_q3_bias.fits",
                                             "ztf_20200101_OO_c01_q3_biasunc.fits",
                                             "ztf_20200101_OO_c01_q3_biaslog.txt"}
    f = config.archive.root / "cal/2020/0101/hifreqflat/zr/ccd01/q2"
    assert {p.name for p in f.iterdir()} == {"ztf_20200101_zr_c01_q2_hifreqflat.fits",
                                             "ztf_20200101_zr_c01_q2_hifreqflatunc.fits",
                                             "ztf_20200101_zr_c01_q2_hifreqflatlog.txt"}
    mask_path = config.archive.root / ("cal/2020/0101/badpix/zr/ccd01/q2/"
                                       "ztf_20200101_zr_c01_q2_badpix.fits")
    assert fits.getdata(mask_path).dtype.kind == "u"
    assert fits.getheader(f / "ztf_20200101_zr_c01_q2_hifreqflat.fits")["GAIN"] == GAIN
    assert "EXPID=201" in (f / "ztf_20200101_zr_c01_q2_hifreqflatlog.txt").read_text()
    eng = ops.make_engine(config.database_url)
    db_before, files_before = ops.table_snapshot(eng), _tree(config.archive.root)
    assert len(db_before["calibrations"]) == 12
    again = make_bias("20200101", config).products + make_flat("20200101", config).products
    assert {p[5] for p in again} == {"same"}
    assert ops.table_snapshot(eng) == db_before
    assert _tree(config.archive.root) == files_before
    row = ops.find_calibration(eng, "badpix", 1, 2, "zr", 2458849.7)
    assert row["path"].endswith("_badpix.fits")
    eng.dispose()


def test_nearest_night_is_picked(tmp_path, config):
    _ingest_night(config, tmp_path / "n1", jd0=2458849.60)
    _ingest_night(config, tmp_path / "n2", jd0=2458853.60, expid0=1000)
    make_bias("20200101", config)
    make_bias("20200105", config)
    eng = ops.make_engine(config.database_url)
    assert ops.find_calibration(eng, "bias", 1, 1, None, "20200102")["night"] == "20200101"
    assert ops.find_calibration(eng, "bias", 1, 1, None, "20200104")["night"] == "20200105"
    eng.dispose()


def test_night_without_biases_is_a_named_error(tmp_path, config):
    _ingest_night(config, tmp_path / "in", nb=0)
    with pytest.raises(CalibrationNotFoundError, match="20200101: no bias"):
        make_bias("20200101", config)
    with pytest.raises(CalibrationNotFoundError,
                       match=r"bias calibration .*CCD_ID=1 qid=1 filter=OO"):
        make_flat("20200101", config)
    eng = ops.make_engine(config.database_url)
    snap = ops.table_snapshot(eng)
    assert snap["calibrations"] == [] and len(snap["raw_files"]) == 3  # nothing lost
    eng.dispose()


def test_too_few_frames_is_a_named_error(tmp_path, config):
    _ingest_night(config, tmp_path / "in", nb=2)
    with pytest.raises(CalibrationNotFoundError, match="CCD_ID=1 .*2 bias frame"):
        make_bias("20200101", config)
