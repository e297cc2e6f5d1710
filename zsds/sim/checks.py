"""Fidelity measurements of simulated quadrants against their truth.

Used by the tests (small quadrants) and by ``benchmarks/sim_fidelity.py`` (full size). They
measure images the way an astronomer would (sep background and detection, PSF fits), so
they also serve to compare a simulated quadrant with a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sep
from scipy.optimize import least_squares

__all__ = ["load_truth_quadrant", "noise_equivalent_area", "truth_detrend", "background_noise", "fit_moffat_fwhm", "isolated_star_fwhm",
           "detections_above_limit", "source_counts_by_mag", "NoiseMeasurement"]


def truth_detrend(data, overscan_rows, bias_pattern, pixel_response, nl_a=0.0, nl_b=0.0):
    """Remove the true bias and small-scale response from a raw quadrant (DN, float32).

    The large-scale illumination is left in (it is part of the sky a flat would remove).
    """
    from ..camera import linearize
    img = data.astype(np.float32) - np.asarray(overscan_rows, np.float32)[:, None] - bias_pattern
    img = linearize(img, nl_a, nl_b).astype(np.float32)
    return img / pixel_response


@dataclass
class NoiseMeasurement:
    """Background level and noise of an image, DN."""

    sky: float
    rms: float
    expected_rms: float

    @property
    def ratio(self) -> float:
        return self.rms / self.expected_rms


def _source_mask(img, bkg, thresh=1.5):
    objs, seg = sep.extract(img - bkg.back(), thresh, err=bkg.globalrms, minarea=5,
                            segmentation_map=True)
    from scipy import ndimage
    return ndimage.binary_dilation(seg > 0, iterations=4)


def background_noise(img, gain: float, read_noise_e: float) -> NoiseMeasurement:
    """Robust RMS of source-free pixels against ``sqrt(sky*gain + rn^2)/gain``.

    Parameters
    ----------
    img : 2-D array
        Bias-subtracted image, DN.
    gain : float
        e-/ADU.
    read_noise_e : float
        e-.
    """
    img = np.ascontiguousarray(img, dtype=np.float32)
    bkg = sep.Background(img, bw=128, bh=128)
    mask = _source_mask(img, bkg) | ~np.isfinite(img)
    resid = (img - bkg.back())[~mask]
    rms = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    sky = float(np.median(img[~mask]))
    expected = np.sqrt(sky * gain + read_noise_e**2) / gain
    return NoiseMeasurement(sky, float(rms), float(expected))


def _moffat(params, yy, xx):
    amp, x0, y0, alpha, beta, bg = params
    r2 = (xx - x0) ** 2 + (yy - y0) ** 2
    return amp * (1 + r2 / alpha**2) ** (-beta) + bg


def fit_moffat_fwhm(stamp: np.ndarray) -> float:
    """FWHM (pixels) of a circular Moffat fitted to a background-subtracted star stamp."""
    n = stamp.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    c = (n - 1) / 2
    p0 = [float(stamp.max()), c, c, 2.0, 3.0, 0.0]
    res = least_squares(lambda p: (_moffat(p, yy, xx) - stamp).ravel(), p0,
                        bounds=([0, c - 3, c - 3, 0.3, 1.1, -np.inf],
                                [np.inf, c + 3, c + 3, 20, 20, np.inf]))
    alpha, beta = res.x[3], res.x[4]
    return float(2 * alpha * np.sqrt(2 ** (1 / beta) - 1))


def isolated_star_fwhm(img, truth: pd.DataFrame, sky_rms: float, *, max_stars: int = 60,
                       half: int = 10, saturation_dn: float = 40000.0) -> pd.DataFrame:
    """Fit isolated, bright, unsaturated stars; returns measured and true FWHM per star.

    A star is isolated when no other source within 4 FWHM + 6 px carries more than 1% of its
    flux; it is bright when its peak exceeds 50 sky RMS.
    """
    ny, nx = img.shape
    stars = truth[(truth["kind"] == "star")].copy()
    peak = stars["flux_dn"] / (1.13 * stars["fwhm_px"] ** 2)
    stars = stars[(peak > 50 * sky_rms) & (peak < saturation_dn)
                  & (stars["x"] > half + 2) & (stars["x"] < nx - half - 3)
                  & (stars["y"] > half + 2) & (stars["y"] < ny - half - 3)]
    allx, ally, allf = truth["x"].to_numpy(), truth["y"].to_numpy(), truth["flux_dn"].to_numpy()
    rows = []
    for s in stars.sort_values("flux_dn", ascending=False).itertuples():
        d = np.hypot(allx - s.x, ally - s.y)
        near = (d < 4 * s.fwhm_px + 6) & (d > 0.01)
        if (allf[near] > 0.01 * s.flux_dn).any():
            continue
        xi, yi = int(round(s.x)), int(round(s.y))
        stamp = img[yi - half: yi + half + 1, xi - half: xi + half + 1].astype(float)
        stamp = stamp - np.median(np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]]))
        rows.append({"x": s.x, "y": s.y, "fwhm_true": s.fwhm_px, "fwhm_fit": fit_moffat_fwhm(stamp)})
        if len(rows) >= max_stars:
            break
    return pd.DataFrame(rows)


def noise_equivalent_area(fwhm_px: float, beta: float) -> float:
    """``1 / sum(P^2)`` (pixels) of the simulator's effective PSF (Moffat, pixel-sampled)."""
    from .render import psf_stamp
    p = psf_stamp(fwhm_px, beta, 0.0, 0.0, 30)
    return float(1.0 / np.sum(p**2))


def detections_above_limit(img, truth: pd.DataFrame, sky_rms: float, fwhm_px: float,
                           nsigma: float = 10.0, edge: int = 20,
                           nea_px: float | None = None) -> tuple[int, int, float]:
    """Detected sources vs catalogue sources brighter than the ``nsigma`` point-source limit.

    The limit is the flux whose optimal (PSF-weighted) S/N is ``nsigma`` on the sky noise:
    ``F = nsigma * sky_rms * sqrt(NEA)``, with the noise-equivalent area ``nea_px`` of the PSF
    (default that of a Gaussian of the FWHM, ``4 pi sigma^2``). Detections are sep sources whose
    flux in an aperture of radius 3 FWHM exceeds the limit. Detection uses a Gaussian
    filter matched to the PSF (an S/N image, thresholded at 3 sigma over 3 pixels).

    Returns
    -------
    n_detected, n_truth, limit_flux_dn
    """
    img = np.ascontiguousarray(img, dtype=np.float32)
    ny, nx = img.shape
    sigma = fwhm_px / 2.3548
    nea = nea_px if nea_px else 4 * np.pi * sigma**2
    limit = nsigma * sky_rms * np.sqrt(nea)
    bkg = sep.Background(img, bw=64, bh=64)
    sub = img - bkg.back()
    half = int(np.ceil(2 * fwhm_px))
    g = np.arange(-half, half + 1)
    kernel = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * sigma**2))
    from scipy import ndimage
    snr = ndimage.convolve(sub, (kernel / np.sqrt((kernel**2).sum())).astype(np.float32),
                           mode="nearest") / np.float32(bkg.globalrms)
    objs = sep.extract(np.ascontiguousarray(snr), 3.0, minarea=3, filter_kernel=None)
    flux, _, _ = sep.sum_circle(sub, objs["x"], objs["y"], 3 * fwhm_px, err=bkg.globalrms)
    inside = (objs["x"] > edge) & (objs["x"] < nx - edge) & (objs["y"] > edge) & (objs["y"] < ny - edge)
    n_det = int(np.sum((flux > limit) & inside))
    t_in = (truth["x"] > edge) & (truth["x"] < nx - edge) & (truth["y"] > edge) & (truth["y"] < ny - edge)
    n_true = int(np.sum((truth["flux_dn"] > limit) & t_in & (truth["kind"] != "asteroid")))
    return n_det, n_true, float(limit)


def source_counts_by_mag(img, zp: float, mags=(15, 16, 17, 18, 19), radius: float = 8.0,
                         thresh: float = 5.0, minarea: int = 5) -> tuple[int, list[int], float, float]:
    """Measure a quadrant as the real ZTF reference was measured.

    sep background and extraction (``thresh`` sigma, ``minarea`` pixels), aperture fluxes of
    ``radius`` pixels, magnitudes ``zp - 2.5 log10(flux)``.

    Returns
    -------
    n_sources, cumulative counts brighter than each of ``mags``, sky (DN), robust RMS (DN)
    """
    img = np.ascontiguousarray(img, dtype=np.float32)
    bkg = sep.Background(img)
    sub = img - bkg.back()
    objs = sep.extract(sub, thresh, err=bkg.globalrms, minarea=minarea)
    flux, _, _ = sep.sum_circle(sub, objs["x"], objs["y"], radius, err=bkg.globalrms)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = zp - 2.5 * np.log10(flux)
    counts = [int(np.sum(mag < m)) for m in mags]
    return len(objs), counts, float(np.median(bkg.back())), float(bkg.globalrms)


def load_truth_quadrant(outdir, ccd_id: int, qid: int, index: int = 0):
    """An object quadrant of a simulation, detrended with the truth, and its source truth.

    Reads ``outdir/truth`` as written by :func:`zsds.sim.survey.simulate` (I/O helper of the
    fidelity tests and benchmarks, not a pipeline kernel).

    Parameters
    ----------
    outdir : path-like
        Simulation output folder.
    ccd_id, qid : int
        The quadrant (it must have been rendered, not blank).
    index : int
        Which object exposure of that quadrant (in time order).

    Returns
    -------
    row : pandas Series
        The quadrant's row of ``truth/exposures.parquet``.
    quad : zsds.io.raw.RawQuadrant
        The raw quadrant.
    image : float32 array
        :func:`truth_detrend` of it (DN; large-scale illumination left in).
    truth : pandas.DataFrame
        Every source rendered on it.
    """
    from pathlib import Path

    from astropy.io import fits

    from ..camera import load_camera
    from ..io.raw import read_raw

    out = Path(outdir)
    exp = pd.read_parquet(out / "truth" / "exposures.parquet")
    sel = exp[(exp.imgtype == "object") & (exp.ccd_id == ccd_id) & (exp.qid == qid) & ~exp.blank]
    row = sel.sort_values("obsjd").iloc[index]
    quad = read_raw(out / row.raw_path).quadrants[qid - 1]
    bias = pd.read_parquet(out / "truth" / "floating_bias.parquet")
    rows = bias[(bias.expid == row.expid) & (bias.ccd_id == ccd_id) & (bias.qid == qid)].iloc[0]["bias_rows"]
    with fits.open(out / "truth" / "detector" / f"ccd{ccd_id:02d}_q{qid}.fits") as det:
        pattern, resp = det["BIAS"].data.copy(), det["PIXRESP"].data.copy()
    amp = load_camera().amplifier(ccd_id, qid)
    image = truth_detrend(quad.data, rows, pattern, resp, amp.nl_a, amp.nl_b)
    truth = pd.read_parquet(out / "truth" / "sources" / row.night
                            / f"{row.expid}_c{ccd_id:02d}_q{qid}.parquet")
    return row, quad, image, truth
