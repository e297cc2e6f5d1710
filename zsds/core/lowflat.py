"""Low-frequency ("low-v") flat from the photometric residuals of calibration stars.

The dome flat leaves large-scale response errors (vignetting and illumination that the lamp
does not trace). Stars calibrated with one zero point per exposure then show a smooth pattern
of residuals across the quadrant. This module fits that pattern over many exposures of the
same quadrant and filter and turns it into a multiplicative flat.

Model, per star ``i`` on exposure ``e(i)`` at 0-based pixel ``(x_i, y_i)``::

    dmag_i = a_e(i) + P(u_i, v_i),     dmag = m_ref - m_inst - zp - clrcoeff * colour

with ``P`` a 2-D Legendre polynomial with no constant term, in ``u = 2 x / (nx - 1) - 1`` and
``v = 2 y / (ny - 1) - 1``. The offsets ``a_e`` are fitted jointly, so the flat cannot absorb
changes of zero point between exposures. A positive ``P`` means the star was measured too faint,
i.e. the image response is low there. The flat is ``L = 10^(0.4 P) / median(10^(0.4 P))``
(median 1 over the quadrant). Dividing the image by ``L`` (:func:`apply_lowflat`) changes
``m_inst`` by ``+2.5 log10 L``. The zero points must then be fitted again; they change by
``a_e + norm_mag`` (:attr:`LowFlatFit.zp_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import legendre

from ..errors import AlgorithmError

__all__ = ["LowFlatFit", "fit_lowflat", "apply_lowflat", "grid_medians", "grid_residual_structure"]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class LowFlatFit:
    """A fitted low-frequency flat.

    Attributes
    ----------
    flat : ndarray of float32, shape ``shape``
        Multiplicative flat, median 1 over the quadrant (divide the image by it).
    coeffs : ndarray
        Coefficients of the Legendre terms ``terms``, mag.
    terms : list of (int, int)
        Degrees ``(i, j)`` in ``(u, v)`` of each term (no ``(0, 0)``).
    shape : (int, int)
        ``(ny, nx)`` of the quadrant.
    norm_mag : float
        ``2.5 log10`` of the median of ``10^(0.4 P)`` taken out in the normalisation, mag.
    exposures : ndarray
        The distinct exposure labels, in the order of ``zp_offsets``.
    zp_offsets : ndarray
        Zero-point change of each exposure once the flat is applied (``a_e + norm_mag``), mag.
    rms : float
        RMS of the residuals of the stars kept, after the fit, mag.
    rms_before : float
        RMS of ``dmag`` minus its per-exposure weighted mean for the same stars, mag.
    chi2_reduced : float
    n_used : int
    used : ndarray of bool
    """

    flat: np.ndarray
    coeffs: np.ndarray
    terms: list
    shape: tuple
    norm_mag: float
    exposures: np.ndarray
    zp_offsets: np.ndarray
    rms: float
    rms_before: float
    chi2_reduced: float
    n_used: int
    used: np.ndarray

    def mag_correction(self, x, y) -> np.ndarray:
        """``2.5 log10 L(x, y)``, mag: add it to an instrumental magnitude measured before
        the flat was applied to obtain the one after (exact for point sources on a smooth
        flat; evaluated from the polynomial, not the image)."""
        u, v = _unit(np.asarray(x, float), np.asarray(y, float), self.shape)
        return _design(u, v, self.terms) @ self.coeffs - self.norm_mag

    def evaluate(self, x, y) -> np.ndarray:
        """The flat ``L`` at pixel positions (dimensionless)."""
        return 10.0 ** (0.4 * self.mag_correction(x, y))


def _unit(x, y, shape):
    ny, nx = shape
    return 2.0 * x / max(nx - 1, 1) - 1.0, 2.0 * y / max(ny - 1, 1) - 1.0


def _terms(degree: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i) if i + j > 0]


def _design(u, v, terms):
    deg = max(max(t) for t in terms)
    vu = legendre.legvander(u, deg)
    vv = legendre.legvander(v, deg)
    return np.column_stack([vu[:, i] * vv[:, j] for i, j in terms])


def _flat_image(coeffs, terms, shape):
    """``P(u, v)`` on the pixel grid, evaluated separably, mag (float64)."""
    ny, nx = shape
    deg = max(max(t) for t in terms)
    u, v = _unit(np.arange(nx, dtype=float), np.arange(ny, dtype=float), shape)
    vu, vv = legendre.legvander(u, deg), legendre.legvander(v, deg)
    image = np.zeros(shape)
    for c, (i, j) in zip(coeffs, terms):
        image += c * np.outer(vv[:, j], vu[:, i])
    return image


def _solve(dmag, w, design, group, n_groups):
    """Weighted LSQ of ``dmag = a[group] + design @ c``; returns (a, c, model)."""
    onehot = np.zeros((dmag.size, n_groups))
    onehot[np.arange(dmag.size), group] = 1.0
    full = np.hstack([onehot, design])
    sw = np.sqrt(w)
    sol, *_ = np.linalg.lstsq(full * sw[:, None], dmag * sw, rcond=None)
    return sol[:n_groups], sol[n_groups:], full @ sol


def fit_lowflat(x, y, dmag, weights, shape, *, exposure=None, degree: int = 3,
                clip: float = 3.0, max_iter: int = 10, min_stars: int = 50) -> LowFlatFit:
    """Fit a smooth low-frequency flat to calibration-star residuals of many exposures.

    Parameters
    ----------
    x, y : array_like
        Star positions, 0-based pixels of the quadrant.
    dmag : array_like
        Residuals ``m_ref - m_inst - zp - clrcoeff * colour`` after each exposure's own
        zero-point fit, mag.
    weights : array_like
        Inverse variances of ``dmag``, mag^-2 (zero or non-finite: star ignored).
    shape : (int, int)
        ``(ny, nx)`` of the quadrant.
    exposure : array_like, optional
        Exposure label of each star; a free offset is fitted per exposure (default: one
        exposure).
    degree : int
        Total degree of the 2-D Legendre polynomial (default 3: 9 terms).
    clip : float
        Clip stars whose normalised residual exceeds ``clip`` robust sigmas; iterate.
    max_iter : int
    min_stars : int
        Fewest stars accepted (also at least 3 per term).

    Returns
    -------
    LowFlatFit

    Raises
    ------
    AlgorithmError
        Too few usable stars.
    """
    x, y, dmag, w = (np.asarray(a, float) for a in (x, y, dmag, weights))
    labels, group = np.unique(np.zeros(dmag.size) if exposure is None else np.asarray(exposure),
                              return_inverse=True)
    terms = _terms(degree)
    design = _design(*_unit(x, y, shape), terms)
    finite = np.isfinite(dmag) & np.isfinite(w) & (w > 0) & np.isfinite(x) & np.isfinite(y)
    n_required = max(min_stars, 3 * (len(terms) + labels.size))
    used = finite.copy()
    for _ in range(max_iter):
        _require(used.sum(), n_required)
        a, c, _ = _solve(dmag[used], w[used], design[used], group[used], labels.size)
        z = (dmag - a[group] - design @ c) * np.sqrt(np.where(finite, w, 0.0))
        scale = max(_MAD_TO_SIGMA * np.median(np.abs(z[used] - np.median(z[used]))), 1.0)
        new_used = finite & (np.abs(z) <= clip * scale)
        if np.array_equal(new_used, used):
            break
        used = new_used
    _require(used.sum(), n_required)
    a, c, _ = _solve(dmag[used], w[used], design[used], group[used], labels.size)
    return _result(x, y, dmag, w, group, labels, terms, shape, a, c, used, design)


def _require(n, n_required):
    if n < n_required:
        raise AlgorithmError(f"only {int(n)} stars for the low-frequency flat,"
                             f" {n_required} required",
                             n_stars=int(n), n_required=int(n_required))


def _result(x, y, dmag, w, group, labels, terms, shape, a, c, used, design) -> LowFlatFit:
    poly = _flat_image(c, terms, shape)
    linear = 10.0 ** (0.4 * poly)
    median = float(np.median(linear))
    norm_mag = 2.5 * np.log10(median)
    resid = (dmag - a[group] - design @ c)[used]
    g, wu, du = group[used], w[used], dmag[used]
    mean_e = np.bincount(g, wu * du, labels.size) / np.bincount(g, wu, labels.size)
    n_par = len(terms) + labels.size
    return LowFlatFit(
        flat=(linear / median).astype(np.float32), coeffs=c, terms=terms, shape=tuple(shape),
        norm_mag=norm_mag, exposures=labels, zp_offsets=a + norm_mag,
        rms=float(np.sqrt(np.mean(resid**2))),
        rms_before=float(np.sqrt(np.mean((du - mean_e[g]) ** 2))),
        chi2_reduced=float(np.sum(wu * resid**2) / max(used.sum() - n_par, 1)),
        n_used=int(used.sum()), used=used)


def apply_lowflat(image, lowflat) -> np.ndarray:
    """Divide an image by a low-frequency flat (float32).

    A variance image transforms as ``apply_lowflat(variance, lowflat**2)``.
    """
    return (np.asarray(image, np.float32) / np.asarray(lowflat, np.float32)).astype(np.float32)


def grid_medians(x, y, residual, shape, n: int = 4, min_count: int = 5) -> np.ndarray:
    """Median residual in each cell of an ``n x n`` grid over the quadrant.

    Parameters
    ----------
    x, y : array_like
        0-based pixel positions.
    residual : array_like
        Values to summarise (e.g. calibrated minus true magnitude), mag.
    shape : (int, int)
        ``(ny, nx)``.
    n : int
        Cells per side.
    min_count : int
        Cells with fewer finite values are NaN.

    Returns
    -------
    ndarray, shape (n, n)
        Indexed ``[row cell, column cell]``.
    """
    x, y, r = (np.asarray(a, float) for a in (x, y, residual))
    ny, nx = shape
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(r)
    cx = np.clip((x[ok] / nx * n).astype(int), 0, n - 1)
    cy = np.clip((y[ok] / ny * n).astype(int), 0, n - 1)
    cell, r = cy * n + cx, r[ok]
    out = np.full(n * n, np.nan)
    for k in range(n * n):
        vals = r[cell == k]
        if vals.size >= min_count:
            out[k] = np.median(vals)
    return out.reshape(n, n)


def grid_residual_structure(x, y, residual, shape, n: int = 4, *, relative: bool = False,
                            min_count: int = 5) -> float:
    """Largest ``|median residual|`` over the cells of an ``n x n`` grid, mag.

    With ``relative=True`` the overall median residual is subtracted first (pure structure);
    by default any global offset counts too. Empty cells are ignored.
    """
    cells = grid_medians(x, y, residual, shape, n, min_count)
    if relative:
        cells = cells - np.nanmedian(np.asarray(residual, float))
    return float(np.nanmax(np.abs(cells)))
