"""Empirical PSFs of two registered images from the same stars (for ZOGY on the science grid).

A PSF model of the reference measured on its own grid misses what resampling onto the
science grid does (bilinear smoothing that depends on the sub-pixel phase) and any error of
either model shows up as a dipole or ring at every star of the difference image. Here both
PSFs are measured on the science grid from the same bright, isolated, unsaturated stars:
stamps of both images are cut at the star's science position, shifted to a common sub-pixel
centre with a Fourier phase ramp, normalised to unit flux and median-combined. Being measured
at the same positions, the pair also carries no relative registration error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["select_stars", "select_catalogue_stars", "stacked_psfs"]


def select_stars(image, rms, bad, *, snr_min: float = 50.0, max_stars: int = 100,
                 isolation: float = 12.0, edge: int = 20, peak_max: float | None = None):
    """Bright isolated stars of a background-subtracted image: (x, y) 0-based arrays.

    Extracts the sources above 5 sigma (sep; S/N = isophotal flux over the background noise
    of its pixels) and applies :func:`select_catalogue_stars` to them.
    """
    import sep

    data = np.ascontiguousarray(image, np.float32)
    bad = np.zeros(data.shape, bool) if bad is None else np.asarray(bad, bool)
    obj = sep.extract(data, 5.0, err=np.ascontiguousarray(rms, np.float32), mask=bad, minarea=5)
    if len(obj) == 0:
        return np.empty(0), np.empty(0)
    snr = obj["flux"] / np.sqrt(obj["npix"] * np.median(rms) ** 2 + 1e-9)
    return select_catalogue_stars(obj["x"], obj["y"], obj["flux"], snr, obj["peak"], obj["flag"],
                                  bad, snr_min=snr_min, max_stars=max_stars, isolation=isolation,
                                  edge=edge, peak_max=peak_max)


def select_catalogue_stars(x, y, flux, snr, peak, flags, bad, *, snr_min: float = 50.0,
                           max_stars: int = 100, isolation: float = 12.0, edge: int = 20,
                           peak_max: float | None = None):
    """Bright isolated stars from a source catalogue of the image: (x, y) 0-based arrays.

    The calibration's ``sexcat`` serves, so the image need not be extracted again (else
    :func:`select_stars` extracts it): S/N of at least
    ``snr_min``, no other catalogued source within ``isolation`` pixels, ``edge`` pixels
    inside the image, unflagged, peak (background-subtracted DN) below ``peak_max`` and no
    ``bad`` pixel within 6 pixels; the ``max_stars`` brightest (highest ``flux``) first.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    flux, snr, peak = (np.asarray(v, float) for v in (flux, snr, peak))
    ny, nx = bad.shape
    ok = (np.nan_to_num(snr) >= snr_min) & (_nearest_neighbour(x, y) > isolation) \
        & (x > edge) & (y > edge) & (x < nx - 1 - edge) & (y < ny - 1 - edge) \
        & (np.asarray(flags) == 0)
    if peak_max is not None:
        ok &= peak < peak_max
    idx = np.flatnonzero(ok)
    idx = idx[_clean(bad, x[idx], y[idx])]
    idx = idx[np.argsort(-flux[idx], kind="stable")][:max_stars]
    return x[idx], y[idx]


def _nearest_neighbour(x, y):
    """Distance of each point to its nearest other point (inf if alone), pixels."""
    from scipy.spatial import cKDTree

    if len(x) < 2:
        return np.full(len(x), np.inf)
    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return d[:, 1]


def _clean(bad, x, y, half=6):
    out = np.ones(len(x), bool)
    for i, (a, b) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        out[i] = not bad[max(0, b - half):b + half + 1, max(0, a - half):a + half + 1].any()
    return out


def _shift(stamps, dx, dy):
    k = stamps.shape[1]
    f = np.fft.fftfreq(k)
    ramp = np.exp(2j * np.pi * (f[None, None, :] * dx[:, None, None] + f[None, :, None] * dy[:, None, None]))
    return np.real(np.fft.ifft2(np.fft.fft2(stamps) * ramp))


def stacked_psfs(new, ref, x, y, half: int, taper=None):
    """Median-stacked unit-sum PSF stamps ``(2 half + 1)^2`` of both images at stars (x, y).

    ``taper = (r0, r1)``: multiply both stacks by a radial window (1 inside ``r0`` pixels,
    cosine to 0 at ``r1``) before normalising. The outer wings of a stack are mostly noise;
    ZOGY's reference kernel divides by the reference PSF's transform, which turns that
    noise into rings around bright stars of the difference image (false candidates a few
    FWHM from them) while the flux beyond a few FWHM is negligible (< 0.1% for a Moffat
    beta = 3 at 4 FWHM).

    Returns
    -------
    psf_new, psf_ref : 2-D arrays, or (None, None) with fewer than 5 stars.
    n : int
        Stars used.
    """
    if len(x) < 5:
        return None, None, len(x)
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    pad = half + 4
    k = np.arange(-pad, pad + 1)
    gy, gx = yi[:, None, None] + k[None, :, None], xi[:, None, None] + k[None, None, :]
    out = []
    for img in (new, ref):
        st = np.asarray(img, np.float64)[gy, gx]
        st = _shift(st, x - xi, y - yi)[:, pad - half:pad + half + 1, pad - half:pad + half + 1]
        st /= st.sum((1, 2), keepdims=True)
        p = np.median(st, axis=0) * _taper(half, taper)
        out.append(p / p.sum())
    return out[0], out[1], len(x)


def _taper(half: int, radii) -> np.ndarray:
    """Radial window: 1 inside ``radii[0]``, cosine to 0 at ``radii[1]`` (pixels)."""
    if radii is None:
        return np.ones((2 * half + 1, 2 * half + 1))
    r0, r1 = radii
    k = np.arange(-half, half + 1)
    r = np.hypot(k[:, None], k[None, :])
    t = np.clip((r - r0) / max(r1 - r0, 1e-9), 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))
