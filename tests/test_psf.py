"""PSF model and PSF-fit photometry on a simulated 1024x1030 quadrant (issue 4 acceptance)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from zsds.core.background import background_maps
from zsds.core.extract import FLAGS
from zsds.core.psf import PSFModel, fit_psf_model, select_psf_stars
from zsds.core.psfphot import psf_photometry
from zsds.errors import AlgorithmError
from zsds.sim.render import psf_stamp

from test_extract import extracted_quadrant, isolated_truth


@pytest.fixture(scope="module")
def quad(tmp_path_factory):
    return extracted_quadrant(tmp_path_factory.mktemp("psf"))


@pytest.fixture(scope="module")
def fitted(quad):
    img, var, sat, gain, truth, bg, cat = quad
    sub = img - bg.sky
    psf = fit_psf_model(sub, bg.rms, cat, sat, gain=gain)
    phot = psf_photometry(sub, var, psf, cat["x"], cat["y"], mask=sat, sky_variance=bg.rms**2)
    return img, truth, cat, psf, phot


def _isolated_stars(img, truth, cat, phot):
    tr = truth[truth.kind != "asteroid"].reset_index(drop=True)
    d, j = cKDTree(np.c_[tr.x, tr.y]).query(np.c_[phot["x"], phot["y"]])
    ny, nx = img.shape
    inside = (phot["x"] > 16) & (phot["x"] < nx - 17) & (phot["y"] > 16) & (phot["y"] < ny - 17)
    sel = ((d < 1) & (tr.kind.to_numpy()[j] == "star") & isolated_truth(tr)[j] & inside
           & ((cat["flags"] & (FLAGS["SATURATED"] | FLAGS["NEAR_BAD"])) == 0) & (cat["peak"] < 25000))
    return sel, tr.flux_dn.to_numpy()[j]


def test_psf_fwhm_at_centre_within_5_percent(fitted):
    img, truth, _, psf, _ = fitted
    st = truth[truth.kind == "star"]
    k = np.argmin(np.hypot(st.x - img.shape[1] / 2, st.y - img.shape[0] / 2))
    assert abs(psf.meta["fwhm_centre"] / st.fwhm_px.to_numpy()[k] - 1) < 0.05


def test_psf_stamps_are_normalised_and_match_truth(fitted):
    img, truth, _, psf, _ = fitted
    stars = truth[truth.kind == "star"]
    st = stars.iloc[np.argmin(np.hypot(stars.x - img.shape[1] / 2, stars.y - img.shape[0] / 2))]
    stamp = psf.evaluate(np.round(st.x) + 0.3, np.round(st.y) - 0.2)[0]
    assert abs(stamp.sum() - 1) < 0.01
    true = psf_stamp(st.fwhm_px, st.beta, st.ellip, st.theta, psf.half, 0.3, -0.2)
    assert np.abs(stamp - true).max() < 0.05 * true.max()


def test_psf_fits_roundtrip(fitted):
    psf = fitted[3]
    back = PSFModel.from_fits(psf.to_fits())
    assert np.allclose(back.evaluate([100.2], [300.7]), psf.evaluate([100.2], [300.7]), rtol=1e-5, atol=1e-8)
    assert back.apcorr == pytest.approx(psf.apcorr)


@pytest.mark.parametrize("n_stars", [5, 9, 15])
def test_few_stars_give_valid_model_or_raise(fitted, n_stars):
    """Regression: with few stars (small quadrants) nodes went unsampled and the model NaN."""
    img, truth, cat, _, _ = fitted
    bg = background_maps(img)
    stars = select_psf_stars(cat, img.shape, 12)[:n_stars]
    try:
        psf = fit_psf_model(img - bg.sky, bg.rms, cat, stars=stars, degree=2)
    except AlgorithmError as exc:
        assert "n_stars" in exc.metadata or "node_sum" in exc.metadata
        return
    assert np.isfinite(psf.nodes).all() and np.isfinite(psf.apcorr)
    assert psf.degree <= (1 if n_stars < 20 else 2)
    true = float(truth.loc[truth.kind == "star", "fwhm_px"].median())
    assert abs(psf.meta["fwhm_centre"] / true - 1) < 0.1
    assert abs(psf.evaluate([300.0], [400.0])[0].sum() - 1) < 0.01


def test_too_few_stars_raise(fitted):
    img, _, cat, _, _ = fitted
    with pytest.raises(AlgorithmError, match="PSF stars"):
        fit_psf_model(img, np.ones_like(img), cat[:0], None)


def test_psf_flux_unbiased_within_1_percent(fitted):
    img, truth, cat, _, phot = fitted
    sel, ftrue = _isolated_stars(img, truth, cat, phot)
    sel &= phot["snr"] > 20
    assert sel.sum() > 50
    assert abs(np.median(phot["flux"][sel] / ftrue[sel]) - 1) < 0.01


def test_psf_flux_errors_honest(fitted):
    """Issue 4 acceptance on the small quadrant: std of (measured - true) / error within 10%
    of 1 (was 1.25-1.53: in-sample model error, 1% wing-extrapolation cap)."""
    img, truth, cat, _, phot = fitted
    sel, ftrue = _isolated_stars(img, truth, cat, phot)
    z = (phot["flux"][sel] - ftrue[sel]) / phot["flux_err"][sel]
    assert sel.sum() > 300
    assert 0.9 < np.std(z) < 1.1


def test_model_error_is_measured_out_of_sample(quad, fitted, monkeypatch):
    """The model's own stars under-state its error: the cross-validated estimate exceeds it."""
    import zsds.core.psf as psfmod
    img, _, sat, gain, _, bg, cat = quad
    monkeypatch.setattr(psfmod, "_folds", lambda n, n_folds=5: np.full(n, -1))
    in_sample = fit_psf_model(img - bg.sky, bg.rms, cat, sat, gain=gain).meta["model_error"]
    assert fitted[3].meta["model_error"] > 1.5 * in_sample
    assert 0 < fitted[3].meta["model_error"] < 0.03


def test_wing_fraction_follows_the_core(fitted):
    """Regression: a power law fitted to the noisy 4-9 px wings hit the 1% cap on this quadrant;
    the true Moffat (beta ~3) puts 0.03% of the flux between 14 and 30 px."""
    from zsds.core.psf import _wing_fraction
    assert 0 <= _wing_fraction(fitted[3], 30.0) < 0.002


def _star_on_column(psf, flux, x, y, shape=(120, 120), sky_sigma=5.0, seed=3):
    """Image (sky-subtracted, DN) of PSF stars at (x, y), sky noise only; a 0-based bad
    column through the first star's core, masked and filled with garbage."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, sky_sigma, shape)
    for f, xs, ys in zip(flux, x, y):
        stamp = psf.evaluate([xs], [ys], 10)[0] * f / psf.apcorr
        xi, yi = int(np.rint(xs)), int(np.rint(ys))
        img[yi - 10:yi + 11, xi - 10:xi + 11] += stamp
    mask = np.zeros(shape, bool)
    mask[:, int(np.rint(x[0]))] = True
    img[mask] = -1000.0
    return img, np.full(shape, sky_sigma**2), mask


def test_masked_column_split_detection_counts_the_star_once(fitted):
    """A bad column through a star splits its detection in two, each centroid ~1.5 px off:
    the star is found (position search), its flux counted once, the other half DUPLICATE."""
    from zsds.core.psfphot import PSFPHOT_FLAGS
    psf = fitted[3]
    flux, xt, yt = [20000.0, 8000.0], [60.3, 30.0], [50.2, 90.0]
    img, var, mask = _star_on_column(psf, flux, xt, yt)
    x0, y0 = [58.8, 61.8, 30.1], [50.2, 50.3, 89.9]
    phot = psf_photometry(img, var, psf, x0, y0, mask=mask, sky_variance=var)
    dup = (phot["flags"] & PSFPHOT_FLAGS["DUPLICATE"]) > 0
    assert dup.sum() == 1 and not dup[2]
    main = int(np.flatnonzero(~dup[:2])[0])
    assert np.hypot(phot["x"][main] - xt[0], phot["y"][main] - yt[0]) < 0.1
    assert abs(phot["flux"][main] / flux[0] - 1) < 3 * phot["flux_err"][main] / flux[0] + 0.01
    assert abs(phot["flux"][dup][0]) < 0.02 * flux[0]
    assert abs(phot["flux"][2] / flux[1] - 1) < 0.03


def test_masked_core_centroid_off_by_2px_is_recovered(fitted):
    """One detection whose centroid the masked core pushed 2 px away (beyond Gauss-Newton's
    reach): the fit still finds the star and its flux; unmasked sources are not searched."""
    from zsds.core.psfphot import PSFPHOT_FLAGS
    psf = fitted[3]
    img, var, mask = _star_on_column(psf, [15000.0], [60.4], [50.0])
    phot = psf_photometry(img, var, psf, [62.4], [50.3], mask=mask, sky_variance=var)
    assert np.hypot(phot["x"][0] - 60.4, phot["y"][0] - 50.0) < 0.1
    assert abs(phot["flux"][0] / 15000.0 - 1) < 0.02
    assert phot["flags"][0] & PSFPHOT_FLAGS["HAS_MASKED"]
    assert not phot["flags"][0] & PSFPHOT_FLAGS["DUPLICATE"]


def test_faint_star_errors_honest(fitted):
    img, truth, cat, _, phot = fitted
    sel, ftrue = _isolated_stars(img, truth, cat, phot)
    sel &= (phot["snr"] > 5) & (phot["snr"] < 20)
    z = (phot["flux"][sel] - ftrue[sel]) / phot["flux_err"][sel]
    assert sel.sum() > 30
    assert 0.8 < 1.4826 * np.median(np.abs(z - np.median(z))) < 1.2


def test_sharpness_separates_galaxies(fitted):
    img, truth, cat, _, phot = fitted
    sel, _ = _isolated_stars(img, truth, cat, phot)
    sel &= phot["snr"] > 20
    assert abs(np.median(phot["sharpness"][sel])) < 0.05
    tr = truth[truth.kind != "asteroid"].reset_index(drop=True)
    d, j = cKDTree(np.c_[tr.x, tr.y]).query(np.c_[phot["x"], phot["y"]])
    gal = (d < 1.5) & (tr.kind.to_numpy()[j] == "galaxy") & (phot["snr"] > 20) & (tr.fwhm_px.to_numpy()[j] > 4)
    if gal.sum():
        assert np.median(phot["sharpness"][gal]) > 0.1
