"""Subtraction stage kernels: forced photometry, candidate detection/features, filters, products."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from zogyfactory import gaussian_stamp, make_pair
from zsds.core import candidates as cands
from zsds.core import zogy
from zsds.core.forcedphot import FORCED_FLAGS, forced_photometry, shifted_psf


def test_shifted_psf_centroid():
    p = gaussian_stamp(2.5, 10)
    s = shifted_psf(p, [0.3, -0.4], [0.0, 0.25])
    k = np.arange(-10, 11)
    assert np.allclose((s * k[None, None, :]).sum((1, 2)), [0.3, -0.4], atol=0.01)
    assert np.allclose((s * k[None, :, None]).sum((1, 2)), [0.0, 0.25], atol=0.01)


def test_forced_photometry_unbiased():
    rng = np.random.default_rng(2)
    p = gaussian_stamp(2.5, 10)
    img = np.zeros((200, 200))
    gx, gy = np.meshgrid(np.arange(25, 180, 30), np.arange(25, 180, 30))
    xs, ys = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size), gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    for x, y in zip(xs, ys):
        xi, yi = int(round(x)), int(round(y))
        img[yi - 10:yi + 11, xi - 10:xi + 11] += 500 * shifted_psf(p, [x - xi], [y - yi])[0]
    img += rng.normal(0, 1.0, img.shape)
    fp = forced_photometry(img, p, 1.0, np.c_[xs, ys])
    assert abs(np.median(fp.flux) / 500 - 1) < 0.01
    assert abs(np.std((fp.flux - 500) / fp.err) - 1) < 0.3
    off = forced_photometry(img, p, 1.0, [[-5.0, 3.0]])
    assert off.flags[0] & FORCED_FLAGS["OFF_IMAGE"]


@pytest.fixture(scope="module")
def subtraction():
    pair = make_pair((256, 256), n_stars=80, fwhm_ref=2.2, fwhm_new=3.0, n_transients=12,
                     snr=(12.0, 40.0), seed=4)
    z = zogy.zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref,
                           sigma_new=pair.sigma_new, sigma_ref=pair.sigma_ref,
                           flux_zp_ref=pair.flux_zp_ref, var_new=pair.var_new, var_ref=pair.var_ref)
    bad = np.zeros(pair.new.shape, bool)
    im = cands.DifferenceImages(D=z.D, S=z.S, S_corr=z.S_corr, S_var=z.S_var, D_flux=z.D_flux,
                                var_flux=float((1 / z.F_D) ** 2), P_D=z.P_D, s_to_flux=z.s_to_flux,
                                bad=bad, zp=25.0)
    return pair, z, im


def test_detect_and_measure(subtraction):
    pair, z, im = subtraction
    excl = np.zeros(z.D.shape, bool)
    excl[:12], excl[-12:], excl[:, :12], excl[:, -12:] = True, True, True, True
    y, x, sign = cands.detect_peaks(z.S_corr, exclude=excl)
    assert np.all(np.diff(y * 10000 + x) > 0)  # sorted by position
    lim = cands.diffmaglim(z.S_var, z.s_to_flux, 25.0)
    t = cands.measure_candidates(im, y, x, sign, diffmaglim_value=lim)
    idx, dist = cands.match_reference(pair.tr_x, pair.tr_y, t["xpos"], t["ypos"], max_dist=1.5)
    assert np.all(idx >= 0)  # every transient found
    m = t[idx]
    assert np.all((m["isdiffpos"] == "t") == (pair.tr_flux_new > 0))
    flux = np.where(m["isdiffpos"] == "t", 1, -1) * m["flux"]
    assert abs(np.median(flux / pair.tr_flux_new) - 1) < 0.03
    assert np.all(m["nbad"] == 0) and np.all(m["elong"] < 1.6)
    assert np.median(np.abs(m["magdiff"])) < 0.15
    bits = cands.filter_candidates(m, cands._psf_fwhm(z.P_D))
    assert np.mean(bits == 0) >= 0.9


def test_candidate_beside_a_bright_star_is_measured_at_its_score_peak(subtraction):
    """A star's astrometric noise in S_var pushes the S_corr peak away; position and flux from S."""
    pair, z, im = subtraction
    i = int(np.argmax(pair.tr_flux_new))
    tx, ty = pair.tr_x[i], pair.tr_y[i]
    yy, xx = np.mgrid[:z.S.shape[0], :z.S.shape[1]]
    star_var = 400.0 * np.exp(-((xx - tx + 2.0) ** 2 + (yy - ty) ** 2) / (2 * 1.5 ** 2))
    S_var = z.S_var * (1.0 + star_var)  # a bright star 2 px to the left of the transient
    S_corr = z.S / np.sqrt(S_var)
    box = np.s_[int(ty) - 4:int(ty) + 5, int(tx) - 4:int(tx) + 5]
    py, px = np.unravel_index(np.argmax(S_corr[box]), S_corr[box].shape)
    py, px = py + int(ty) - 4, px + int(tx) - 4
    assert np.hypot(px - tx, py - ty) > 1.0  # the S_corr peak is pulled away from the source
    im2 = cands.DifferenceImages(D=z.D, S=z.S, S_corr=S_corr, S_var=S_var, D_flux=z.D_flux,
                                 var_flux=im.var_flux, P_D=z.P_D, s_to_flux=z.s_to_flux,
                                 bad=im.bad, zp=25.0)
    t = cands.measure_candidates(im2, np.array([py]), np.array([px]), np.array([1]),
                                 diffmaglim_value=20.0)
    assert np.hypot(t["xpos"][0] - tx, t["ypos"][0] - ty) < 0.5
    at_source = cands.measure_candidates(im, np.array([int(round(ty))]), np.array([int(round(tx))]),
                                         np.array([1]), diffmaglim_value=20.0)
    assert abs(t["flux"][0] - at_source["flux"][0]) < 0.1 * at_source["flux_err"][0]
    assert t["scorr"][0] == pytest.approx(S_corr[py, px])


def test_candidates_climbing_to_one_peak_are_kept_once():
    from astropy.table import Table
    t = Table({"isdiffpos": ["t", "t", "f", "t"], "xpos": [1.0, 1.0, 1.0, 2.0],
               "ypos": [3.0, 3.0, 3.0, 3.0], "scorr": [5.0, 7.0, 6.0, 5.0]})
    assert cands.distinct_candidates(t).tolist() == [False, True, True, True]
    assert cands.distinct_candidates(t[:0]).tolist() == []


def test_filter_rejects_cosmic_ray(subtraction):
    pair, z, im = subtraction
    new = pair.new.copy()
    new[100, 100] += 800.0
    z2 = zogy.zogy_subtract(new, pair.ref, pair.psf_new, pair.psf_ref, sigma_new=pair.sigma_new,
                            sigma_ref=pair.sigma_ref, flux_zp_ref=pair.flux_zp_ref)
    im2 = cands.DifferenceImages(D=z2.D, S=z2.S, S_corr=z2.S_corr, S_var=z2.S_var, D_flux=z2.D_flux,
                                 var_flux=float((1 / z2.F_D) ** 2), P_D=z2.P_D,
                                 s_to_flux=z2.s_to_flux, bad=np.zeros(new.shape, bool), zp=25.0)
    t = cands.measure_candidates(im2, np.array([100]), np.array([100]), np.array([1]),
                                 diffmaglim_value=20.0)
    assert cands.filter_candidates(t, cands._psf_fwhm(z2.P_D))[0] != 0


def _write(path, data, wcs, zp, extra=None):
    h = wcs.to_header()
    h["MAGZP"], h["GAIN"], h["SATURATE"] = zp, 5.0, 1e9
    for k, v in (extra or {}).items():
        h[k] = v
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(path)


def test_subtract_images_products(tmp_path):
    from zsds.stages.subtract import read_cutouts, subtract_images

    pair = make_pair((200, 210), n_stars=120, fwhm_ref=2.2, fwhm_new=2.8, n_transients=6,
                     snr=(15.0, 40.0), seed=5)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [50.0, 30.0], [100.0, 105.0], [-2.8e-4, 2.8e-4]
    zp_ref = 25.0 + 2.5 * np.log10(pair.flux_zp_ref)
    _write(tmp_path / "x_sciimg.fits", pair.new + 100.0, w, 25.0)
    _write(tmp_path / "x_refimg.fits", pair.ref, w, zp_ref)
    for name, p in (("sci.psf.fits", pair.psf_new), ("ref.psf.fits", pair.psf_ref)):
        fits.PrimaryHDU(p).writeto(tmp_path / name)
    r = subtract_images(tmp_path / "x_sciimg.fits", tmp_path / "x_refimg.fits",
                        sci_psf=tmp_path / "sci.psf.fits", ref_psf=tmp_path / "ref.psf.fits",
                        out_dir=tmp_path / "out")
    assert abs(r.qa["scorr_mean"]) < 0.1 and abs(r.qa["scorr_std"] - 1) < 0.1
    kept = r.candidates[r.candidates["index"] >= 0]
    idx, _ = cands.match_reference(pair.tr_x, pair.tr_y, kept["xpos"], kept["ypos"], max_dist=1.5)
    assert np.mean(idx >= 0) >= 5 / 6
    with fits.open(r.paths["scimrefdiffimg.fits.fz"]) as h:
        assert h[1].header["MAGZP"] == 25.0 and isinstance(h[1], fits.CompImageHDU)
    cut = read_cutouts(r.paths["diffimcutouts.fits"])
    assert set(cut) == set(int(i) for i in kept["index"]) and cut[0][2].shape == (63, 63)
    again = subtract_images(tmp_path / "x_sciimg.fits", tmp_path / "x_refimg.fits",
                            sci_psf=tmp_path / "sci.psf.fits", ref_psf=tmp_path / "ref.psf.fits")
    assert np.array_equal(again.candidates["xpos"], r.candidates["xpos"])


def test_in_memory_science_gives_the_same_subtraction(tmp_path):
    """run-night hands the just-calibrated quadrant to the subtraction: same result as
    reading its products back (header, mask, PSF model and background included)."""
    from types import SimpleNamespace

    from zsds.core.background import background_maps
    from zsds.core.extract import extract_sources
    from zsds.core.psf import fit_psf_model
    from zsds.flags import MASK
    from zsds.core.extract import COLUMNS
    from zsds.io.products import write_hdulist, write_image, write_table
    from zsds.stages.subtract import subtract_images

    pair = make_pair((220, 230), n_stars=150, fwhm_ref=2.2, fwhm_new=2.8, n_transients=6,
                     snr=(15.0, 40.0), seed=8)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [50.123456789012345, 30.98765432109876], [110.3, 115.7]
    w.wcs.cd = [[-2.8123456789012e-4, 1.234567890123e-7], [1.1e-7, 2.8098765432101e-4]]
    image = (pair.new + 100.0).astype(np.float32)
    mask = np.zeros(image.shape, np.uint16)
    mask[50:53, 60] = MASK["DEAD"]
    mask[120, 30:34] = MASK["SPIKE"]
    bad = (mask & (MASK["DEAD"] | MASK["SPIKE"])) > 0
    header = w.to_header()
    header["MAGZP"], header["GAIN"], header["SATURATE"] = 25.0 + 1e-9 / 3, 5.0, 1e9
    bkg = background_maps(image, mask=bad)
    cat = extract_sources(image, bkg.sky, bkg.rms, mask=bad, thresh=5.0, gain=5.0)
    inner = np.flatnonzero((cat["x"] > 15) & (cat["x"] < 215) & (cat["y"] > 15) & (cat["y"] < 205))
    brightest = inner[np.argsort(-np.asarray(cat["flux_auto"])[inner])[:15]]
    model = fit_psf_model(image - bkg.sky, bkg.rms, cat, bad, gain=5.0, degree=0, stars=brightest)
    write_image(tmp_path / "x_sciimg.fits", image, header)
    write_image(tmp_path / "x_mskimg.fits", mask)
    write_hdulist(tmp_path / "x_sciimgpsf.fits", model.to_fits())
    write_table(tmp_path / "x_sexcat.fits", cat, header=header, columns=COLUMNS)
    zp_ref = 25.0 + 2.5 * np.log10(pair.flux_zp_ref)
    _write(tmp_path / "x_refimg.fits", pair.ref, w, zp_ref)
    fits.PrimaryHDU(pair.psf_ref).writeto(tmp_path / "ref.psf.fits")
    calibrated = SimpleNamespace(image=image, mask=mask, header=header, background=bkg.sky,
                                 background_rms=bkg.rms, psf_model=model, sexcat=cat)
    args = (tmp_path / "x_sciimg.fits", tmp_path / "x_refimg.fits")
    from_files = subtract_images(*args, ref_psf=tmp_path / "ref.psf.fits")
    in_memory = subtract_images(*args, ref_psf=tmp_path / "ref.psf.fits", calibrated=calibrated)
    assert len(from_files.candidates) > 0
    assert np.array_equal(in_memory.zogy.S_corr, from_files.zogy.S_corr)
    for name in from_files.candidates.colnames:
        a, b = np.asarray(in_memory.candidates[name]), np.asarray(from_files.candidates[name])
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


def test_bright_star_halo_vetoes_wings_but_not_the_star_itself():
    from astropy.table import Table

    from zsds.core.candidates import FILTER_BITS, FilterRules, bright_star_halo, filter_candidates

    rules = FilterRules()
    ref_x, ref_y = np.array([100.0, 300.0, 500.0]), np.array([100.0, 100.0, 100.0])
    ref_mag = np.array([12.5, 12.5, 16.0])  # saturated, unsaturated, faint
    masked = np.array([True, False, False])
    x = np.array([108.0, 100.3, 308.0, 300.3, 508.0, 130.0])
    y = np.full(6, 100.0)
    halo = bright_star_halo(x, y, ref_x, ref_y, ref_mag, masked, rules)
    radius_125 = rules.bright_star_radius * 10 ** ((rules.bright_star_radius_mag - 12.5) / 7.5)
    assert 11.0 < radius_125 < 13.0
    assert halo[0] > 1 and halo[2] > 1  # 8 px from a 12.5 mag star: in its halo
    assert halo[1] > 1  # on a saturated core
    assert halo[3] == 0  # on an unsaturated bright star: the star itself may vary
    assert halo[4] == 0 and halo[5] == 0  # near a faint star / far from any
    t = Table({"mindtoedge": np.full(6, 50.0), "nbad": np.zeros(6), "elong": np.ones(6),
               "fwhm": np.full(6, 3.0), "nneg": np.zeros(6), "sumrat": np.ones(6),
               "magpsf": np.full(6, 19.0), "chipsf": np.ones(6), "brightstar": halo})
    bits = filter_candidates(t, 3.0, rules)
    assert list(bits & FILTER_BITS["BRIGHT_STAR"] > 0) == [True, True, True, False, False, False]


def test_background_match_mask_grows_with_the_seeing():
    from zsds.stages.subtract import _mask_growth
    assert _mask_growth(fits.Header({"FWHMPIX": 2.1})) == 2
    assert _mask_growth(fits.Header({"FWHMPIX": 4.45})) == 4
    assert _mask_growth(fits.Header({"SEEING": 3.1})) == 3  # arcsec, 1.012"/px
    assert _mask_growth(fits.Header()) == 2


def test_compressed_products_are_quantised_to_a_sixteenth_of_the_given_noise(tmp_path):
    """write_image(noise=...) quantises to noise / 16 (an absolute step): the same precision
    as astropy's per-tile noise estimate gives a noise image, without its cost."""
    from zsds.io.products import write_image

    img = np.random.default_rng(5).normal(0.0, 3.0, (200, 300)).astype(np.float32)
    step = 3.0 / 16
    for noise in (3.0, None):
        path = write_image(tmp_path / f"d{noise}.fits.fz", img, fits.Header(), compress=True,
                           noise=noise)
        with fits.open(path, disable_image_compression=True) as h:
            level = dict(zip([h[1].header[f"ZNAME{i}"] for i in (1, 2, 3)],
                             [h[1].header[f"ZVAL{i}"] for i in (1, 2, 3)]))["NOISEBIT"]
        assert level == (-step if noise else 16.0)
        err = fits.getdata(path) - img
        assert np.std(err) == pytest.approx(step / np.sqrt(12), rel=0.1), noise
        assert np.max(np.abs(err)) <= 0.5 * step * 1.2


def test_psf_stars_from_the_catalogue_are_bright_isolated_clean_and_unsaturated():
    from zsds.core.diffpsf import select_catalogue_stars

    #            kept   faint  neighbour pair  flagged  saturated  near bad  edge   kept
    x = np.array([100.0, 150.0, 200.0, 205.0, 250.0, 300.0, 350.0, 10.0, 120.0])
    y = np.array([100.0, 100.0, 100.0, 104.0, 100.0, 100.0, 100.0, 100.0, 200.0])
    flux = np.array([5e4, 1e3, 6e4, 6e4, 7e4, 9e4, 8e4, 9e4, 6e4])
    snr = np.array([200.0, 20.0, 210, 210, 220, 250, 240, 250, 205])
    peak = np.array([5e3, 1e2, 5e3, 5e3, 5e3, 6e4, 5e3, 5e3, 5e3])
    flags = np.array([0, 0, 0, 0, 4, 0, 0, 0, 0])
    bad = np.zeros((300, 400), bool)
    bad[103, 352] = True
    sx, sy = select_catalogue_stars(x, y, flux, snr, peak, flags, bad, peak_max=5e4)
    assert list(zip(sx, sy)) == [(120.0, 200.0), (100.0, 100.0)]  # brightest first
    assert len(select_catalogue_stars(x, y, flux, snr, peak, flags, bad, max_stars=1)[0]) == 1
