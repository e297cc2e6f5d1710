"""Source extraction (aperture catalogue) on a simulated 1024x1030 quadrant with truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from zsds.camera import load_camera
from zsds.core.background import background_maps
from zsds.core.extract import APER_RADII, COLUMNS, FLAGS, add_sky_coordinates, extract_sources
from zsds.io.raw import read_raw
from zsds.sim import checks


def load_truth_quadrant(out: Path, qid: int = 3):
    """Truth-detrended, flat-fielded quadrant (DN), its variance, saturation map, gain, truth.

    The flat is ``PIXRESP * ILLUM / median(PIXRESP * ILLUM)`` (a real flat's normalisation),
    the one in which the truth ``flux_dn`` applies.
    """
    exp = pd.read_parquet(out / "truth" / "exposures.parquet")
    row = exp[(exp.imgtype == "object") & (exp.qid == qid)].iloc[0]
    quad = read_raw(out / row.raw_path).quadrants[qid - 1]
    fb = pd.read_parquet(out / "truth" / "floating_bias.parquet")
    rows = fb[(fb.expid == row.expid) & (fb.qid == qid)].iloc[0]["bias_rows"]
    with fits.open(out / "truth" / "detector" / f"ccd{row.ccd_id:02d}_q{qid}.fits") as det:
        pattern, resp, illum = det["BIAS"].data, det["PIXRESP"].data, det["ILLUM"].data
    amp = load_camera().amplifier(int(row.ccd_id), qid)
    img = checks.truth_detrend(quad.data, rows, pattern, resp, amp.nl_a, amp.nl_b)
    norm = float(np.median(resp * illum))
    gain, rn = quad.header["GAIN"], quad.header["READNOI"]
    var = (np.clip(img * resp, 0, None) / gain + (rn / gain) ** 2) / (resp * illum / norm) ** 2
    truth = pd.read_parquet(out / "truth" / "sources" / str(row.night)
                            / f"{row.expid}_c{row.ccd_id:02d}_q{qid}.parquet")
    return ((img / illum * norm).astype(np.float32), var.astype(np.float32),
            quad.data >= quad.header["SATURATE"], float(gain), truth)


def simulate(out: Path, size: str = "1024x1030"):
    subprocess.run([sys.executable, "-m", "zsds.cli", "simulate", str(out), "--fields", "655",
                    "--ccds", "13", "--quads", "3", "--quad-size", size, "--exposures-per-night", "1",
                    "--filters", "zr", "--n-bias", "0", "--n-flat", "0", "--seed", "1"],
                   check=True, capture_output=True)


def isolated_truth(truth: pd.DataFrame, radius: float = 12.0, frac: float = 0.01) -> np.ndarray:
    """True for sources with no other source within ``radius`` px brighter than ``frac`` of them."""
    x, y, f = truth["x"].to_numpy(), truth["y"].to_numpy(), truth["flux_dn"].to_numpy()
    iso = np.ones(len(truth), bool)
    pairs = cKDTree(np.c_[x, y]).query_pairs(radius, output_type="ndarray")
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        iso[a[f[b] > frac * f[a]]] = False
        iso[b[f[a] > frac * f[b]]] = False
    return iso


def extracted_quadrant(out):
    """Simulate into ``out``, detrend with the truth, and extract: the shared test input."""
    simulate(out)
    img, var, sat, gain, truth = load_truth_quadrant(out)
    bg = background_maps(img, sat)
    fwhm = float(truth.loc[truth.kind == "star", "fwhm_px"].median())
    cat = extract_sources(img, bg.sky, bg.rms, None, gain=gain, psf_fwhm=fwhm, saturated=sat)
    return img, var, sat, gain, truth, bg, cat


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    return extracted_quadrant(tmp_path_factory.mktemp("extract"))


def _match(cat, truth, radius=1.0):
    tr = truth[truth.kind != "asteroid"].reset_index(drop=True)
    d, j = cKDTree(np.c_[tr.x, tr.y]).query(np.c_[cat["x"], cat["y"]])
    return tr, d < radius, j


def test_columns_documented_and_present(quadrant):
    cat = quadrant[-1]
    assert [c[0] for c in COLUMNS] == cat.colnames
    assert cat["flux_aper"].shape[1] == len(APER_RADII) and cat["areal"].shape[1] == 8
    assert {7.0, 9.0} <= set(APER_RADII)
    assert all(desc for _, _, desc in COLUMNS)


def test_background_matches_sky(quadrant):
    img, _, _, _, truth, bg, _ = quadrant
    # the sky includes the light of sources fainter than the detection limit: a few DN
    assert abs(np.median(bg.sky) - np.median(img)) < 3 * bg.global_rms
    assert 0.9 < bg.global_rms / np.median(np.sqrt(quadrant[1])) < 1.1
    # the median of the smooth maps from a 4-px lattice: that of all pixels
    from zsds.core.background import map_median
    for m in (bg.sky, bg.rms):
        assert map_median(m) == pytest.approx(float(np.median(m)), rel=2e-4)


def test_bright_stars_detected_with_accurate_centroids(quadrant):
    _, _, _, _, truth, _, cat = quadrant
    tr, ok, j = _match(cat, truth)
    bright = (tr.kind == "star") & (tr.flux_dn > 5000) & (tr.x > 20) & (tr.x < 1004) & (tr.y > 20) & (tr.y < 1010)
    found = np.zeros(len(tr), bool)
    found[j[ok]] = True
    assert found[bright].mean() > 0.95
    sel = ok & (cat["flux_aper"][:, 5] > 100 * cat["flux_aper_err"][:, 5]) & (cat["flags"] == 0)
    dx = cat["x"][sel] - tr.x.to_numpy()[j[sel]]
    assert abs(np.median(dx)) < 0.02 and np.median(np.abs(dx)) < 0.1


def test_aperture_fluxes_follow_the_curve_of_growth(quadrant):
    _, _, _, _, truth, _, cat = quadrant
    tr, ok, j = _match(cat, truth)
    iso = isolated_truth(tr)[j]
    sel = ok & iso & (tr.kind.to_numpy()[j] == "star") & (cat["flags"] == 0) & (cat["peak"] < 25000)
    sel &= tr.flux_dn.to_numpy()[j] > 20000
    ratio = np.median(cat["flux_aper"][sel] / tr.flux_dn.to_numpy()[j][sel, None], axis=0)
    assert np.all(np.diff(ratio[:8]) > 0)                       # growth
    assert 0.98 < ratio[APER_RADII.index(8.0)] < 1.01


def test_star_galaxy_separation(quadrant):
    _, _, _, _, truth, _, cat = quadrant
    tr, ok, j = _match(cat, truth)
    iso = isolated_truth(tr)[j]
    snr = cat["flux_aper"][:, 5] / cat["flux_aper_err"][:, 5]
    stars = ok & iso & (tr.kind.to_numpy()[j] == "star") & (snr > 50) & ((cat["flags"] & FLAGS["SATURATED"]) == 0)
    gals = ok & (tr.kind.to_numpy()[j] == "galaxy") & (snr > 50) & (tr.fwhm_px.to_numpy()[j] > 4)
    assert stars.sum() > 50
    assert np.mean(cat["class_star"][stars] > 0.5) > 0.9
    assert abs(np.median(cat["stellarity"][stars]) - 1) < 0.02
    if gals.sum():
        assert np.mean(cat["class_star"][gals] < 0.5) > 0.8


def test_flags_mark_edges_and_saturation(quadrant):
    img, _, sat, _, _, _, cat = quadrant
    near = (cat["x"] < 16) | (cat["y"] < 16) | (cat["x"] > img.shape[1] - 17) | (cat["y"] > img.shape[0] - 17)
    assert np.all((cat["flags"][near] & FLAGS["NEAR_EDGE"]) > 0)
    if sat.any():
        assert np.any(cat["flags"] & FLAGS["SATURATED"])


def test_add_sky_coordinates_uses_zero_based_pixels(quadrant):
    cat = quadrant[-1][:5]
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [1.0, 1.0]        # FITS pixel 1 == 0-based pixel 0
    w.wcs.crval = [55.0, 33.0]
    w.wcs.cd = [[-1e-3 / 3.6, 0], [0, 1e-3 / 3.6]]
    out = add_sky_coordinates(cat, w)
    ra0, dec0 = w.pixel_to_world_values(0.0, 0.0)
    assert np.isclose(ra0, 55.0) and np.isclose(dec0, 33.0)
    ra, dec = w.all_pix2world(np.asarray(cat["x"]), np.asarray(cat["y"]), 0)
    assert np.allclose(out["ra"], ra, rtol=0, atol=1e-10) and np.allclose(out["dec"], dec, rtol=0, atol=1e-10)
    ra1, _ = w.all_pix2world(np.asarray(cat["x"]), np.asarray(cat["y"]), 1)
    assert not np.allclose(out["ra"], ra1, rtol=0, atol=1e-6)
