"""Photometric calibration kernels and QA flags (synthetic, seeded data)."""

from __future__ import annotations

import numpy as np
import pytest

from zsds.core import photcal
from zsds.core.qaflags import (QA_FLAGS, QualityThresholds, flag_names, nominal_zero_point,
                               quality_status)
from zsds.errors import AlgorithmError

ZP, CLR = 26.2, 0.09


def _stars(n=400, seed=1, inst_err=0.01, ref_err=0.02):
    rng = np.random.default_rng(seed)
    colour = rng.uniform(0.1, 1.4, n)
    m_ref_true = rng.uniform(14, 18, n)
    m_inst = m_ref_true - ZP - CLR * colour + rng.normal(0, inst_err, n)
    m_ref = m_ref_true + rng.normal(0, ref_err, n)
    return m_inst, np.full(n, inst_err), m_ref, np.full(n, ref_err), colour


def test_zero_point_and_colour_term_are_recovered_within_their_errors():
    m_inst, e_inst, m_ref, e_ref, colour = _stars()
    fit = photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour)
    assert abs(fit.zp - ZP) < 4 * fit.zp_unc
    assert abs(fit.clrcoeff - CLR) < 4 * fit.clrcoeff_unc
    assert abs(fit.clrcoeff - CLR) < 0.01
    sigma = np.sqrt(0.01**2 + 0.02**2 + 0.005**2)
    assert fit.zp_rms == pytest.approx(sigma, rel=0.15)
    assert fit.n_used >= 390  # 3-sigma clipping of Gaussian noise removes ~1%


def test_outliers_are_clipped_and_do_not_bias_the_zero_point():
    m_inst, e_inst, m_ref, e_ref, colour = _stars(seed=2)
    bad = np.arange(0, 400, 10)  # 10% blends / variables, 0.5 mag too bright
    m_inst[bad] -= 0.5
    fit = photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour)
    assert not fit.used[bad].any()
    assert abs(fit.zp - ZP) < 0.006
    assert abs(fit.clrcoeff - CLR) < 0.015


def test_fixed_colour_term_is_kept_and_reported_without_uncertainty():
    m_inst, e_inst, m_ref, e_ref, colour = _stars(seed=3)
    fit = photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour, fit_colour=False,
                                 clrcoeff=CLR)
    assert fit.clrcoeff == CLR and fit.clrcoeff_unc == 0.0
    assert abs(fit.zp - ZP) < 0.005


def test_too_few_calibrators_raise_with_the_counts():
    m_inst, e_inst, m_ref, e_ref, colour = _stars(n=4)
    with pytest.raises(AlgorithmError) as info:
        photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour)
    assert info.value.metadata == {"n_stars": 4, "n_required": 5}


def test_nan_inputs_are_ignored():
    m_inst, e_inst, m_ref, e_ref, colour = _stars(seed=4)
    m_ref[:20] = np.nan
    fit = photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour)
    assert not fit.used[:20].any()
    assert abs(fit.zp - ZP) < 0.006


def test_header_carries_the_ztf_keywords():
    fit = photcal.fit_zero_point(*_stars(seed=5), pcolor="r-i")
    hdr = fit.header()
    assert set(hdr) == {"MAGZP", "MAGZPUNC", "MAGZPRMS", "CLRCOEFF", "CLRCOUNC", "CLRMED",
                        "PCOLOR", "NMATCHES"}
    assert hdr["PCOLOR"][0] == "r-i"
    assert hdr["NMATCHES"][0] == fit.n_used == int(fit.used.sum())
    assert hdr["MAGZP"][0] == fit.zp and isinstance(hdr["MAGZP"][1], str)


def test_calibrate_inverts_the_fit():
    m_inst, e_inst, m_ref, e_ref, colour = _stars(seed=6, inst_err=1e-4, ref_err=1e-4)
    fit = photcal.fit_zero_point(m_inst, e_inst, m_ref, e_ref, colour, floor=1e-4)
    assert np.max(np.abs(fit.residuals(m_inst, m_ref, colour))) < 1e-3


def test_select_calibrators_applies_every_cut():
    n = 7
    err = np.full(n, 0.01)          # S/N ~ 109
    ref_err = np.full(n, 0.01)
    colour = np.full(n, 0.6)
    sat, flag, iso = np.zeros(n, bool), np.zeros(n, bool), np.ones(n, bool)
    err[1] = 0.1                    # S/N ~ 11
    ref_err[2] = 0.08
    colour[3] = 1.8                 # outside the stellar locus
    sat[4], flag[5], iso[6] = True, True, False
    ok = photcal.select_calibrators(err, ref_err, colour, saturated=sat, flagged=flag, isolated=iso)
    assert ok.tolist() == [True] + [False] * 6
    ref_err[0] = np.nan
    assert not photcal.select_calibrators(err, ref_err, colour)[0]


def test_isolation_mask_rejects_close_pairs():
    x, y = np.array([10.0, 14.0, 100.0]), np.array([10.0, 10.0, 100.0])
    assert photcal.isolation_mask(x, y, 5.0).tolist() == [False, False, True]
    others = (np.array([10.0, 14.0, 100.0, 103.0]), np.array([10.0, 10.0, 100.0, 100.0]))
    assert not photcal.isolation_mask(x[2:], y[2:], 5.0, others_x=others[0], others_y=others[1])[0]


def test_aperture_correction_recovers_the_flux_ratio_and_clips_blends():
    rng = np.random.default_rng(7)
    small = rng.uniform(1e4, 1e5, 50)
    large = small * 1.03 * (1 + rng.normal(0, 0.002, 50))
    large[:3] *= 1.3  # neighbours inside the large aperture
    ap = photcal.aperture_correction(small, large)
    assert ap.apcor == pytest.approx(-2.5 * np.log10(1.03), abs=0.002)
    assert not ap.used[:3].any() and ap.n_used >= 44
    assert 0 < ap.apcor_unc < 0.001


def _gaussian_image(xs, ys, flux, sigma, shape=(120, 120)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for x0, y0, f in zip(xs, ys, flux):
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        img += f / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    return img


def test_curve_of_growth_follows_a_gaussian_profile():
    sigma = 2.5
    xs, ys = [30.3, 80.6, 40.1], [30.7, 50.2, 90.4]
    img = _gaussian_image(xs, ys, [1e4, 2e4, 5e3], sigma)
    radii, growth = photcal.curve_of_growth(img, xs, ys, [2.5, 5.0, 7.5, 25.0])
    expected = 1 - np.exp(-radii**2 / (2 * sigma**2))
    np.testing.assert_allclose(growth, expected / expected[-1], atol=0.01)  # point-sampled profile


def test_psf_nea_of_a_sampled_gaussian_is_four_pi_sigma_squared():
    sigma = 2.0
    psf = _gaussian_image([60.0], [60.0], [1.0], sigma)
    assert photcal.psf_nea(psf) == pytest.approx(4 * np.pi * sigma**2, rel=0.01)
    assert photcal.gaussian_nea(2.3548 * sigma) == pytest.approx(4 * np.pi * sigma**2, rel=1e-4)


def test_limiting_magnitude_is_the_flux_of_nsigma_optimal_snr():
    maglim = photcal.limiting_magnitude(26.0, 6.0, nea_px=16.0, nsigma=5.0)
    assert 10 ** (-0.4 * (maglim - 26.0)) == pytest.approx(5 * 6.0 * 4.0)
    deeper = photcal.limiting_magnitude(26.0, 6.0, nea_px=16.0, nsigma=10)
    assert deeper == pytest.approx(maglim - 2.5 * np.log10(2))
    with pytest.raises(ValueError):
        photcal.limiting_magnitude(26.0, 6.0)


def test_fifty_percent_completeness_of_a_5_sigma_detector_is_maglim():
    rng = np.random.default_rng(8)
    zp, rms, nea = 26.0, 6.0, 16.0
    maglim = photcal.limiting_magnitude(zp, rms, nea_px=nea)
    mags = rng.uniform(18, 23, 40000)
    snr = 10 ** (-0.4 * (mags - zp)) / (rms * np.sqrt(nea))
    detected = snr + rng.standard_normal(mags.size) > 5.0
    m50 = photcal.completeness_magnitude(mags, detected, np.arange(18, 23.01, 0.1))
    assert abs(m50 - maglim) < 0.03
    centres, frac, n = photcal.completeness_curve(mags, detected, np.arange(18, 23.01, 0.5))
    assert frac[0] > 0.99 and frac[-1] < 0.01 and n.sum() == mags.size


def test_completeness_magnitude_raises_without_a_crossing():
    mags = np.linspace(18, 20, 100)
    with pytest.raises(AlgorithmError):
        photcal.completeness_magnitude(mags, np.ones(100, bool), np.arange(18, 20.01, 0.25))


# --------------------------------------------------------------------------- QA flags

GOOD = {"n_calibrators": 500, "zp_rms": 0.03, "zp_unc": 0.002, "zp": 26.25,
        "zp_nominal": nominal_zero_point(26.39, 0.10, 1.2), "seeing_arcsec": 2.0,
        "astrometry_ok": True, "astrometry_rms_arcsec": 0.1, "n_sources": 5000,
        "saturated_fraction": 0.001}


def test_flag_registry_has_unique_bits_and_names():
    assert len({f.bit for f in QA_FLAGS}) == len({f.name for f in QA_FLAGS}) == len(QA_FLAGS)
    assert all(f.value == 1 << f.bit for f in QA_FLAGS)


def test_good_image_has_no_flags_and_status_one():
    infobits, status, reasons = quality_status(GOOD)
    assert (infobits, status, reasons) == (0, 1, [])


def test_cloudy_image_is_flagged_bad_with_the_numbers():
    result = quality_status({**GOOD, "zp": 24.0})
    assert flag_names(result.infobits) == ["CLOUDY"]
    assert result.status == 0
    assert "2.270" in result.reasons[0]


def test_non_fatal_flag_keeps_status_good_and_nan_fails_its_check():
    result = quality_status({**GOOD, "saturated_fraction": 0.2})
    assert flag_names(result.infobits) == ["SATURATION_HIGH"] and result.status == 1
    result = quality_status({**GOOD, "zp_rms": float("nan"), "n_calibrators": 10})
    assert set(flag_names(result.infobits)) == {"LARGE_ZP_RMS", "FEW_CALIBRATORS"}
    assert result.status == 0 and len(result.reasons) == 2


def test_thresholds_and_missing_metrics():
    strict = QualityThresholds(max_seeing_arcsec=2.5)
    assert quality_status({"seeing_arcsec": 3.0}, strict).status == 0
    assert quality_status({}).infobits == 0
    assert flag_names(quality_status({"astrometry_ok": False}).infobits) == ["ASTROMETRY_FAILED"]
