"""Simulated difference-image candidates with known truth, to train and test the real-bogus model.

Each simulated pair: a star field (power-law magnitudes, some galaxies as broad sources)
observed as a deep reference and a science image with different seeing (PSF = core Gaussian +
wing Gaussian, slightly elliptical), Poisson + read noise. What makes candidates:

* real: point transients in the science image (on empty sky or on galaxies), sources that
  vanished (negative), variable stars; S/N from ~3 to ~60;
* bogus: cosmic rays and hot pixels (most masked as the calibration would, some not), PSF
  model errors (the PSFs given to ZOGY have a few % FWHM error), sub-pixel misregistration and
  a flux-scale error (residuals of bright stars), saturated star cores (masked), bad columns.

Both images go through :func:`zsds.core.zogy.zogy_subtract` and
:mod:`zsds.core.candidates` exactly as in the subtraction stage; a candidate is real if it
lies within 2 px of a real injection. A function of ``seed`` only.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack

from ..core import candidates as cands
from ..core import zogy

__all__ = ["simulate_pair", "training_candidates"]


def _psf_stamp(fwhm, e, angle, half, dx=0.0, dy=0.0):
    s = fwhm / 2.3548
    k = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(k - dy, k - dx, indexing="ij")
    c, sn = np.cos(angle), np.sin(angle)
    u, v = c * xx + sn * yy, -sn * xx + c * yy
    r2 = (u / (1 + e)) ** 2 + (v * (1 + e)) ** 2
    p = 0.9 * np.exp(-0.5 * r2 / s**2) / s**2 + 0.1 * np.exp(-0.5 * r2 / (2.2 * s) ** 2) / (2.2 * s) ** 2
    return p / p.sum()


def _render(shape, x, y, flux, fwhm, e, angle, half=10):
    img = np.zeros(shape)
    for xi, yi, fi in zip(x, y, flux):
        ix, iy = int(round(xi)), int(round(yi))
        st = fi * _psf_stamp(fwhm, e, angle, half, xi - ix, yi - iy)
        y0, y1, x0, x1 = iy - half, iy + half + 1, ix - half, ix + half + 1
        cy0, cx0 = max(0, -y0), max(0, -x0)
        cy1, cx1 = st.shape[0] - max(0, y1 - shape[0]), st.shape[1] - max(0, x1 - shape[1])
        if cy1 > cy0 and cx1 > cx0:
            img[max(0, y0):min(shape[0], y1), max(0, x0):min(shape[1], x1)] += st[cy0:cy1, cx0:cx1]
    return img


def _galaxies(shape, rng, n):
    img = np.zeros(shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    gx, gy = rng.uniform(20, shape[1] - 20, n), rng.uniform(20, shape[0] - 20, n)
    for x, y in zip(gx, gy):
        r = rng.uniform(2.5, 6)
        sl = np.s_[max(0, int(y) - 25):int(y) + 25, max(0, int(x) - 25):int(x) + 25]
        img[sl] += rng.uniform(2e3, 3e4) * np.exp(-np.hypot(xx[sl] - x, yy[sl] - y) / r) / (2 * np.pi * r * r)
    return img, gx, gy


def _artefacts(shape, rng, n_cr, n_hot):
    """Cosmic rays (short tracks) and hot pixels: (image, mask of the masked ones)."""
    img, msk = np.zeros(shape), np.zeros(shape, bool)
    for _ in range(n_cr):
        x, y = rng.uniform(5, shape[1] - 5), rng.uniform(5, shape[0] - 5)
        n, ang = rng.integers(1, 6), rng.uniform(0, np.pi)
        xs = np.clip(np.round(x + np.arange(n) * np.cos(ang)).astype(int), 0, shape[1] - 1)
        ys = np.clip(np.round(y + np.arange(n) * np.sin(ang)).astype(int), 0, shape[0] - 1)
        img[ys, xs] += rng.uniform(100, 3000, n)
        if rng.random() < 0.85:
            msk[ys, xs] = True
    hx, hy = rng.integers(0, shape[1], n_hot), rng.integers(0, shape[0], n_hot)
    img[hy, hx] += rng.uniform(50, 1000, n_hot)
    return img, msk


def simulate_pair(seed: int, shape=(512, 512)) -> dict:
    """One science/reference pair with the truth of its real changes (see module doc)."""
    rng = np.random.default_rng(seed)
    fwhm_n = rng.uniform(1.8, 4.0)
    fwhm_r = fwhm_n * rng.uniform(0.55, 1.3)
    e_n, e_r = rng.uniform(0, 0.08), rng.uniform(0, 0.05)
    ang_n, ang_r = rng.uniform(0, np.pi, 2)
    sky, gain, rn = rng.uniform(100, 600), 6.0, 1.5
    sig_n = np.sqrt(sky / gain + rn**2)
    sig_r = sig_n / rng.uniform(2.0, 4.0)
    n_st = int(rng.integers(200, 600))
    sx, sy = rng.uniform(0, shape[1], n_st), rng.uniform(0, shape[0], n_st)
    sflux = 10 ** rng.uniform(2.0, 5.5, n_st)
    gal, gx, gy = _galaxies(shape, rng, 15)
    shift = rng.normal(0, 0.05, 2)
    jitter = rng.normal(0, 0.04, (2, n_st))
    var = np.ones(n_st)
    nvar = 8
    var[:nvar] = rng.uniform(0.6, 1.6, nvar)
    base_n = gal + _render(shape, sx + shift[0] + jitter[0], sy + shift[1] + jitter[1], sflux * var,
                           fwhm_n, e_n, ang_n)
    base_r = _convolve_like(gal, fwhm_r, fwhm_n) + _render(shape, sx, sy, sflux, fwhm_r, e_r, ang_r)
    # real transients: positive (some on galaxies) and negative
    npos, nneg = 25, 8
    tx = np.r_[rng.uniform(15, shape[1] - 15, npos - 5), gx[:5] + rng.normal(0, 2, 5),
               rng.uniform(15, shape[1] - 15, nneg)]
    ty = np.r_[rng.uniform(15, shape[0] - 15, npos - 5), gy[:5] + rng.normal(0, 2, 5),
               rng.uniform(15, shape[0] - 15, nneg)]
    snr = 10 ** rng.uniform(np.log10(3), np.log10(60), npos + nneg)
    neff = 4 * np.pi * (fwhm_n / 2.3548) ** 2
    tflux = snr * sig_n * np.sqrt(neff) * 1.1
    base_n += _render(shape, tx[:npos], ty[:npos], tflux[:npos], fwhm_n, e_n, ang_n)
    base_r += _render(shape, tx[npos:], ty[npos:], tflux[npos:], fwhm_r, e_r, ang_r)
    art, art_mask = _artefacts(shape, rng, int(rng.integers(40, 150)), int(rng.integers(5, 30)))
    new = rng.poisson(np.clip(base_n + sky, 0, None) * gain) / gain - sky + rng.normal(0, rn, shape) + art
    ref = base_r + rng.normal(0, sig_r, shape)
    sat = (base_n > 4e4)
    col = rng.integers(0, shape[1])
    bad = art_mask | sat
    bad[:, col] = True
    new[:, col] += 500 * (rng.random() < 0.5)
    half = 12
    psf_n = _psf_stamp(fwhm_n * rng.normal(1, 0.03), e_n, ang_n, half)
    psf_r = _psf_stamp(fwhm_r * rng.normal(1, 0.03), e_r, ang_r, half)
    real_xy = np.r_[np.c_[tx, ty], np.c_[sx[:nvar], sy[:nvar]]]
    real_snr = np.r_[snr, np.full(nvar, np.nan)]
    return dict(new=new.astype(np.float32), ref=ref.astype(np.float32), psf_n=psf_n, psf_r=psf_r,
                sig_n=sig_n, sig_r=sig_r, var_n=(sig_n**2 + np.clip(base_n, 0, None) / gain),
                var_r=np.full(shape, sig_r**2), bad=bad, flux_err=rng.normal(1, 0.01),
                real_xy=real_xy, real_snr=real_snr, npos=npos)


def _convolve_like(img, fwhm_to, fwhm_from):
    """Galaxies blurred to the other seeing (only their difference matters, approximately)."""
    from scipy import ndimage

    d = (fwhm_to**2 - fwhm_from**2)
    return ndimage.gaussian_filter(img, np.sqrt(d) / 2.3548) if d > 0 else img


def _label(t: Table, real_xy, radius=2.0) -> np.ndarray:
    if len(t) == 0:
        return np.zeros(0, bool)
    d = np.hypot(np.asarray(t["xpos"])[:, None] - real_xy[None, :, 0],
                 np.asarray(t["ypos"])[:, None] - real_xy[None, :, 1])
    return d.min(1) <= radius


def pair_candidates(seed: int, shape=(512, 512)) -> Table:
    """Candidates (features, ``filter_bits``, ``label``) of one simulated pair."""
    p = simulate_pair(seed, shape)
    z = zogy.zogy_subtract(p["new"], p["ref"], p["psf_n"], p["psf_r"], sigma_new=p["sig_n"],
                           sigma_ref=p["sig_r"], flux_zp_ref=p["flux_err"], var_new=p["var_n"],
                           var_ref=p["var_r"], astrometric_sigma=(0.04, 0.04), mask_new=p["bad"])
    var_bg = float((z.flux_zp_new / z.F_D) ** 2)
    s_var = np.asarray(z.S_var)
    im = cands.DifferenceImages(D=z.D, S=z.S, S_corr=z.S_corr, S_var=z.S_var, D_flux=z.D_flux,
                                var_flux=var_bg * s_var / float(np.median(s_var)), P_D=z.P_D,
                                s_to_flux=z.s_to_flux, bad=p["bad"], zp=26.0)
    lim = cands.diffmaglim(z.S_var, z.s_to_flux, 26.0)
    excl = np.zeros(z.D.shape, bool)
    h = z.P_D.shape[0] // 2
    excl[:h], excl[-h:], excl[:, :h], excl[:, -h:] = True, True, True, True
    t = cands.find_candidates(im, exclude=excl, diffmaglim_value=lim)
    for k in ("distnr", "magnr"):
        t[k] = np.full(len(t), np.nan)
    t["filter_bits"] = cands.filter_candidates(t, cands._psf_fwhm(z.P_D))
    t["label"] = _label(t, p["real_xy"])
    t["pair"] = np.full(len(t), seed)
    return t


def training_candidates(seed: int = 42, n_pairs: int = 40, shape=(512, 512)) -> Table:
    """Candidates of ``n_pairs`` simulated pairs (seeds ``seed * 1000 + i``)."""
    return vstack([pair_candidates(seed * 1000 + i, shape) for i in range(n_pairs)])
