"""Astrometric calibration kernel (issue 4): accuracy against the simulator truth, robustness."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sep
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from zsds.camera import load_camera
from zsds.core.astrometry import (AstrometrySolution, match_catalogs, pixel_to_sky,
                                  sky_to_pixel, solve_astrometry)
from zsds.core.prepare import prepare_quadrant
from zsds.errors import AlgorithmError
from zsds.io.raw import read_raw
from zsds.io.refcat import apply_proper_motion, read_refcat

CCD, QID = 13, 3
LIMIT_MAS = 45.0


# ---------------------------------------------------------------------------------------
# fixtures: one simulated 1024x1030 quadrant, detected with sep
# ---------------------------------------------------------------------------------------
def _detect(image, saturated):
    """sep detections with windowed centroids; sources on saturated pixels dropped."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    bkg = sep.Background(img, mask=saturated, bw=128, bh=128)
    sub = img - bkg.back()
    obj = sep.extract(sub, 5.0, err=bkg.globalrms, minarea=5, mask=saturated)
    obj = obj[obj["flag"] == 0]
    flux, ferr, _ = sep.sum_circle(sub, obj["x"], obj["y"], 4.0, err=bkg.globalrms)
    xw, yw, flag = sep.winpos(sub, obj["x"], obj["y"], 1.8)
    on_sat = saturated[np.clip(np.round(yw).astype(int), 0, img.shape[0] - 1),
                       np.clip(np.round(xw).astype(int), 0, img.shape[1] - 1)]
    snr = flux / ferr
    keep = (flag == 0) & ~on_sat & (snr > 0)
    return pd.DataFrame({"x": xw, "y": yw, "flux": flux, "err": 1.3 / snr})[keep]


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    """Detections, header WCS, epoch-propagated references and truth stars (S/N >= 10)."""
    out = tmp_path_factory.mktemp("astrometry")
    subprocess.run([sys.executable, "-m", "zsds.cli", "simulate", str(out), "--fields", "655",
                    "--ccds", str(CCD), "--quads", str(QID), "--quad-size", "1024x1030",
                    "--exposures-per-night", "1", "--filters", "zr", "--n-bias", "0",
                    "--n-flat", "0", "--seed", "1"], check=True, capture_output=True)
    truth = pd.read_parquet(out / "truth" / "exposures.parquet")
    row = truth[(truth.qid == QID) & ~truth.blank].iloc[0]
    q = read_raw(out / row.raw_path).quadrants[QID - 1]
    a, b = load_camera().nonlinearity(CCD, QID - 1)
    with fits.open(out / "truth" / "detector" / f"ccd{CCD:02d}_q{QID}.fits") as det:
        prep = prepare_quadrant(q.data, q.overscan, QID, q.header["GAIN"], q.header["SATURATE"],
                                a, b, master_bias=det["BIAS"].data)
        image = prep.image / (det["PIXRESP"].data * det["ILLUM"].data)
    wcs = WCS(q.header)
    ny, nx = image.shape
    ra0, dec0 = wcs.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
    ref = read_refcat(out / "refcat", float(ra0), float(dec0), 0.35)
    ra, dec = apply_proper_motion(ref, Time(row.obsjd, format="jd").jyear)
    src = pd.read_parquet(out / "truth" / "sources" / str(row.night)
                          / f"{row.expid}_c{CCD:02d}_q{QID}.parquet")
    gain = q.header["GAIN"]
    noise = np.sqrt(src.flux_dn / gain + 3.4 * src.fwhm_px**2 * row.true_sky_dn / gain)
    stars = src[(src.kind == "star") & (src.flux_dn / noise >= 10) & src.x.between(3, nx - 4)
                & src.y.between(3, ny - 4)]
    pos = pd.DataFrame({"ra": ra, "dec": dec}, index=ref.source_id.to_numpy()).loc[stars.source_id]
    return {"det": _detect(image, prep.saturated), "wcs": wcs, "shape": image.shape,
            "ra": ra, "dec": dec, "mag": ref.r.to_numpy(float), "row": row,
            "truth": (stars.x.to_numpy(), stars.y.to_numpy(), pos.ra.to_numpy(),
                      pos.dec.to_numpy())}


def _solve(q, header_wcs=None, **kw) -> AstrometrySolution:
    d = q["det"]
    return solve_astrometry(d.x, d.y, d.flux, q["wcs"] if header_wcs is None else header_wcs,
                            q["ra"], q["dec"], q["mag"], q["shape"], centroid_err=d.err, **kw)


def _truth_rms_mas(sol, q):
    """Per-axis RMS (mas) of the solution at the TRUE pixel positions of S/N >= 10 stars."""
    x, y, ra, dec = q["truth"]
    ra_s, dec_s = sol.pixel_to_sky(x, y)
    dra = ((ra_s - ra + 180) % 360 - 180) * np.cos(np.radians(dec))
    return np.sqrt(np.mean(np.column_stack([dra, dec_s - dec]) ** 2, axis=0)) * 3.6e6


def _perturbed(wcs, shift_arcsec, rot_deg):
    w = wcs.deepcopy()
    w.wcs.crval = [w.wcs.crval[0] + shift_arcsec / 3600 / np.cos(np.radians(w.wcs.crval[1])),
                   w.wcs.crval[1]]
    a = np.radians(rot_deg)
    w.wcs.cd = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ w.wcs.cd
    w.wcs.set()
    return w


@pytest.fixture(scope="module")
def solution(quadrant):
    return _solve(quadrant)


# ---------------------------------------------------------------------------------------
# acceptance against the truth
# ---------------------------------------------------------------------------------------
def test_solution_rms_against_truth_within_acceptance(quadrant, solution):
    rms = _truth_rms_mas(solution, quadrant)
    assert len(quadrant["truth"][0]) > 300
    assert np.all(rms <= LIMIT_MAS), rms
    assert solution.n_matches > 300
    # The fit residuals include the centroid noise of ~0.05 px; they must stay at that level.
    assert 0.01 < solution.rms_ra_arcsec < 0.1 and 0.01 < solution.rms_dec_arcsec < 0.1


def test_sip_reproduces_truth_better_than_tan(quadrant, solution):
    tan = _solve(quadrant, sip_order=1)
    rms_sip, rms_tan = _truth_rms_mas(solution, quadrant), _truth_rms_mas(tan, quadrant)
    assert tan.wcs.wcs.ctype[0] == "RA---TAN" and solution.wcs.wcs.ctype[0] == "RA---TAN-SIP"
    assert np.all(rms_tan > 2.0 * rms_sip), (rms_tan, rms_sip)


@pytest.mark.parametrize("rot_deg", [0.1, -0.1])
def test_solves_header_off_by_60_arcsec_and_0p1_deg(quadrant, solution, rot_deg):
    sol = _solve(quadrant, _perturbed(quadrant["wcs"], 60.0, rot_deg))
    assert np.all(_truth_rms_mas(sol, quadrant) <= LIMIT_MAS)
    assert sol.n_matches >= solution.n_matches - 5
    # The reported header rotation follows the perturbation (moving CRVAL, 5 deg away, by
    # 60 arcsec in RA turns the local north by up to 60" sin(Dec) = 0.01 deg).
    assert sol.rotation_deg - solution.rotation_deg == pytest.approx(rot_deg, abs=0.015)
    assert sol.offset_arcsec > 30.0


def test_header_offset_and_rotation_against_truth(quadrant, solution):
    row = quadrant["row"]
    assert solution.offset_arcsec <= row.true_header_error_arcsec + 1.0
    expected = row.true_header_rotation_deg - row.true_rotation_deg
    assert solution.rotation_deg == pytest.approx(expected, abs=0.01)


# ---------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------
def test_no_detections_raises_algorithm_error(quadrant):
    with pytest.raises(AlgorithmError) as info:
        solve_astrometry([], [], [], quadrant["wcs"], quadrant["ra"], quadrant["dec"],
                         quadrant["mag"], quadrant["shape"])
    assert info.value.metadata["n_matches"] == 0


def test_random_positions_raise_algorithm_error(quadrant):
    rng = np.random.default_rng(3)
    ny, nx = quadrant["shape"]
    n = len(quadrant["det"])
    with pytest.raises(AlgorithmError) as info:
        solve_astrometry(rng.uniform(0, nx, n), rng.uniform(0, ny, n), rng.uniform(1, 1e4, n),
                         quadrant["wcs"], quadrant["ra"], quadrant["dec"], quadrant["mag"],
                         quadrant["shape"])
    assert info.value.metadata["n_matches"] < 30


def test_cloudy_quadrant_with_few_stars_raises(quadrant):
    d = quadrant["det"].nlargest(12, "flux")
    with pytest.raises(AlgorithmError, match="usable detections"):
        solve_astrometry(d.x, d.y, d.flux, quadrant["wcs"], quadrant["ra"], quadrant["dec"],
                         quadrant["mag"], quadrant["shape"])


# ---------------------------------------------------------------------------------------
# the solution object
# ---------------------------------------------------------------------------------------
def test_header_round_trips_through_fits(quadrant, solution):
    h = solution.header()
    assert h["CTYPE1"] == "RA---TAN-SIP" and h["A_ORDER"] == 3 and h["AP_ORDER"] == 4
    assert "CD1_1" in h and "PC1_1" not in h and "CDELT1" not in h
    assert h["ASTRNMAT"] == solution.n_matches
    assert h["ASTRRMS1"] == pytest.approx(solution.rms_ra_arcsec, abs=1e-4)
    ny, nx = quadrant["shape"]
    assert (h["CRPIX1"], h["CRPIX2"]) == pytest.approx(((nx - 1) / 2 + 1, (ny - 1) / 2 + 1))
    w = WCS(fits.Header.fromstring(h.tostring()))
    x, y = np.array([0.0, 511.5, nx - 1.0]), np.array([0.0, 514.5, ny - 1.0])
    ra1, dec1 = pixel_to_sky(w, x, y)
    ra2, dec2 = solution.pixel_to_sky(x, y)
    assert np.allclose(ra1, ra2, atol=1e-9) and np.allclose(dec1, dec2, atol=1e-9)


def test_sky_to_pixel_inverts_pixel_to_sky(solution, quadrant):
    ny, nx = quadrant["shape"]
    x, y = np.meshgrid(np.linspace(-20, nx + 20, 7), np.linspace(-20, ny + 20, 7))
    xb, yb = sky_to_pixel(solution.wcs, *solution.pixel_to_sky(x.ravel(), y.ravel()))
    assert np.max(np.hypot(xb - x.ravel(), yb - y.ravel())) < 1e-4
    assert solution.inverse_error_px < 0.01


def test_matched_indices_point_at_the_same_stars(quadrant, solution):
    i_d, i_r = solution.matched
    d = quadrant["det"]
    ra, dec = solution.pixel_to_sky(d.x.to_numpy()[i_d], d.y.to_numpy()[i_d])
    sep_arcsec = np.hypot((ra - quadrant["ra"][i_r]) * np.cos(np.radians(dec)),
                          dec - quadrant["dec"][i_r]) * 3600
    assert len(np.unique(i_r)) == len(i_r) == solution.n_matches
    assert np.percentile(sep_arcsec, 90) < 0.2


def test_match_catalogs_keeps_the_closest_of_competing_pairs():
    i1, i2, dist = match_catalogs([0.0, 0.3, 5.0, 9.0], [0.0, 0.0, 5.0, 9.0],
                                  [0.1, 5.0], [0.0, 5.5], radius=1.0)
    assert i1.tolist() == [0, 2] and i2.tolist() == [0, 1]
    assert dist == pytest.approx([0.1, 0.5])


def test_no_reference_stars_raises_algorithm_error(quadrant):
    d = quadrant["det"]
    with pytest.raises(AlgorithmError) as info:
        solve_astrometry(d.x, d.y, d.flux, quadrant["wcs"], [], [], [], quadrant["shape"])
    assert info.value.metadata["n_matches"] == 0
