"""Low-frequency flat from calibration-star residuals (synthetic, seeded data)."""

from __future__ import annotations

import numpy as np
import pytest

from zsds.core.lowflat import apply_lowflat, fit_lowflat, grid_medians, grid_residual_structure
from zsds.errors import AlgorithmError

SHAPE = (300, 320)  # (ny, nx)


def _vignetting_mag(x, y):
    """A smooth response loss (mag, positive = too faint), up to ~3% at the corners."""
    ny, nx = SHAPE
    r2 = ((x - 0.3 * nx) / nx) ** 2 + ((y - 0.6 * ny) / ny) ** 2
    return 0.04 * r2 + 0.005 * x / nx


def _residuals(n_exp=10, n_per=300, noise=0.01, seed=1, pattern=True):
    rng = np.random.default_rng(seed)
    n = n_exp * n_per
    x = rng.uniform(0, SHAPE[1] - 1, n)
    y = rng.uniform(0, SHAPE[0] - 1, n)
    expid = np.repeat(np.arange(100, 100 + n_exp), n_per)
    offsets = rng.normal(0, 0.05, n_exp)  # zero-point errors of the per-exposure fits
    dmag = offsets[expid - 100] + rng.normal(0, noise, n)
    if pattern:
        dmag += _vignetting_mag(x, y)
    return x, y, dmag, np.full(n, 1 / noise**2), expid


def test_fitted_flat_removes_the_large_scale_pattern():
    x, y, dmag, w, expid = _residuals()
    fit = fit_lowflat(x, y, dmag, w, SHAPE, exposure=expid)
    offsets = dict(zip(fit.exposures, fit.zp_offsets))
    after = dmag - fit.mag_correction(x, y) - np.array([offsets[e] for e in expid])
    assert grid_residual_structure(x, y, after, SHAPE) < 0.003  # noise: ~0.001 per cell
    assert grid_residual_structure(x, y, dmag - np.median(dmag), SHAPE, relative=True) > 0.01
    assert fit.rms == pytest.approx(0.01, rel=0.1)
    assert fit.rms_before > 1.2 * fit.rms  # pattern RMS ~0.007 on 0.01 noise


def test_flat_is_median_one_and_matches_the_true_response():
    x, y, dmag, w, expid = _residuals(seed=2)
    fit = fit_lowflat(x, y, dmag, w, SHAPE, exposure=expid)
    assert fit.flat.shape == SHAPE and fit.flat.dtype == np.float32
    assert np.median(fit.flat) == pytest.approx(1.0, abs=1e-6)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    truth = 10 ** (0.4 * _vignetting_mag(xx, yy))
    truth /= np.median(truth)
    assert np.max(np.abs(fit.flat / truth - 1)) < 0.003
    iy, ix = np.array([0, 150, 299]), np.array([0, 200, 319])
    np.testing.assert_allclose(fit.evaluate(ix, iy), fit.flat[iy, ix], rtol=1e-5)


def test_zero_point_offsets_are_not_absorbed_into_the_flat():
    x, y, dmag, w, expid = _residuals(seed=3, pattern=False)
    fit = fit_lowflat(x, y, dmag, w, SHAPE, exposure=expid)
    assert np.max(np.abs(fit.flat - 1)) < 0.003
    true_offsets = np.array([np.mean(dmag[expid == e]) for e in fit.exposures])
    np.testing.assert_allclose(fit.zp_offsets, true_offsets, atol=0.002)


def test_outliers_are_clipped():
    x, y, dmag, w, expid = _residuals(seed=4)
    dmag[::25] += 0.3  # variables and blends
    fit = fit_lowflat(x, y, dmag, w, SHAPE, exposure=expid)
    assert not fit.used[::25].any()
    offsets = dict(zip(fit.exposures, fit.zp_offsets))
    good = np.ones(dmag.size, bool)
    good[::25] = False
    after = dmag - fit.mag_correction(x, y) - np.array([offsets[e] for e in expid])
    assert grid_residual_structure(x[good], y[good], after[good], SHAPE) < 0.003


def test_too_few_stars_raise_with_the_counts():
    x, y, dmag, w, expid = _residuals(n_exp=2, n_per=10)
    with pytest.raises(AlgorithmError) as info:
        fit_lowflat(x, y, dmag, w, SHAPE, exposure=expid)
    assert info.value.metadata["n_stars"] == 20


def test_apply_lowflat_divides_and_brightens_where_response_is_low():
    flat = np.array([[0.98, 1.0], [1.0, 1.02]], np.float32)
    image = np.full((2, 2), 100.0, np.float32)
    out = apply_lowflat(image, flat)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 100.0 / flat)


def test_grid_medians_locate_a_one_cell_offset():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 320, 4000)
    y = rng.uniform(0, 300, 4000)
    resid = np.zeros(4000)
    corner = (x >= 240) & (y < 75)  # cell [row 0, column 3]
    resid[corner] = 0.01
    cells = grid_medians(x, y, resid, SHAPE)
    assert cells[0, 3] == pytest.approx(0.01) and np.count_nonzero(cells) == 1
    assert grid_residual_structure(x, y, resid, SHAPE) == pytest.approx(0.01)
    assert grid_residual_structure(x, y, resid + 0.02, SHAPE) == pytest.approx(0.03)
    assert grid_residual_structure(x, y, resid + 0.02, SHAPE, relative=True) == pytest.approx(0.01)
