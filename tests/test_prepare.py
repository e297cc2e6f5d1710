"""Overscan subtraction and quadrant preparation (pure kernels)."""

from __future__ import annotations

import numpy as np
import pytest

from zsds.camera import load_camera
from zsds.camera.detector import delinearize
from zsds.core.overscan import overscan_level, usable_overscan
from zsds.core.prepare import prepare_quadrant
from zsds.io.raw import read_raw

from rawfactory import floating_bias, make_detector, make_raw

RN_ADU = 1.5


def _overscan(rows, rng, n=30):
    return rows[:, None] + rng.normal(0, RN_ADU, (rows.size, n))


@pytest.mark.parametrize("qid,dropped", [(1, [0, 1]), (4, [0, 1]), (2, [28, 29]),
                                         (3, [28, 29])])
def test_first_two_overscan_columns_in_readout_order_are_ignored(qid, dropped):
    ov = np.tile(np.arange(30), (5, 1))
    kept = usable_overscan(ov, qid)
    assert kept.shape == (5, 28)
    assert not set(dropped) & set(kept[0].tolist())


@pytest.mark.parametrize("qid", [1, 2, 3, 4])
def test_trailing_charge_in_first_columns_does_not_bias_level(qid):
    rng = np.random.default_rng(qid)
    rows = np.full(3080, 500.0)
    ov = _overscan(rows, rng)
    first = [0, 1] if qid in (1, 4) else [29, 28]
    ov[:, first] += 4.0  # below the clipping threshold: only skipping removes it
    level = overscan_level(ov, qid).level
    assert abs(np.mean(level - rows)) < 0.02


def test_level_follows_floating_bias_within_acceptance():
    rng = np.random.default_rng(1)
    y = np.arange(3080)
    rows = 470 + 5 * np.sin(2 * np.pi * y / 100) + 3 * np.sin(2 * np.pi * y / 731)
    res = overscan_level(_overscan(rows, rng), 1)
    rms = np.sqrt(np.mean((res.level - rows) ** 2))
    raw_rms = np.sqrt(np.mean((res.raw_level - rows) ** 2))
    assert rms <= 0.5           # acceptance: <= 0.5 ADU RMS per row
    assert rms < 0.6 * raw_rms  # smoothing beats down the per-row noise
    assert res.noise == pytest.approx(RN_ADU, rel=0.05)


def test_level_is_robust_to_cosmic_rays_and_hot_overscan_pixels():
    rng = np.random.default_rng(2)
    rows = floating_bias(1000, rng)
    ov = _overscan(rows, rng)
    ov[rng.integers(0, 1000, 50), rng.integers(2, 30, 50)] += 5000.0
    ov[500, 2:] += 3000.0  # a whole row hit (bleed into the overscan)
    level = overscan_level(ov, 1).level
    assert np.sqrt(np.mean((level - rows) ** 2)) < 0.25
    assert abs(level[500] - rows[500]) < 1.0


def test_prepare_linearises_and_converts_units():
    cam = load_camera()
    a, b = cam.nonlinearity(5, 2)
    rng = np.random.default_rng(3)
    ny, nx = 200, 100
    true = np.linspace(1000, 50000, nx)[None, :].repeat(ny, 0)
    rows = floating_bias(ny, rng)
    raw = delinearize(true, a, b) + rows[:, None]
    data = np.round(raw).astype(np.uint16)
    ov = np.round(_overscan(rows, rng)).astype(np.uint16)
    p = prepare_quadrant(data, ov, 3, gain=6.0, saturate=65000, nl_a=a, nl_b=b,
                         read_noise=9.0)
    assert p.image.dtype == np.float32 and p.variance.dtype == np.float32
    rel = (p.image - true) / true
    assert np.abs(np.median(rel[:, -10:])) < 5e-4        # corrected at 50000 DN
    assert np.abs(np.median(((raw - rows[:, None]) / true - 1)[:, -10:])) > 5e-3  # was ~1%
    expected_var = true / 6.0 + (9.0 / 6.0) ** 2
    assert np.allclose(p.variance, expected_var, rtol=0.02)
    assert p.qa["median_counts"] == pytest.approx(np.median(true), rel=1e-3)


def test_prepare_flags_saturation_on_raw_adu_and_reports_qa():
    rng = np.random.default_rng(4)
    rows = np.full(100, 480.0)
    data = np.round(rows[:, None] + rng.normal(100, 1.5, (100, 50))).astype(np.uint16)
    data[10:20, 5] = 60000
    ov = np.round(_overscan(rows, rng)).astype(np.uint16)
    p = prepare_quadrant(data, ov, 2, 6.0, 60000, 0.0, 0.0)
    assert p.saturated.sum() == 10 and p.saturated[10:20, 5].all()
    assert p.qa["saturated_fraction"] == pytest.approx(10 / 5000)
    assert p.qa["bias_level"] == pytest.approx(480.0, abs=0.2)
    assert p.qa["overscan_noise"] == pytest.approx(1.5, rel=0.1)
    assert p.qa["median_counts"] == pytest.approx(100.0, abs=0.5)


def test_prepare_subtracts_master_bias_before_linearising():
    rng = np.random.default_rng(5)
    rows = np.full(64, 470.0)
    pattern = rng.normal(0, 3, (64, 60)).astype(np.float32)
    data = np.round(rows[:, None] + pattern + 1000).astype(np.uint16)
    ov = np.round(_overscan(rows, rng)).astype(np.uint16)
    p = prepare_quadrant(data, ov, 1, 6.0, 65000, 0.0, 0.0, master_bias=pattern)
    assert np.std(p.image) < 0.6  # pattern gone, only rounding and level noise left


def test_prepare_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same number of rows"):
        prepare_quadrant(np.zeros((10, 5), np.uint16), np.zeros((9, 30), np.uint16), 1, 6.0,
                         6e4, 0.0, 0.0)


def test_bias_rows_within_acceptance_on_factory_file(tmp_path):
    """Acceptance: overscan-corrected bias level error <= 0.5 ADU RMS per row (all quadrants,
    with detector defects and a flat field in the data)."""
    shape = (256, 260)
    dets = [make_detector(shape, q) for q in range(4)]
    truth = make_raw(tmp_path, imgtype="flat", shape=shape, detectors=dets, flux=25000, seed=7)
    raw = read_raw(truth.path)
    cam = load_camera()
    for q in raw.quadrants:
        a, b = cam.nonlinearity(1, q.qid - 1)
        p = prepare_quadrant(q.data, q.overscan, q.qid, q.header["GAIN"], q.header["SATURATE"],
                             a, b)
        err = p.bias_rows - truth.bias_rows[q.qid - 1]
        assert np.sqrt(np.mean(err**2)) <= 0.5
        assert np.sqrt(np.mean(err**2)) < 0.25
