"""Streaks in difference images (issue 6): kernel on synthetic images, stage products, DB rows."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.signal import fftconvolve

from zogyfactory import gaussian_stamp, make_pair
from zsds.core import streaks as st

FWHM = 2.8


def _snr_image(img, psf, noise):
    """PSF-matched S/N image of white noise ``noise`` (what ZOGY's S_corr is)."""
    return fftconvolve(img, psf[::-1, ::-1], mode="same") / (noise * np.sqrt(np.sum(psf**2)))


def _flux_for(snr_per_px, length, psf, noise):
    """Total flux of a trail with the given S/N per pixel of length (module definition)."""
    m = st.line_model((101, 101), 50 - length / 2, 50, 50 + length / 2, 50, psf)
    return snr_per_px * np.sqrt(length) * noise / np.sqrt(np.sum(m * m))


def _scene(trails, shape=(240, 260), noise=2.0, seed=0):
    """Noise plus trails ``(x1, y1, x2, y2, snr_per_px, sign)``; returns image, S/N, psf."""
    rng = np.random.default_rng(seed)
    psf = gaussian_stamp(FWHM, 10)
    img = rng.normal(0.0, noise, shape)
    for x1, y1, x2, y2, snr, sign in trails:
        flux = _flux_for(snr, np.hypot(x2 - x1, y2 - y1), psf, noise)
        img += sign * flux * st.line_model(shape, x1, y1, x2, y2, psf)
    return img, _snr_image(img, psf, noise), psf


def _endpoint_error(row, x1, y1, x2, y2):
    same = max(np.hypot(row["x1"] - x1, row["y1"] - y1), np.hypot(row["x2"] - x2, row["y2"] - y2))
    swap = max(np.hypot(row["x1"] - x2, row["y1"] - y2), np.hypot(row["x2"] - x1, row["y2"] - y1))
    return min(same, swap)


def test_line_model_is_a_unit_flux_segment_and_the_gaussian_model_integrates_to_flux():
    psf = gaussian_stamp(FWHM, 10)
    m = st.line_model((80, 90), 20.0, 30.0, 60.0, 45.0, psf)
    assert abs(m.sum() - 1.0) < 1e-6
    yy, xx = np.nonzero(m > 0.5 * m.max())
    assert 19 < xx.min() and xx.max() < 61 and 29 < yy.min() and yy.max() < 46
    gy, gx = np.mgrid[0:80, 0:90].astype(float)
    g = st.trailed_gaussian(gx, gy, 40.0, 37.5, 42.7, 20.56, 1000.0, 1.2)
    assert abs(g.sum() / 1000.0 - 1.0) < 1e-3
    assert abs(st.psf_sigma(gaussian_stamp(FWHM, 12)) - FWHM / 2.3548) < 0.1


def test_streaks_found_with_endpoints_length_and_angle():
    trails = [(40.0, 50.0, 90.0, 75.0, 10.0, 1),      # 56 px, S/N 10 per px
              (150.0, 200.0, 156.0, 165.0, 8.0, 1),   # steep, 35 px
              (180.0, 60.0, 192.0, 60.0, 10.0, 1)]    # 12 px, horizontal
    img, snr, psf = _scene(trails, seed=1)
    t = st.detect_streaks(snr, img, 4.0, psf)
    assert len(t) == len(trails)
    for x1, y1, x2, y2, s, _ in trails:
        err = np.array([_endpoint_error(r, x1, y1, x2, y2) for r in t])
        row = t[int(np.argmin(err))]
        assert err.min() < 1.5
        assert abs(row["length_px"] - np.hypot(x2 - x1, y2 - y1)) < 2.0
        theta = np.degrees(np.arctan2(y2 - y1, x2 - x1)) % 180.0
        assert abs((row["theta_deg"] - theta + 90) % 180 - 90) < 2.0
        assert row["isdiffpos"] == "t" and row["y1"] <= row["y2"]
        assert 0.7 * s < row["snr_per_px"] < 1.3 * s
        assert abs(row["flux"] / _flux_for(s, np.hypot(x2 - x1, y2 - y1), psf, 2.0) - 1) < 0.2


def test_negative_streak_and_nothing_in_noise_or_point_sources():
    img, snr, psf = _scene([(60.0, 180.0, 110.0, 150.0, 12.0, -1)], seed=2)
    t = st.detect_streaks(snr, img, 4.0, psf)
    assert len(t) == 1 and t[0]["isdiffpos"] == "f" and t[0]["flux"] > 0
    assert _endpoint_error(t[0], 60.0, 180.0, 110.0, 150.0) < 1.5
    # pure noise, bright point sources, a trail shorter than 10 px: no streak
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 2.0, (400, 400))
    psf = gaussian_stamp(FWHM, 10)
    for x, y in rng.uniform(30, 370, (15, 2)):
        noise += 5e3 * st.line_model(noise.shape, x, y, x, y, psf)
    noise += 3e3 * st.line_model(noise.shape, 200.0, 40.0, 206.0, 40.0, psf)
    assert len(st.detect_streaks(_snr_image(noise, psf, 2.0), noise, 4.0, psf)) == 0


def test_excluded_and_bad_pixels_are_not_streaks():
    img, snr, psf = _scene([(40.0, 50.0, 90.0, 75.0, 15.0, 1)], seed=4)
    exclude = np.zeros(img.shape, bool)
    exclude[40:90, 30:100] = True
    assert len(st.detect_streaks(snr, img, 4.0, psf, exclude=exclude)) == 0
    # a trail lying along a column of bad pixels (e.g. subtraction ringing) is rejected
    img, snr, psf = _scene([(120.0, 40.0, 120.0, 90.0, 15.0, 1)], seed=5)
    bad = np.zeros(img.shape, bool)
    bad[40:91, 118] = True
    assert len(st.detect_streaks(snr, img, 4.0, psf)) == 1
    assert len(st.detect_streaks(snr, img, 4.0, psf, bad=bad)) == 0


def test_a_trail_cut_by_masked_pixels_is_found_whole():
    img, _, psf = _scene([(40.0, 120.0, 110.0, 128.0, 10.0, 1)], seed=7)
    bad = np.zeros(img.shape, bool)
    bad[:, 72:75] = True                         # a masked column band across the trail
    img[bad] = 0.0                               # as ZOGY leaves masked pixels
    snr = _snr_image(img, psf, 2.0)
    pieces = st.detect_streaks(snr, img, 4.0, psf, params=st.StreakParams(max_gap_px=0.0),
                               bad=bad)
    whole = st.detect_streaks(snr, img, 4.0, psf, bad=bad)
    assert len(whole) == 1 and _endpoint_error(whole[0], 40.0, 120.0, 110.0, 128.0) < 1.5
    assert len(pieces) == 2 and all(r["length_px"] < 45 for r in pieces)   # unmerged: pieces


# ---------------------------------------------------------------------------------------
# subtraction stage
# ---------------------------------------------------------------------------------------
def _write(path, data, wcs, zp):
    h = wcs.to_header()
    h["MAGZP"], h["GAIN"], h["SATURATE"] = zp, 5.0, 1e9
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(path)


@pytest.fixture(scope="module")
def subtracted(tmp_path_factory):
    """A ZOGY subtraction with a positive trail (science) and a negative one (reference)."""
    from zsds.stages.subtract import subtract_images

    tmp = tmp_path_factory.mktemp("streak-sub")
    pair = make_pair((220, 230), n_stars=100, fwhm_ref=2.2, fwhm_new=2.8, n_transients=6,
                     snr=(15.0, 40.0), seed=6)
    trails = {"t": (40.0, 60.0, 40.0, 100.0), "f": (120.0, 170.0, 170.0, 170.0)}
    new, ref = pair.new.copy(), pair.ref.copy()
    new += 2.0e4 * st.line_model(new.shape, *trails["t"], pair.psf_new)
    ref += 3.0 * 2.0e4 * st.line_model(ref.shape, *trails["f"], pair.psf_ref)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]       # north up (+y), east left (-x)
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [50.0, 30.0], [115.0, 110.0], [-2.8e-4, 2.8e-4]
    _write(tmp / "x_sciimg.fits", new + 100.0, w, 25.0)
    _write(tmp / "x_refimg.fits", ref, w, 25.0 + 2.5 * np.log10(pair.flux_zp_ref))
    for name, p in (("sci.psf.fits", pair.psf_new), ("ref.psf.fits", pair.psf_ref)):
        fits.PrimaryHDU(p).writeto(tmp / name)
    r = subtract_images(tmp / "x_sciimg.fits", tmp / "x_refimg.fits", sci_psf=tmp / "sci.psf.fits",
                        ref_psf=tmp / "ref.psf.fits", out_dir=tmp / "out")
    return r, trails


def test_subtraction_finds_both_trails_with_sky_measures(subtracted):
    r, trails = subtracted
    t = r.streaks
    assert sorted(t["isdiffpos"]) == ["f", "t"] and r.qa["n_streaks"] == 2
    for row in t:
        assert _endpoint_error(row, *trails[row["isdiffpos"]]) < 2.0
    pos, neg = t[t["isdiffpos"] == "t"][0], t[t["isdiffpos"] == "f"][0]
    assert abs((pos["pa_deg"] + 90) % 180 - 90) < 2.0       # along +y: north-south
    assert abs(neg["pa_deg"] - 90.0) < 2.0                   # along x: east-west
    assert abs(pos["length_arcsec"] - 40 * 2.8e-4 * 3600) < 1.5
    assert abs(neg["mag"] - pos["mag"]) < 0.15               # same science-scale flux
    # the point candidates are still there, the trails are not among the streaks' false hits
    assert (r.candidates["index"] >= 0).sum() >= 5


def test_streak_product_round_trip(subtracted):
    from zsds.stages.streaks import cutout_size, read_streak_cutouts, read_streaks

    r, _ = subtracted
    path = r.paths["diffimstreaks.fits"]
    back = read_streaks(path)
    assert np.allclose(back["x1"], r.streaks["x1"])
    assert list(back["isdiffpos"]) == list(r.streaks["isdiffpos"])
    with fits.open(path) as h:
        assert np.allclose(h["STREAKS"].data["x1"], r.streaks["x1"] + 1.0)   # FITS 1-based
        assert h[0].header["NSTREAK"] == 2
    cut = read_streak_cutouts(path)
    assert set(cut) == {0, 1}
    for k, planes in cut.items():
        n = cutout_size(float(r.streaks["length_px"][k]))
        assert len(planes) == 3 and planes[2].shape == (n, n) and n % 2 == 1
        assert np.nanmax(np.abs(planes[2])) > 0


def test_streak_rows_in_the_database(tmp_path, subtracted):
    import sqlalchemy as sa

    from zsds.db.ops import init_db, make_engine
    from zsds.pipeline.night import QuadrantJob
    from zsds.stages.streaks import STREAK_INDEX0, register_streaks, streak_records

    r, _ = subtracted
    engine = init_db(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    job = QuadrantJob(expid=36120010, ccd_id=13, qid=3, raw_path="x", night="20261122",
                      filefracday="20261122309136", field_id=655, filter_code="zr",
                      programid=1, obsjd=2461366.8)
    pid = 361230913650
    recs = streak_records(r.streaks, job, pid, 2)
    register_streaks(engine, job, recs)
    register_streaks(engine, job, recs)                       # re-run replaces the rows
    rows = sa.text("select streakid, x1, ra1, pa_deg, rcid, field, isdiffpos from streaks "
                   "order by streak_index")
    with engine.connect() as conn:
        got = conn.execute(rows).fetchall()
    assert len(got) == 2 and got[0].streakid == pid * 10**6 + STREAK_INDEX0
    assert got[0].rcid == 50 and got[0].field == 655
    assert abs(got[0].x1 - (float(r.streaks["x1"][0]) + 1.0)) < 1e-9
