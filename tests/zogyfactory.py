"""Synthetic science/reference pairs for the ZOGY and alignment tests and benchmark.

Gaussian PSFs sampled at pixel centres (stamps normalised to unit sum), stars common to both
images at sub-pixel positions, transients at integer pixels (new-only: positive, ref-only:
negative), Poisson + read noise, backgrounds subtracted with their true level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def gaussian_stamp(fwhm: float, half: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Unit-sum Gaussian of ``fwhm`` on a ``(2 half + 1)^2`` grid, centre offset (dx, dy)."""
    s = fwhm / 2.3548
    g = np.arange(-half, half + 1)
    gx, gy = np.exp(-0.5 * ((g - dx) / s) ** 2), np.exp(-0.5 * ((g - dy) / s) ** 2)
    p = gy[:, None] * gx[None, :]
    return p / p.sum()


def render(shape, x, y, flux, fwhm, half):
    """Sum of Gaussian stars (sub-pixel positions) on a zero image, float64."""
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    s = fwhm / 2.3548
    g = np.arange(-half, half + 1)
    gx = np.exp(-0.5 * ((g[None, :] - (x - ix)[:, None]) / s) ** 2)
    gy = np.exp(-0.5 * ((g[None, :] - (y - iy)[:, None]) / s) ** 2)
    gx /= gx.sum(1, keepdims=True)
    gy /= gy.sum(1, keepdims=True)
    w = flux[:, None, None] * gy[:, :, None] * gx[:, None, :]
    yy = iy[:, None, None] + g[None, :, None]
    xx = ix[:, None, None] + g[None, None, :]
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    flat = np.broadcast_to(yy * shape[1] + xx, w.shape)[ok]
    return np.bincount(flat, weights=w[ok], minlength=shape[0] * shape[1]).reshape(shape)


@dataclass
class Pair:
    new: np.ndarray
    ref: np.ndarray
    var_new: np.ndarray
    var_ref: np.ndarray
    psf_new: np.ndarray
    psf_ref: np.ndarray
    sigma_new: float
    sigma_ref: float
    flux_zp_ref: float
    star_x: np.ndarray
    star_y: np.ndarray
    tr_x: np.ndarray        # transient positions (integer pixels)
    tr_y: np.ndarray
    tr_flux_new: np.ndarray  # expected D_flux fit: +flux (new) or -flux_ref / F_r (ref)


def _free_positions(rng, shape, n, avoid_x, avoid_y, radius, edge, spacing):
    xs, ys = [], []
    for _ in range(1000 * n):
        if len(xs) == n:
            break
        x, y = rng.integers(edge, shape[1] - edge), rng.integers(edge, shape[0] - edge)
        if np.any((avoid_x - x) ** 2 + (avoid_y - y) ** 2 < radius**2):
            continue
        if xs and np.any((np.array(xs) - x) ** 2 + (np.array(ys) - y) ** 2 < spacing**2):
            continue
        xs.append(x)
        ys.append(y)
    if len(xs) < n:
        raise ValueError(f"no room for {n} transients: fewer stars or a larger image")
    return np.array(xs), np.array(ys)


def make_pair(shape=(512, 512), *, n_stars=300, fwhm_ref=3.0, fwhm_new=3.0, n_transients=0,
              snr=(10.0, 30.0), flux_zp_ref=3.0, seed=1, half=None) -> Pair:
    """A background-subtracted pair with common stars and +/- transients of known flux.

    Transient fluxes are set from their S/N in the *difference* (expected S_corr,
    background-limited, from :func:`zsds.core.zogy.difference_psf`); half are new-only
    (positive), half ref-only (negative).
    """
    from zsds.core.zogy import difference_psf

    rng = np.random.default_rng(seed)
    half = half or int(np.ceil(2.5 * max(fwhm_new, fwhm_ref)))
    sky_n, rn_n, sky_r, rn_r = 200.0, 8.0, 300.0, 5.0
    sig_n, sig_r = np.sqrt(sky_n + rn_n**2), np.sqrt(sky_r + rn_r**2)
    sx = rng.uniform(0, shape[1] - 1, n_stars)
    sy = rng.uniform(0, shape[0] - 1, n_stars)
    sf = 300.0 * (1 + rng.pareto(1.5, n_stars))
    sf = np.minimum(sf, 2e5)
    scene_n = render(shape, sx, sy, sf, fwhm_new, half)
    scene_r = render(shape, sx, sy, sf * flux_zp_ref, fwhm_ref, half)
    psf_n, psf_r = gaussian_stamp(fwhm_new, half), gaussian_stamp(fwhm_ref, half)
    tx = ty = tf = np.zeros(0)
    if n_transients:
        tx, ty = _free_positions(rng, shape, n_transients, sx, sy, 3 * max(fwhm_new, fwhm_ref),
                                2 * half, 2 * half + 1)
        pd, fd = difference_psf(psf_n, psf_r, sigma_new=sig_n, sigma_ref=sig_r,
                                flux_zp_ref=flux_zp_ref)
        alpha = rng.uniform(*snr, n_transients) / (fd * np.sqrt(np.sum(pd.astype(float) ** 2)))
        sign = np.where(np.arange(n_transients) % 2 == 0, 1.0, -1.0)
        pos, neg = sign > 0, sign < 0
        scene_n += render(shape, tx[pos].astype(float), ty[pos].astype(float), alpha[pos],
                          fwhm_new, half)
        scene_r += render(shape, tx[neg].astype(float), ty[neg].astype(float),
                          alpha[neg] * flux_zp_ref, fwhm_ref, half)
        tf = sign * alpha
    new = rng.poisson(scene_n + sky_n) - sky_n + rng.normal(0, rn_n, shape)
    ref = rng.poisson(scene_r + sky_r) - sky_r + rng.normal(0, rn_r, shape)
    var_new = np.maximum(new, 0) + sig_n**2
    var_ref = np.maximum(ref, 0) + sig_r**2
    f32 = np.float32
    return Pair(new.astype(f32), ref.astype(f32), var_new.astype(f32), var_ref.astype(f32),
                psf_n, psf_r, float(sig_n), float(sig_r), flux_zp_ref, sx, sy, tx, ty, tf)


def source_free(pair: Pair, radius: float) -> np.ndarray:
    """True away (> radius px) from every star and transient."""
    ny, nx = pair.new.shape
    m = np.ones((ny, nx), bool)
    r = int(np.ceil(radius))
    for x, y in zip(np.concatenate([pair.star_x, pair.tr_x]), np.concatenate([pair.star_y, pair.tr_y])):
        x0, y0 = int(round(x)), int(round(y))
        m[max(0, y0 - r):y0 + r + 1, max(0, x0 - r):x0 + r + 1] = False
    return m
