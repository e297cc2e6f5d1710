"""ZOGY kernels (zsds.core.zogy), FFT plans (zsds.core.fft) and flux matching helpers.

Synthetic 1024^2 pairs (tests/zogyfactory.py): Gaussian PSFs, 400 common stars, Poisson +
read noise, 300 transients (half new-only, half ref-only) at S/N 7-30 in the difference.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from zogyfactory import gaussian_stamp, make_pair, source_free

from zsds.core import fft as zfft
from zsds.core.fluxmatch import flux_scale, match_background, zogy_flux_zps
from zsds.core.zogy import difference_psf, zogy_subtract, zogy_tiled

RATIOS = (0.7, 1.0, 1.5, 2.0)
FWHM_REF = 3.0


@lru_cache(maxsize=None)
def _case(ratio):
    pair = make_pair((1024, 1024), n_stars=400, fwhm_ref=FWHM_REF, fwhm_new=FWHM_REF * ratio,
                     n_transients=300, snr=(7.0, 30.0), seed=11)
    res = zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref, sigma_new=pair.sigma_new,
                        sigma_ref=pair.sigma_ref, flux_zp_ref=pair.flux_zp_ref,
                        var_new=pair.var_new, var_ref=pair.var_ref,
                        astrometric_sigma=(0.02, 0.02))
    return pair, res


def _snr(pair):
    pd, fd = difference_psf(pair.psf_new, pair.psf_ref, sigma_new=pair.sigma_new,
                            sigma_ref=pair.sigma_ref, flux_zp_ref=pair.flux_zp_ref)
    return np.abs(pair.tr_flux_new) * fd * np.sqrt(np.sum(pd.astype(float) ** 2))


# ----------------------------------------------------------------------------- FFT plans


def test_padded_shape():
    assert zfft.padded_shape((3072, 3080)) == (3072, 3200)
    assert zfft.padded_shape((1024, 1000)) == (1024, 1000)
    assert zfft.fast_size(257) == 270


def test_plans_roundtrip_count_and_wisdom():
    plans = zfft.FFTPlans((48, 60), threads=1, effort="FFTW_ESTIMATE")
    a = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    A = plans.rfft2(a)
    np.testing.assert_allclose(A, np.fft.rfft2(a, s=(48, 60)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plans.irfft2(A, a.shape), a, atol=1e-5)
    assert plans.count == 2
    assert zfft.get_plans((48, 60)) is zfft.get_plans((48, 60))
    assert all(zfft.import_wisdom(zfft.export_wisdom()))


_OTHER_PROCESS = """
import sys, numpy as np
from zsds.io.fftwisdom import measured_plans
a = np.load(sys.argv[2])
np.save(sys.argv[3], measured_plans((96, 120), 1, sys.argv[1]).rfft2(a))
"""


def test_measured_plans_are_shared_through_the_wisdom_file(tmp_path):
    import subprocess
    import sys

    from zsds.io.fftwisdom import measured_plans

    path = tmp_path / "cache" / "wisdom.bin"
    a = np.random.default_rng(3).normal(size=(90, 110)).astype(np.float32)
    plans = measured_plans((96, 120), 1, path)
    assert path.exists() and measured_plans((96, 120), 1, path) is plans
    stamp = path.stat().st_mtime_ns
    A = plans.rfft2(a)
    np.testing.assert_allclose(A, np.fft.rfft2(a, s=(96, 120)), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(plans.irfft2(A, a.shape), a, atol=1e-5)
    np.save(tmp_path / "a.npy", a)
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(path), str(tmp_path / "a.npy"),
                    str(tmp_path / "A.npy")], check=True)
    assert np.array_equal(np.load(tmp_path / "A.npy"), A)   # the same plan, bit for bit
    assert path.stat().st_mtime_ns == stamp                  # taken from the file, not re-measured
    path.write_bytes(b"garbage")                             # unreadable wisdom: measured again
    assert measured_plans((96, 120), 1, path).rfft2(a).shape == A.shape
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")                                  # the cache cannot be created:
    plans = measured_plans((90, 100), 1, blocker / "wisdom.bin")  # estimated plans, no error
    np.testing.assert_allclose(plans.irfft2(plans.rfft2(a[:90, :100])), a[:90, :100], atol=1e-5)


# ----------------------------------------------------------------------------- ZOGY statistics


@pytest.mark.parametrize("ratio", RATIOS)
def test_scorr_source_free_is_unit_normal(ratio):
    pair, res = _case(ratio)
    free = source_free(pair, 4 * FWHM_REF * max(ratio, 1)) & ~res.mask
    s = res.S_corr[free]
    assert abs(s.mean()) < 0.05
    assert abs(s.std() - 1) < 0.05
    assert abs(res.D[free].std() - 1) < 0.05
    assert res.P_D.sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("ratio", RATIOS)
def test_transients_detected_with_both_signs(ratio):
    pair, res = _case(ratio)
    signed = np.sign(pair.tr_flux_new) * res.S_corr[pair.tr_y, pair.tr_x]
    snr = _snr(pair)
    for sign in (1, -1):
        sel = np.sign(pair.tr_flux_new) == sign
        assert np.mean(signed[sel] >= 5) >= 0.98
    assert np.all(signed[snr >= 10] >= 5)


@pytest.mark.parametrize("ratio", RATIOS)
def test_transient_flux_unbiased_with_honest_errors(ratio):
    pair, res = _case(ratio)
    sel = _snr(pair) >= 10
    y, x, true = pair.tr_y[sel], pair.tr_x[sel], pair.tr_flux_new[sel]
    flux, err = res.point_source_flux(y, x)
    assert sel.sum() >= 200
    assert np.mean(flux / true) == pytest.approx(1.0, abs=0.02)
    assert np.std((flux - true) / err) == pytest.approx(1.0, abs=0.10)
    # the linear fit of P_D on D_flux cutouts is the same estimator
    h = res.P_D.shape[0] // 2
    p = res.P_D.astype(float)
    cut = np.stack([res.D_flux[j - h:j + h + 1, i - h:i + h + 1] for j, i in zip(y, x)])
    fit = (cut * p).sum((1, 2)) / (p**2).sum()
    np.testing.assert_allclose(fit, flux, rtol=0.01, atol=0.01 * np.median(err))


def test_fft_count():
    pair, res = _case(1.0)
    assert res.n_fft == 12 <= 13
    plain = zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref,
                          sigma_new=pair.sigma_new, sigma_ref=pair.sigma_ref,
                          flux_zp_ref=pair.flux_zp_ref)
    assert plain.n_fft == 6
    assert np.ndim(plain.S_var) == 0


def test_constant_variance_map_equals_scalar_path():
    pair = make_pair((256, 256), n_stars=30, fwhm_new=4.0, seed=2)
    kw = dict(sigma_new=pair.sigma_new, sigma_ref=pair.sigma_ref, flux_zp_ref=pair.flux_zp_ref)
    a = zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref, **kw)
    b = zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref, **kw,
                      var_new=np.full((256, 256), pair.sigma_new**2),
                      var_ref=np.full((256, 256), pair.sigma_ref**2))
    np.testing.assert_allclose(b.S_corr, a.S_corr, atol=2e-3)


def test_masked_pixels_and_border_are_flagged():
    pair = make_pair((256, 256), n_stars=30, seed=3)
    mask = np.zeros((256, 256), bool)
    mask[100, 120] = True
    new = pair.new.copy()
    new[50, 60] = np.nan
    res = zogy_subtract(new, pair.ref, pair.psf_new, pair.psf_ref, sigma_new=pair.sigma_new,
                        sigma_ref=pair.sigma_ref, mask_ref=mask)
    assert np.all(np.isfinite(res.S_corr))
    assert res.mask[100, 120] and res.mask[50, 60] and res.mask[100, 125]
    assert res.mask[0].all() and res.mask[:, -1].all() and not res.mask[128, 180]


def test_tiled_equals_global_for_constant_psf():
    pair = make_pair((512, 512), n_stars=100, fwhm_new=4.0, seed=4)
    kw = dict(sigma_new=pair.sigma_new, sigma_ref=pair.sigma_ref, flux_zp_ref=pair.flux_zp_ref,
              var_new=pair.var_new, var_ref=pair.var_ref)
    whole = zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref, **kw)
    tiled = zogy_tiled(pair.new, pair.ref, lambda x, y: pair.psf_new, lambda x, y: pair.psf_ref,
                       tile=200, **kw)
    assert len(tiled.tiles) == 9
    good = ~whole.mask
    np.testing.assert_array_equal(tiled.mask, whole.mask)
    np.testing.assert_allclose(tiled.S_corr[good], whole.S_corr[good], atol=2e-3)
    np.testing.assert_allclose(tiled.D_flux[good], whole.D_flux[good], atol=1e-2 * whole.D_flux.std())


def test_tiled_follows_a_varying_psf():
    """New PSF FWHM 3 px on the left half, 5 px on the right: tiles with the local PSF."""
    left = make_pair((512, 256), n_stars=60, fwhm_new=3.0, seed=5)
    right = make_pair((512, 256), n_stars=60, fwhm_new=5.0, seed=6)
    new, ref = np.hstack([left.new, right.new]), np.hstack([left.ref, right.ref])
    half = right.psf_new.shape[0] // 2
    psf_left = gaussian_stamp(3.0, half)
    psf_at = lambda x, y: psf_left if x < 256 else right.psf_new  # noqa: E731
    kw = dict(sigma_new=left.sigma_new, sigma_ref=left.sigma_ref, flux_zp_ref=left.flux_zp_ref)
    tiled = zogy_tiled(new, ref, psf_at, lambda x, y: left.psf_ref, tile=(256, 256),
                       overlap=40, **kw)
    free = np.hstack([source_free(left, 12), source_free(right, 20)]) & ~tiled.mask
    free[:, 216:296] = False  # tile seam: each side's kernels see the other PSF
    s = tiled.S_corr[free]
    assert abs(s.mean()) < 0.05 and abs(s.std() - 1) < 0.05
    assert tiled.tile_at(10, 300).P_D.shape != tiled.tile_at(10, 10).P_D.shape or \
        not np.allclose(tiled.tile_at(10, 300).P_D, tiled.tile_at(10, 10).P_D)


def test_rejects_even_psf_stamp():
    pair = make_pair((256, 256), n_stars=5, seed=7)
    with pytest.raises(ValueError, match="psf_new"):
        zogy_subtract(pair.new, pair.ref, np.ones((4, 4)), pair.psf_ref, sigma_new=1.0,
                      sigma_ref=1.0)


# ----------------------------------------------------------------------------- flux matching


def test_flux_scale_convention():
    assert flux_scale(26.0, 26.0) == 1.0
    # a reference with a zero point 2.5 mag brighter holds 10x more DN per star
    assert flux_scale(25.0, 27.5) == pytest.approx(0.1)
    assert zogy_flux_zps(25.0, 27.5) == pytest.approx((1.0, 10.0))


def test_match_background_recovers_a_plane():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    plane = 5.0 + 0.01 * xx - 0.02 * yy
    new = plane + rng.normal(0, 3, (300, 400))
    new[100:110, 100:110] += 1000  # a source, clipped
    model = match_background(new, np.zeros_like(new), order=1)
    np.testing.assert_allclose(model, plane, atol=0.1)
    assert match_background(new, new - 2.0, order=0)[0, 0] == pytest.approx(2.0, abs=1e-4)
