"""ZOGY image subtraction (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27; "ZOGY16" below).

Model: ``N = F_n T (x) P_n + e_n`` and ``R = F_r T (x) P_r + e_r`` with ``T`` the true sky,
``P`` unit-sum PSFs, ``F`` flux zero points (DN per unit true flux) and background noise of
standard deviation ``sigma_n``, ``sigma_r``. Both images must be registered (same pixel grid)
and background-subtracted (:mod:`zsds.core.fluxmatch`).

Fourier-space conventions: hats are unnormalised ``rfft2`` transforms on a grid padded to a
fast FFT size (:func:`zsds.core.fft.padded_shape`) with zeros; PSF stamps are embedded with
their centre pixel at index ``[0, 0]`` (wrapped), so a centred PSF has no phase ramp.

Quantities (ZOGY16 equation numbers)::

    d2      = sigma_n^2 F_r^2 |P_r|^2 + sigma_r^2 F_n^2 |P_n|^2        (denominator of 13-14)
    D_hat   = (F_r P_r N_hat - F_n P_n R_hat) / sqrt(d2)                (13)
    F_D     = F_r F_n / sqrt(sigma_n^2 F_r^2 + sigma_r^2 F_n^2)          (15)
    P_D_hat = F_r F_n P_r P_n / (F_D sqrt(d2))                           (14)
    S_hat   = F_D D_hat conj(P_D_hat) = k_n N_hat - k_r R_hat           (12, 17)
    k_n     = F_n F_r^2 conj(P_n) |P_r|^2 / d2,  k_r = F_r F_n^2 conj(P_r) |P_n|^2 / d2   (28-29)
    V(S_N)  = V_n (x) k_n^2 + V_r (x) k_r^2                               (26-27)
    V(S_A)  = sx^2 [(dS_n/dx)^2 + (dS_r/dx)^2] + sy^2 [(dS_n/dy)^2 + (dS_r/dy)^2]   (30-31)
    S_corr  = S / sqrt(V(S_N) + V(S_A))                                   (25)

``V_n, V_r`` are the per-pixel variances (background and source noise); without variance maps
``V(S_N)`` is the constant ``sigma_n^2 sum k_n^2 + sigma_r^2 sum k_r^2``, the variance of S.

Zero-frequency denominators: ``d2`` is floored at :data:`TINY` (1e-30, in float64 inside the
kernel). ``|F_r P_r| / sqrt(d2) <= 1 / sigma_n`` (and likewise every kernel above) is bounded
for any PSF values, so the floor only turns the 0/0 of frequencies where *both* PSF transforms
vanish exactly (underflow) into 0 instead of NaN; it never amplifies noise.

FFT count per subtraction (full padded size): 2 PSF + 2 image forward, 1 inverse for D, 1 for
S (2 when the astrometric term is on: S_n and S_r separately); with variance maps 4 more
forward (V_n, V_r, k_n^2, k_r^2) and 1 inverse. So 6 (constant noise) to 12 (variance maps and
astrometric noise). The kernels k_n, k_r and P_D are computed on a small grid (PSF-sized FFTs in
numpy, not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import filters
from .fft import FFTPlans, fast_size, get_plans, padded_shape

__all__ = ["TINY", "ZogyResult", "TiledZogyResult", "ZogyTile", "difference_psf", "zogy_subtract",
           "zogy_tiled"]

#: Floor of the ZOGY denominator ``d2`` (see the module docstring).
TINY = 1e-30


@dataclass(frozen=True)
class ZogyResult:
    """Outputs of one ZOGY subtraction, all on the input pixel grid, float32.

    Attributes
    ----------
    D : array
        Proper difference image (ZOGY16 eq. 13), white noise of unit variance.
    P_D : array
        PSF of D (eq. 14), odd-sized stamp centred on its middle pixel, unit sum.
    F_D : float
        Flux zero point of D (eq. 15): a source of true flux ``a`` appears as ``a F_D P_D``.
    S : array
        Matched-filter score image (eqs. 12, 17), ``F_D D (x) flip(P_D)``.
    S_var : array or float
        ``V(S_N) + V(S_A)`` (eqs. 26-31), the variance of S including source and
        astrometric noise (a float when constant).
    S_corr : array
        ``S / sqrt(S_var)`` (eq. 25): unit-variance detection statistic; new-minus-ref
        transients positive, ref-minus-new negative.
    D_flux : array
        ``D F_n / F_D``: PSF-fit photometry on it with ``P_D`` gives fluxes in DN of the new
        image (its zero point ``F_n``); background noise ``F_n / F_D`` per pixel.
    mask : bool array
        True where the result is unreliable: within the kernels' reach of the image border
        or of a masked / non-finite input pixel.
    flux_zp_new : float
        ``F_n``.
    n_fft : int
        Full-size FFTs executed.
    """

    D: np.ndarray
    P_D: np.ndarray
    F_D: float
    S: np.ndarray
    S_var: np.ndarray | float
    S_corr: np.ndarray
    D_flux: np.ndarray
    mask: np.ndarray
    flux_zp_new: float
    n_fft: int

    @property
    def s_to_flux(self) -> float:
        """Factor from S to the PSF-fit flux on :attr:`D_flux`, ``F_n / (F_D^2 sum P_D^2)``."""
        return self.flux_zp_new / (self.F_D**2 * float(np.sum(self.P_D.astype(np.float64) ** 2)))

    def point_source_flux(self, y, x):
        """PSF-fit flux (new-image DN) and its 1-sigma error of point sources at pixels (y, x).

        The flux is the least-squares fit of ``P_D`` to :attr:`D_flux` over the whole image
        (``S`` scaled by :attr:`s_to_flux`); the error includes source and astrometric noise.
        """
        y, x = np.asarray(y, int), np.asarray(x, int)
        var = self.S_var if np.ndim(self.S_var) == 0 else self.S_var[y, x]
        k = self.s_to_flux
        return self.S[y, x] * k, np.sqrt(var) * k


# --------------------------------------------------------------------------- small-grid kernels


def _unit_psf(psf, name):
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0:
        raise ValueError(f"{name} must be a 2-D stamp of odd sizes, got shape {p.shape}")
    total = p.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"{name} must have a positive finite sum")
    return p / total


def _embed(stamp, shape):
    """``stamp`` in a zero array of ``shape`` with its centre pixel wrapped to ``[0, 0]``."""
    out = np.zeros(shape, dtype=np.float32)
    ky, kx = stamp.shape
    iy = (np.arange(ky) - ky // 2) % shape[0]
    ix = (np.arange(kx) - kx // 2) % shape[1]
    out[np.ix_(iy, ix)] = stamp
    return out


def _centred(wrapped, size):
    """Central ``size x size`` stamp of a wrapped (origin at ``[0, 0]``) small array."""
    h = size // 2
    return np.fft.fftshift(wrapped)[wrapped.shape[0] // 2 - h:wrapped.shape[0] // 2 + h + 1,
                                    wrapped.shape[1] // 2 - h:wrapped.shape[1] // 2 + h + 1]


@dataclass(frozen=True)
class _SmallKernels:
    P_D: np.ndarray      # centred stamp, unit sum
    k_n: np.ndarray      # centred stamps of the score kernels (eqs. 28-29)
    k_r: np.ndarray
    sum_pd2: float


def _small_kernels(pn, pr, fn, fr, sn, sr) -> _SmallKernels:
    """P_D (eq. 14), k_n, k_r (eqs. 28-29) on a small grid (PSF-sized numpy FFTs, float64)."""
    size = max(pn.shape + pr.shape)
    m = fast_size(max(64, 2 * size + 1))
    Pn, Pr = (np.fft.rfft2(_embed(p, (m, m)).astype(np.float64)) for p in (pn, pr))
    an, ar = np.abs(Pn) ** 2, np.abs(Pr) ** 2
    d2 = np.maximum(sn**2 * fr**2 * ar + sr**2 * fn**2 * an, TINY)
    fd = fr * fn / np.sqrt(sn**2 * fr**2 + sr**2 * fn**2)
    pd = np.fft.irfft2(fr * fn * Pr * Pn / (fd * np.sqrt(d2)), s=(m, m))
    kn = np.fft.irfft2(fn * fr**2 * np.conj(Pn) * ar / d2, s=(m, m))
    kr = np.fft.irfft2(fr * fn**2 * np.conj(Pr) * an / d2, s=(m, m))
    out = size | 1
    return _SmallKernels(P_D=_centred(pd, out).astype(np.float32), k_n=_centred(kn, m - 1),
                         k_r=_centred(kr, m - 1), sum_pd2=float(np.sum(pd**2)))


def difference_psf(psf_new, psf_ref, *, sigma_new, sigma_ref, flux_zp_new=1.0,
                   flux_zp_ref=1.0) -> tuple[np.ndarray, float]:
    """``(P_D, F_D)`` of a subtraction (eqs. 14-15) without the images.

    A point source of true flux ``a`` (``a F_n`` DN in the new image) has an expected
    ``S_corr`` of ``a F_D sqrt(sum P_D^2)`` when background noise dominates.
    """
    pn, pr = _unit_psf(psf_new, "psf_new"), _unit_psf(psf_ref, "psf_ref")
    sn, sr = _scalar_sigma(sigma_new, "sigma_new"), _scalar_sigma(sigma_ref, "sigma_ref")
    fn, fr = float(flux_zp_new), float(flux_zp_ref)
    kernels = _small_kernels(pn, pr, fn, fr, sn, sr)
    return kernels.P_D, float(fr * fn / np.sqrt(sn**2 * fr**2 + sr**2 * fn**2))


# --------------------------------------------------------------------------- Fourier arithmetic


@numba.njit(cache=True, fastmath=True)
def _proper_terms(N, R, Pn, Pr, fn, fr, sn2, sr2, split, Sn):
    """In place: N <- D_hat (eq. 13); R <- S_r_hat, or S_hat if not ``split``; Sn <- S_n_hat."""
    cn, cr = sn2 * fr * fr, sr2 * fn * fn
    kn, kr = fn * fr * fr, fr * fn * fn
    for i in range(N.shape[0]):
        for j in range(N.shape[1]):
            pn = Pn[i, j]
            pr = Pr[i, j]
            an = pn.real * pn.real + pn.imag * pn.imag
            ar = pr.real * pr.real + pr.imag * pr.imag
            inv = 1.0 / np.sqrt(max(cn * ar + cr * an, TINY))
            n = N[i, j]
            r = R[i, j]
            N[i, j] = (fr * pr * n - fn * pn * r) * inv
            sn_hat = (kn * ar * inv * inv) * np.conj(pn) * n
            sr_hat = (kr * an * inv * inv) * np.conj(pr) * r
            if split:
                Sn[i, j] = sn_hat
                R[i, j] = sr_hat
            else:
                R[i, j] = sn_hat - sr_hat


@numba.njit(cache=True)
def _astrometric_variance(Sn, Sr, sx2, sy2):
    """V(S_A), eqs. 30-31, with central differences (one-sided at the edges)."""
    ny, nx = Sn.shape
    out = np.empty((ny, nx), dtype=np.float32)
    for i in range(ny):
        i0, i1 = max(i - 1, 0), min(i + 1, ny - 1)
        for j in range(nx):
            j0, j1 = max(j - 1, 0), min(j + 1, nx - 1)
            gyn = (Sn[i1, j] - Sn[i0, j]) / (i1 - i0)
            gyr = (Sr[i1, j] - Sr[i0, j]) / (i1 - i0)
            gxn = (Sn[i, j1] - Sn[i, j0]) / (j1 - j0)
            gxr = (Sr[i, j1] - Sr[i, j0]) / (j1 - j0)
            out[i, j] = sx2 * (gxn * gxn + gxr * gxr) + sy2 * (gyn * gyn + gyr * gyr)
    return out


@numba.njit(cache=True, fastmath=True)
def _score(s_n, s_r, v_noise, v_ast):
    """S = S_n - S_r (in place in ``s_n``), S_var (in place in ``v_noise``), S_corr (eq. 25)."""
    out = np.empty(s_n.shape, np.float32)
    for i in range(s_n.shape[0]):
        for j in range(s_n.shape[1]):
            s = s_n[i, j] - s_r[i, j]
            v = v_noise[i, j] + v_ast[i, j]
            s_n[i, j] = s
            v_noise[i, j] = v
            out[i, j] = s / np.sqrt(v)
    return out


# --------------------------------------------------------------------------- helpers


def _scalar_sigma(sigma, name):
    s = float(np.nanmedian(sigma)) if np.ndim(sigma) else float(sigma)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"{name} must be positive, got {s}")
    return s


def _clean(image, mask, name, shape):
    """float32 copy of ``image`` with masked / non-finite pixels set to 0, and the bad mask."""
    a = np.asarray(image)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        raise ValueError(f"{name} must be a 2-D array of shape {shape or 'like new'}, "
                         f"got {a.shape}")
    bad = ~np.isfinite(a)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if bad.any():
        a = np.where(bad, np.float32(0), a).astype(np.float32)
    return a, bad


def _variance_map(var, sigma, shape, name):
    if var is not None:
        v = np.asarray(var, dtype=np.float32)
        if v.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {v.shape}")
        return v if np.isfinite(v).all() else np.where(np.isfinite(v), v, 0).astype(np.float32)
    if np.ndim(sigma):
        return np.square(np.asarray(sigma, dtype=np.float32))
    return None


def _noise_variance(plans, kernels, vn, vr, sn, sr, shape):
    """V(S_N), eqs. 26-27: a constant, or the convolution of the variance maps (5 FFTs)."""
    if vn is None and vr is None:
        return sn**2 * float(np.sum(kernels.k_n**2)) + sr**2 * float(np.sum(kernels.k_r**2)), 0
    vn = np.full(shape, sn**2, np.float32) if vn is None else vn
    vr = np.full(shape, sr**2, np.float32) if vr is None else vr
    acc = plans.rfft2(vn)
    acc *= plans.rfft2(_embed(kernels.k_n**2, plans.shape))
    term = plans.rfft2(vr)
    term *= plans.rfft2(_embed(kernels.k_r**2, plans.shape))
    acc += term
    v = plans.irfft2(acc, shape, overwrite_input=True)
    return np.maximum(v, np.float32(TINY), out=v), 5


def _unreliable(bad, shape, reach):
    """Pixels within ``reach`` of the border or of a bad input pixel."""
    if bad.any():
        out = filters.maximum_filter(np.asarray(bad, bool), 2 * reach + 1)
    else:
        out = np.zeros(shape, bool)
    out[:reach] = out[-reach:] = True
    out[:, :reach] = out[:, -reach:] = True
    return out


def _combine(s_n, s_r, v_noise, v_ast):
    """(S, S_var, S_corr) from the score parts and variances (eqs. 25-31)."""
    if s_r is None and v_ast is None and np.ndim(v_noise) == 0:
        return s_n, float(v_noise), s_n * np.float32(1 / np.sqrt(v_noise))
    s_r = np.zeros_like(s_n) if s_r is None else s_r
    v_ast = np.zeros_like(s_n) if v_ast is None else v_ast
    if np.ndim(v_noise) == 0:
        v_noise = np.full(s_n.shape, v_noise, np.float32)
    s_corr = _score(s_n, s_r, v_noise, v_ast)
    return s_n, v_noise, s_corr


# --------------------------------------------------------------------------- public


def zogy_subtract(new, ref, psf_new, psf_ref, *, sigma_new, sigma_ref, flux_zp_new=1.0,
                  flux_zp_ref=1.0, var_new=None, var_ref=None, astrometric_sigma=(0.0, 0.0),
                  mask_new=None, mask_ref=None, fft: FFTPlans | None = None,
                  threads: int = 1) -> ZogyResult:
    """ZOGY proper difference, score and corrected score of two registered images.

    Parameters
    ----------
    new, ref : 2-D arrays, same shape
        Background-subtracted science (new) and reference images on the same pixel grid, DN.
    psf_new, psf_ref : 2-D arrays
        PSF stamps (odd sizes, centred on the middle pixel; normalised here to unit sum).
    sigma_new, sigma_ref : float or 2-D array
        Background noise per pixel, DN. Maps enter the denominators through their median and
        V(S_N) through ``sigma^2`` when no variance map is given.
    flux_zp_new, flux_zp_ref : float
        ``F_n``, ``F_r``: DN per unit true flux (see :func:`zsds.core.fluxmatch.zogy_flux_zps`).
    var_new, var_ref : 2-D arrays, optional
        Per-pixel variance including source noise, DN^2 (V_n, V_r of eqs. 26-27).
    astrometric_sigma : (float, float)
        Registration noise ``(sx, sy)``, pixels (eqs. 30-31); (0, 0) disables the term.
    mask_new, mask_ref : 2-D bool arrays, optional
        Bad pixels; they are set to 0 (background) in both images and flagged in ``mask``.
    fft : FFTPlans, optional
        Plans of a shape >= the image shape (default: the cached plans of
        ``padded_shape(new.shape)``).
    threads : int
        FFTW threads when ``fft`` is not given.

    Returns
    -------
    ZogyResult
    """
    new, bad_n = _clean(new, mask_new, "new", None)
    shape = new.shape
    ref, bad_r = _clean(ref, mask_ref, "ref", shape)
    bad = bad_n | bad_r
    if bad.any():  # blank bad pixels in both images, so they cancel in D
        new, ref = (np.where(bad, np.float32(0), a) for a in (new, ref))
    pn, pr = _unit_psf(psf_new, "psf_new"), _unit_psf(psf_ref, "psf_ref")
    sn, sr = _scalar_sigma(sigma_new, "sigma_new"), _scalar_sigma(sigma_ref, "sigma_ref")
    fn, fr = float(flux_zp_new), float(flux_zp_ref)
    if fn <= 0 or fr <= 0:
        raise ValueError(f"flux_zp_new and flux_zp_ref must be positive, got {fn}, {fr}")
    plans = fft if fft is not None else get_plans(padded_shape(shape), threads=threads)
    if plans.shape[0] < shape[0] or plans.shape[1] < shape[1]:
        raise ValueError(f"fft plans of shape {plans.shape} are smaller than the images {shape}")
    kernels = _small_kernels(pn, pr, fn, fr, sn, sr)
    fd = fr * fn / np.sqrt(sn**2 * fr**2 + sr**2 * fn**2)
    sx, sy = (float(s) for s in astrometric_sigma)
    split = sx > 0 or sy > 0

    Pn = plans.rfft2(_embed(pn, plans.shape))
    Pr = plans.rfft2(_embed(pr, plans.shape))
    N, R = plans.rfft2(new), plans.rfft2(ref)
    Sn = np.empty_like(N) if split else np.empty((1, 1), N.dtype)
    _proper_terms(N, R, Pn, Pr, fn, fr, sn**2, sr**2, split, Sn)
    del Pn, Pr
    D = plans.irfft2(N, shape, overwrite_input=True)
    del N
    n_fft = 5
    if split:
        s_n = plans.irfft2(Sn, shape, overwrite_input=True)
        s_r = plans.irfft2(R, shape, overwrite_input=True)
        v_ast = _astrometric_variance(s_n, s_r, sx**2, sy**2)
        n_fft += 2
    else:
        s_n, s_r, v_ast = plans.irfft2(R, shape, overwrite_input=True), None, None
        n_fft += 1
    del Sn, R
    vn = _variance_map(var_new, sigma_new, shape, "var_new")
    vr = _variance_map(var_ref, sigma_ref, shape, "var_ref")
    v_noise, n_var = _noise_variance(plans, kernels, vn, vr, sn, sr, shape)
    S, s_var, s_corr = _combine(s_n, s_r, v_noise, v_ast)
    reach = max(pn.shape + pr.shape)
    return ZogyResult(D=D, P_D=kernels.P_D, F_D=float(fd), S=S,
                      S_var=s_var, S_corr=s_corr,
                      D_flux=D * np.float32(fn / fd), mask=_unreliable(bad, shape, reach),
                      flux_zp_new=fn, n_fft=n_fft + n_var)


# --------------------------------------------------------------------------- spatially varying


@dataclass(frozen=True)
class ZogyTile:
    """One tile of :func:`zogy_tiled`: its core ``[y0:y1, x0:x1]`` and its P_D and F_D."""

    y0: int
    y1: int
    x0: int
    x1: int
    P_D: np.ndarray
    F_D: float


@dataclass(frozen=True)
class TiledZogyResult:
    """Stitched outputs of :func:`zogy_tiled` (fields as in :class:`ZogyResult`).

    ``D`` is normalised per tile (its ``F_D`` may change from tile to tile when the noise
    does); ``D_flux``, ``S_corr`` and fluxes from :meth:`point_source_flux` are continuous.
    """

    D: np.ndarray
    S: np.ndarray
    S_var: np.ndarray
    S_corr: np.ndarray
    D_flux: np.ndarray
    mask: np.ndarray
    tiles: tuple[ZogyTile, ...]
    flux_zp_new: float
    n_fft: int

    def tile_at(self, y, x) -> ZogyTile:
        """The tile whose core contains pixel (y, x)."""
        for t in self.tiles:
            if t.y0 <= y < t.y1 and t.x0 <= x < t.x1:
                return t
        raise IndexError(f"pixel ({y}, {x}) is outside the image")

    def point_source_flux(self, y, x):
        """PSF-fit flux (new-image DN) and error at pixel (y, x), with that tile's P_D."""
        t = self.tile_at(y, x)
        k = self.flux_zp_new / (t.F_D**2 * float(np.sum(t.P_D.astype(np.float64) ** 2)))
        return float(self.S[y, x]) * k, float(np.sqrt(self.S_var[y, x])) * k


def _tile_edges(n, tile):
    k = max(1, int(round(n / tile)))
    return np.linspace(0, n, k + 1).round().astype(int)


def _cut(a, sl):
    return a[sl] if a is not None and np.ndim(a) == 2 else a


def zogy_tiled(new, ref, psf_new_at, psf_ref_at, *, sigma_new, sigma_ref, tile=512,
               overlap: int | None = None, var_new=None, var_ref=None, mask_new=None,
               mask_ref=None, threads: int = 1, **kwargs) -> TiledZogyResult:
    """ZOGY with spatially varying PSFs: overlapping tiles, PSFs at each tile centre.

    The image is cut into a grid of cores of about ``tile`` pixels; each core is extended by
    ``overlap`` pixels on every side (clipped at the image edge), subtracted with
    :func:`zogy_subtract` using ``psf_new_at(x, y)`` and ``psf_ref_at(x, y)`` at the core
    centre, and only the core is kept. With ``overlap`` >= the kernels' reach (the default,
    twice the larger PSF stamp) no kept pixel sees a tile edge, so the stitched image equals a
    global subtraction wherever the PSF is constant, and the PSF changes in steps at core
    boundaries (not blended: a blend would mix two differently normalised D's).
    All tiles share one FFT plan (the padded shape of the largest extended tile).

    Parameters
    ----------
    new, ref : 2-D arrays
        As in :func:`zogy_subtract`.
    psf_new_at, psf_ref_at : callable ``(x, y) -> 2-D stamp``
        PSF models, 0-based pixel coordinates.
    sigma_new, sigma_ref, var_new, var_ref, mask_new, mask_ref
        As in :func:`zogy_subtract`; maps are cut per tile (a sigma map gives each tile its
        own median noise).
    tile : int or (int, int)
        Approximate core size, pixels.
    overlap : int, optional
        Margin added around each core, pixels.
    **kwargs
        ``flux_zp_new``, ``flux_zp_ref``, ``astrometric_sigma``, passed on.

    Returns
    -------
    TiledZogyResult
    """
    new = np.asarray(new)
    ny, nx = new.shape
    ty, tx = (tile, tile) if np.ndim(tile) == 0 else tile
    ey, ex = _tile_edges(ny, ty), _tile_edges(nx, tx)
    if overlap is None:
        centre = psf_new_at(nx / 2, ny / 2), psf_ref_at(nx / 2, ny / 2)
        overlap = 2 * max(centre[0].shape + centre[1].shape)
    ext = (min(ny, int(np.diff(ey).max()) + 2 * overlap), min(nx, int(np.diff(ex).max()) + 2 * overlap))
    plans = get_plans(padded_shape(ext), threads=threads)
    out = {k: np.empty((ny, nx), np.float32) for k in ("D", "S", "S_var", "S_corr", "D_flux")}
    out["mask"] = np.empty((ny, nx), bool)
    tiles, n_fft = [], 0
    for y0, y1 in zip(ey[:-1], ey[1:]):
        for x0, x1 in zip(ex[:-1], ex[1:]):
            a0, a1 = max(0, y0 - overlap), min(ny, y1 + overlap)
            b0, b1 = max(0, x0 - overlap), min(nx, x1 + overlap)
            sl = np.s_[a0:a1, b0:b1]
            xc, yc = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
            r = zogy_subtract(new[sl], np.asarray(ref)[sl], psf_new_at(xc, yc), psf_ref_at(xc, yc),
                              sigma_new=_cut(sigma_new, sl), sigma_ref=_cut(sigma_ref, sl),
                              var_new=_cut(var_new, sl), var_ref=_cut(var_ref, sl),
                              mask_new=_cut(mask_new, sl), mask_ref=_cut(mask_ref, sl),
                              fft=plans, **kwargs)
            core = np.s_[y0 - a0:y1 - a0, x0 - b0:x1 - b0]
            for k in out:
                out[k][y0:y1, x0:x1] = getattr(r, k)[core] if np.ndim(getattr(r, k)) else getattr(r, k)
            tiles.append(ZogyTile(int(y0), int(y1), int(x0), int(x1), r.P_D, r.F_D))
            n_fft += r.n_fft
    return TiledZogyResult(**out, tiles=tuple(tiles), flux_zp_new=r.flux_zp_new, n_fft=n_fft)
