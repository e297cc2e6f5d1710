"""Empirical, spatially varying PSF model (oversampled pixel grid, like PSFEx / the ePSF).

The model is the *effective* PSF (what a point source puts in each pixel) tabulated on a grid
``oversample`` times finer than the pixels, covering offsets ``|u|, |v| <= half + 2`` pixels
from the source position. Each node value is a polynomial of degree ``degree`` in the
normalised quadrant position ``X = (x - x_centre) / scale``, ``Y = (y - y_centre) / scale``
(terms ``1, X, Y, X^2, XY, Y^2`` for degree 2). Between nodes the model is a cubic B-spline
interpolant, so sources are evaluated at any sub-pixel phase without resampling the data.

Normalisation: every evaluated stamp is scaled so that the model sums to 1 over its support
at that position and phase, so the PSF-fit flux is the flux within ``half + 2`` pixels;
:attr:`PSFModel.apcorr` converts it to the total flux within ``total_radius`` (30 px). It is
measured on the PSF stars exactly as :func:`zsds.core.psfphot.psf_photometry` measures
(same fit radius, same local sky: clipped mean of an annulus of the star-subtracted stamp),
against a 12 px aperture with the neighbours' pixels replaced by the model, plus the
wing from the support to ``total_radius`` (the tail of a Moffat profile fitted to the core).
``meta['model_error']`` is the relative scatter, beyond their noise, of the fitted fluxes of
stars left out of the model (5-fold cross-validation; PSF-model error, added to the flux
errors).

The model is built from isolated, bright, unsaturated stars of the aperture catalogue by
iterating (Anderson & King 2000): the star pixels, divided by the fitted fluxes, are binned
at their offsets onto the nodes, and the node values' polynomial coefficients are fitted to
the residuals of the current model; fluxes and positions are refitted with the new model.

Conventions: numpy ``[y, x]``, 0-based pixel coordinates (pixel centres at integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import sep
from astropy.io import fits
from scipy import ndimage, optimize
from scipy.spatial import cKDTree

from ..errors import AlgorithmError
from .extract import APER_RADII, FLAGS

__all__ = ["PSFModel", "fit_psf_model", "select_psf_stars", "poly_terms", "cutouts",
           "fit_flux_position", "annulus_sky", "ring_sky", "disc"]

_BAD_FOR_PSF = (FLAGS["OBJ_MERGED"] | FLAGS["OBJ_TRUNC"] | FLAGS["APER_TRUNC"]
                | FLAGS["APER_HASMASKED"] | FLAGS["APER_ALLMASKED"] | FLAGS["NEAR_EDGE"]
                | FLAGS["SATURATED"] | FLAGS["NEAR_BAD"])


def poly_terms(x, y, degree, x_centre, y_centre, scale):
    """Polynomial terms ``X^i Y^j`` (i + j <= degree, by total degree), shape (n, nterms)."""
    X = (np.asarray(x, np.float64) - x_centre) / scale
    Y = (np.asarray(y, np.float64) - y_centre) / scale
    cols = [X**(d - j) * Y**j for d in range(degree + 1) for j in range(d + 1)]
    return np.stack(cols, axis=-1)


@numba.njit(cache=True, inline="always")
def _bspline(t):
    w = np.empty(4)
    dw = np.empty(4)
    u = 1.0 - t
    w[0] = u * u * u / 6.0
    w[1] = (3.0 * t**3 - 6.0 * t * t + 4.0) / 6.0
    w[2] = (-3.0 * t**3 + 3.0 * t * t + 3.0 * t + 1.0) / 6.0
    w[3] = t**3 / 6.0
    dw[0] = -0.5 * u * u
    dw[1] = 1.5 * t * t - 2.0 * t
    dw[2] = -1.5 * t * t + t + 0.5
    dw[3] = 0.5 * t * t
    return w, dw


@numba.njit(cache=True)
def _render(coef, psum, p, dx, dy, half, s, with_grad, normalise):
    """Stamps (n, k, k) of the model and its derivatives w.r.t. the source x and y.

    Only the node rows and columns under the stamp are combined (cost ~ stamp area). With
    ``normalise`` each stamp is divided by the model's sum over all pixels of the support at
    that position and phase (from the per-phase node sums ``psum``, (nterms, s, s)).
    """
    n, nt = p.shape
    ng = coef.shape[1]
    c = (ng - 1) // 2
    k = 2 * half + 1
    out = np.zeros((n, k, k))
    gx = np.zeros((n, k, k))
    gy = np.zeros((n, k, k))
    grid = np.zeros((ng, ng))
    rows = np.empty((2, k, ng))
    for i in range(n):
        fy = c - s * dy[i]
        fx = c - s * dx[i]
        iy = int(np.floor(fy))
        ix = int(np.floor(fx))
        r0, r1 = max(iy - 1 - s * half, 0), min(iy + 3 + s * half, ng)
        q0, q1 = max(ix - 1 - s * half, 0), min(ix + 3 + s * half, ng)
        for a in range(r0, r1):
            for b in range(q0, q1):
                acc = 0.0
                for t in range(nt):
                    acc += p[i, t] * coef[t, a, b]
                grid[a, b] = acc
        wy, dwy = _bspline(fy - iy)
        wx, dwx = _bspline(fx - ix)
        for a in range(k):
            for col in range(q0, q1):
                v0 = 0.0
                v1 = 0.0
                for j in range(4):
                    r = iy - 1 + j + s * (a - half)
                    if 0 <= r < ng:
                        v0 += wy[j] * grid[r, col]
                        v1 += dwy[j] * grid[r, col]
                rows[0, a, col] = v0
                rows[1, a, col] = v1
        for a in range(k):
            for b in range(k):
                m = 0.0
                mx = 0.0
                my = 0.0
                for j in range(4):
                    q = ix - 1 + j + s * (b - half)
                    if 0 <= q < ng:
                        m += wx[j] * rows[0, a, q]
                        if with_grad:
                            mx += dwx[j] * rows[0, a, q]
                            my += wx[j] * rows[1, a, q]
                out[i, a, b] = m
                gx[i, a, b] = -s * mx
                gy[i, a, b] = -s * my
        if normalise:
            tot = 0.0
            tx = 0.0
            ty = 0.0
            for j in range(4):
                for jj in range(4):
                    acc = 0.0
                    for t in range(nt):
                        acc += p[i, t] * psum[t, (iy - 1 + j) % s, (ix - 1 + jj) % s]
                    tot += wy[j] * wx[jj] * acc
                    tx += wy[j] * dwx[jj] * acc
                    ty += dwy[j] * wx[jj] * acc
            if tot > 0:
                tx, ty = -s * tx / tot, -s * ty / tot
                for a in range(k):
                    for b in range(k):
                        gx[i, a, b] = (gx[i, a, b] - out[i, a, b] * tx) / tot
                        gy[i, a, b] = (gy[i, a, b] - out[i, a, b] * ty) / tot
                        out[i, a, b] /= tot
    return out, gx, gy


def cutouts(image, x, y, half, fill=0.0):
    """Stamps (n, 2 half + 1, 2 half + 1) around the nearest pixels to (x, y).

    Returns the stamps (the image's dtype), a bool array of pixels inside the image, and the
    integer centres ``xi, yi``; outside pixels are set to ``fill``.
    """
    img = np.asarray(image)
    xi = np.rint(np.asarray(x)).astype(np.int64).reshape(-1)
    yi = np.rint(np.asarray(y)).astype(np.int64).reshape(-1)
    k = 2 * int(half) + 1
    stamps = np.empty((xi.size, k, k), img.dtype)
    inside = np.empty((xi.size, k, k), bool)
    _gather_stamps(img, xi, yi, int(half), np.asarray(fill, img.dtype).reshape(1)[0], stamps, inside)
    return stamps, inside, xi, yi


@numba.njit(cache=True)
def _gather_stamps(image, xi, yi, half, fill, stamps, inside):
    ny, nx = image.shape
    k = 2 * half + 1
    for i in range(xi.size):
        for a in range(k):
            row = yi[i] + a - half
            row_in = 0 <= row < ny
            for b in range(k):
                col = xi[i] + b - half
                ok = row_in and 0 <= col < nx
                inside[i, a, b] = ok
                stamps[i, a, b] = image[row, col] if ok else fill


def disc(half, radius, inner=0.0):
    """Bool (k, k) mask of the pixels of a stamp with ``inner <= r <= radius`` from its centre."""
    g = np.arange(-half, half + 1)
    r2 = g[None, :] ** 2 + g[:, None] ** 2
    return (r2 <= radius**2) & (r2 >= inner**2)


@numba.njit(cache=True)
def _clip_rows(v, ok, nsigma, n_iter):
    """Clip each row of ``v`` in place of ``ok``, ``n_iter`` times: keep the ``ok`` values
    within ``nsigma`` x 1.4826 MAD of their median (all of them if the MAD is 0); a row with
    nothing ``ok`` stays so. Medians by selection (numba), not by sorting every row."""
    n, m = v.shape
    buf = np.empty(m)
    for i in range(n):
        for _ in range(n_iter):
            k = 0
            for j in range(m):
                if ok[i, j]:
                    buf[k] = v[i, j]
                    k += 1
            if k == 0:
                break
            med = np.median(buf[:k])
            k = 0
            for j in range(m):
                if ok[i, j]:
                    buf[k] = abs(v[i, j] - med)
                    k += 1
            sig = 1.4826 * np.median(buf[:k])
            limit = nsigma * sig if sig > 0 else np.inf
            for j in range(m):
                if ok[i, j] and not abs(v[i, j] - med) <= limit:
                    ok[i, j] = False


def annulus_sky(stamps, valid, r_in, r_out, *, nsigma=3.0, n_iter=3):
    """Local sky of each stamp: sigma-clipped mean of its pixels with ``r_in <= r <= r_out``.

    The stamps should hold the image with the sources' models subtracted (the annulus then
    needs no special care for the PSF wings). Clipping is about the median at ``nsigma``
    robust sigmas (MAD), ``n_iter`` times, then the mean of the kept pixels.

    Parameters
    ----------
    stamps : (n, k, k) array
        Residual stamps, DN, centred on the sources.
    valid : (n, k, k) bool array
        Usable pixels (inside the image, not masked).
    r_in, r_out : float
        Annulus radii, pixels (``r_out <= (k - 1) / 2``).

    Returns
    -------
    sky : (n,) array
        DN per pixel (0 where no pixel is usable).
    sky_err : (n,) array
        Error of the mean (clipped scatter over sqrt of the pixels kept); inf if none.
    """
    ring = disc((stamps.shape[1] - 1) // 2, r_out, r_in)
    return ring_sky(stamps[:, ring].astype(np.float64), valid[:, ring].copy(), nsigma=nsigma,
                    n_iter=n_iter)


def ring_sky(v, ok, *, nsigma=3.0, n_iter=3):
    """:func:`annulus_sky` of the annulus pixels already gathered: values ``v`` (n, m)
    float64 and usable flags ``ok`` (n, m), which the clipping updates in place."""
    _clip_rows(v, ok, float(nsigma), int(n_iter))
    n = ok.sum(1)
    sky = np.where(n > 0, (v * ok).sum(1) / np.maximum(n, 1), 0.0)
    with np.errstate(all="ignore"):
        std = np.sqrt(((v - sky[:, None]) ** 2 * ok).sum(1) / np.maximum(n - 1, 1))
    return sky, np.where(n > 2, std / np.sqrt(np.maximum(n, 1)), np.inf)


def fit_flux_position(data, weight, model, gx, gy, fit_positions):
    """One weighted least-squares step for every stamp: flux and (optionally) position.

    Linearises ``data ~ f P(x0 + ddx, y0 + ddy)`` around the current position.

    Parameters
    ----------
    data, weight : (n, k, k) arrays
        Background-subtracted data (DN) and fit weights (1/DN^2, 0 for unused pixels).
    model, gx, gy : (n, k, k) arrays
        The PSF at the current positions and its derivatives with respect to x and y.
    fit_positions : bool or bool array (n,)

    Returns
    -------
    flux : (n,) array
        DN in model units.
    ddx, ddy : (n,) arrays
        Position corrections, pixels (0 where positions are not fitted).
    """
    def dot(a, b):
        return np.einsum("nij,nij->n", weight * a, b)
    spp = dot(model, model)
    flux = dot(model, data) / np.where(spp > 0, spp, 1.0)
    fitp = np.broadcast_to(np.asarray(fit_positions), flux.shape) & (flux > 0)
    if not fitp.any():
        return flux, np.zeros_like(flux), np.zeros_like(flux)
    jx, jy = flux[:, None, None] * gx, flux[:, None, None] * gy
    basis = (model, jx, jy)
    A = np.stack([np.stack([dot(u, v) for v in basis], -1) for u in basis], -2)
    b = np.stack([dot(u, data) for u in basis], -1)
    A[~fitp] = np.eye(3)
    b[~fitp] = 0
    A = A + np.eye(3) * 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None]
    sol = np.linalg.solve(A, b[..., None])[..., 0]
    flux = np.where(fitp, sol[:, 0], flux)
    return flux, np.where(fitp, sol[:, 1], 0.0), np.where(fitp, sol[:, 2], 0.0)


@dataclass(frozen=True)
class PSFModel:
    """Spatially varying empirical PSF.

    Attributes
    ----------
    nodes : float64 array (nterms, ng, ng)
        Polynomial coefficients of the node values; node ``[j, i]`` is at the offset
        ``((i - c) / oversample, (j - c) / oversample)`` pixels, ``c = (ng - 1) / 2``.
    oversample : int
        Nodes per pixel.
    half : int
        Default stamp half-width, pixels (the support is ``half + 2``).
    degree : int
        Polynomial degree of the spatial variation.
    x_centre, y_centre, scale : float
        Normalisation of the position: ``X = (x - x_centre) / scale`` (pixels).
    apcorr : float
        Total flux (within ``total_radius``) over PSF-fit flux.
    meta : dict
        Build numbers: ``n_stars``, ``total_radius``, ``fwhm_centre``, ``model_error``
        (relative PSF-model error of the fluxes, cross-validated).
    """

    nodes: np.ndarray
    oversample: int
    half: int
    degree: int
    x_centre: float
    y_centre: float
    scale: float
    apcorr: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        coef = np.stack([ndimage.spline_filter(n, order=3, mode="grid-constant") for n in self.nodes])
        s, ng = self.oversample, coef.shape[1]
        psum = np.zeros((len(coef), s, s))
        for p in range(s):
            for q in range(s):
                psum[:, p, q] = coef[:, p::s, q::s].sum((1, 2))
        object.__setattr__(self, "_coef", np.ascontiguousarray(coef, np.float64))
        object.__setattr__(self, "_psum", psum)

    def terms(self, x, y):
        """Polynomial terms at positions (x, y), shape (n, nterms)."""
        return poly_terms(x, y, self.degree, self.x_centre, self.y_centre, self.scale)

    def evaluate(self, x, y, half=None, *, gradient=False, xi=None, yi=None, normalise=True):
        """PSF stamps at 0-based positions (x, y).

        Stamp ``i`` is centred on the pixel ``(yi_i, xi_i)`` (default the nearest pixel,
        ``(rint(y_i), rint(x_i))``; offsets up to 1.5 px are supported); its values are the
        fraction of the source flux in each pixel: with ``normalise`` (default) each stamp is
        scaled so that the model summed over all pixels of its support (``half + 2``) is exactly 1
        at that position and phase (the polynomial need not conserve it, e.g. at the corners),
        so a stamp of the default ``half`` sums to ~1.

        Returns
        -------
        stamps : (n, 2 half + 1, 2 half + 1) float64
        gx, gy : same shape, only when ``gradient``
            Derivatives of the stamps with respect to the source x and y (1/pixel).
        """
        x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
        half = self.half if half is None else int(half)
        dx = x - (np.rint(x) if xi is None else xi)
        dy = y - (np.rint(y) if yi is None else yi)
        m, gx, gy = _render(self._coef, self._psum, self.terms(x, y), dx, dy, half, self.oversample,
                            gradient, normalise)
        return (m, gx, gy) if gradient else m

    def fit_radius(self):
        """Radius (pixels) of the PSF-fit disc: ``meta['fit_radius']``, else max(3, 1.5 FWHM)."""
        if "fit_radius" in self.meta:
            return float(self.meta["fit_radius"])
        fwhm = self.meta.get("fwhm_centre") or float(self.fwhm_at(self.x_centre, self.y_centre)[0])
        return max(3.0, 1.5 * fwhm)

    def centre_stamp(self, half=None):
        """The PSF at the quadrant centre (``x_centre, y_centre``), zero phase."""
        return self.evaluate(self.x_centre, self.y_centre, half)[0]

    def node_grid(self, x, y):
        """Node values (ng, ng) at one position."""
        return np.tensordot(self.terms([x], [y])[0], self.nodes, axes=1)

    def fwhm_at(self, x, y, step=0.1):
        """FWHM (pixels) at (x, y): ``2 sqrt(A / pi)`` of the area A above half maximum.

        For an elliptical profile this is the geometric mean of the axes' FWHMs.
        """
        x, y = np.atleast_1d(x), np.atleast_1d(y)
        out = np.empty(len(x))
        ng = self.nodes.shape[1]
        c = (ng - 1) / 2
        g = np.arange(-(self.half + 1), self.half + 1 + 1e-9, step)
        gy, gx = np.meshgrid(c + self.oversample * g, c + self.oversample * g, indexing="ij")
        for i, (xx, yy) in enumerate(zip(x, y)):
            coef = np.tensordot(self.terms([xx], [yy])[0], self._coef, axes=1)
            fine = ndimage.map_coordinates(coef, [gy, gx], order=3, prefilter=False, mode="constant")
            out[i] = 2 * np.sqrt(np.sum(fine > fine.max() / 2) * step**2 / np.pi)
        return out

    def to_fits(self) -> fits.HDUList:
        """Serialise: primary header with the parameters, ``NODES`` cube (nterms, ng, ng)."""
        hdr = fits.Header()
        hdr["OVERSAMP"] = (self.oversample, "PSF nodes per pixel")
        hdr["PSFHALF"] = (self.half, "default stamp half-width [pix]")
        hdr["PSFDEG"] = (self.degree, "polynomial degree of spatial variation")
        hdr["PSFXC"] = (self.x_centre, "X = (x - PSFXC) / PSFSCALE, x 0-based [pix]")
        hdr["PSFYC"] = (self.y_centre, "Y = (y - PSFYC) / PSFSCALE, y 0-based [pix]")
        hdr["PSFSCALE"] = (self.scale, "position normalisation [pix]")
        hdr["APCOR"] = (self.apcorr, "total / PSF-fit flux")
        for k, v in self.meta.items():
            hdr[f"HIERARCH {k.upper()}"] = v
        terms = [f"X^{d - j} Y^{j}" for d in range(self.degree + 1) for j in range(d + 1)]
        nh = fits.ImageHDU(self.nodes.astype(np.float32), name="NODES")
        for i, t in enumerate(terms):
            nh.header[f"TERM{i}"] = (t, f"polynomial term of plane {i}")
        return fits.HDUList([fits.PrimaryHDU(header=hdr), nh])

    @classmethod
    def from_fits(cls, hdul) -> "PSFModel":
        """Inverse of :meth:`to_fits`."""
        h = hdul[0].header
        keys = ("N_STARS", "TOTAL_RADIUS", "FWHM_CENTRE", "FIT_RADIUS", "SKY_R_IN", "SKY_R_OUT",
                "MODEL_ERROR")
        meta = {k.lower(): h[k] for k in keys if k in h}
        return cls(np.asarray(hdul["NODES"].data, np.float64), int(h["OVERSAMP"]), int(h["PSFHALF"]),
                   int(h["PSFDEG"]), float(h["PSFXC"]), float(h["PSFYC"]), float(h["PSFSCALE"]),
                   float(h["APCOR"]), meta)


def select_psf_stars(cat, shape, half, *, snr_min=50.0, isolation=None, max_stars=300,
                     peak_max=None, neighbour_frac=0.01, min_wanted=20):
    """Indices of isolated, bright, unsaturated point sources in an aperture catalogue.

    Stars: ``class_star > 0.9`` and stellarity within 10% of 1; S/N in the 5.66 px aperture
    above ``snr_min``; none of the bits of saturation, edge, bad pixels, blending; at least
    ``half + 2`` pixels from the border; no other object within ``isolation`` pixels
    (default ``half``) brighter than ``neighbour_frac`` of the star, and none at all within
    4 pixels. In crowded fields, where fewer than ``min_wanted`` stars pass, the neighbour
    limit is relaxed to 5% and then 20% (a faint neighbour only touches the PSF wings), and
    in sparse fields the S/N limit to 20. Only then: neighbours' light in the stamps makes
    the model, and so every PSF flux, vary from image to image (with 40 instead of 20 the
    relaxed selection doubled the epoch-to-epoch scatter of bright stars on 512-px
    quadrants, 8 -> 16 mmag); fewer clean stars give a simpler model instead
    (:func:`_sampling_for`).
    The brightest ``max_stars`` are returned.
    """
    for snr, frac in ((snr_min, neighbour_frac), (snr_min, 0.05), (snr_min, 0.2),
                      (min(snr_min, 20.0), 0.2)):
        idx = _psf_star_candidates(cat, shape, half, snr, isolation, peak_max, frac)
        if len(idx) >= min_wanted:
            break
    return idx[:max_stars]


def _psf_star_candidates(cat, shape, half, snr_min, isolation, peak_max, frac):
    """Indices (brightest first) of the stars passing :func:`select_psf_stars` at ``frac``."""
    ny, nx = shape
    iap = APER_RADII.index(5.66)
    f = np.asarray(cat["flux_aper"][:, iap])
    ok = (np.asarray(cat["flags"]) & _BAD_FOR_PSF) == 0
    stellarity = np.asarray(cat["stellarity"], float)
    if np.isfinite(stellarity).any():  # no stellar locus in a sparse field: no class cut
        ok &= (np.asarray(cat["class_star"]) > 0.9) & (np.abs(stellarity - 1) < 0.1)
    ok &= f > snr_min * np.asarray(cat["flux_aper_err"][:, iap])
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
    ok &= (x > half + 2) & (x < nx - half - 3) & (y > half + 2) & (y < ny - half - 3)
    if peak_max is not None:
        ok &= np.asarray(cat["peak"]) < peak_max
    tree = cKDTree(np.c_[x, y])
    pairs = tree.query_pairs(half if isolation is None else isolation, output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.hypot(x[i] - x[j], y[i] - y[j])
        fl = np.abs(np.asarray(cat["flux_auto"]))
        spoil_i = (fl[j] > frac * f[i]) | (d < 4)
        spoil_j = (fl[i] > frac * f[j]) | (d < 4)
        ok[i[spoil_i]] = False
        ok[j[spoil_j]] = False
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-f[idx])]


@numba.njit(cache=True)
def _normal_equations(resid, omega, pterms, jy, jx, ng):
    """Per node ``jy * ng + jx``: the weighted normal matrix ``sum w p p^T``, right-hand side
    ``sum w p r`` and sample count over the samples (star, i, j) with ``omega > 0`` on the
    grid; ``p`` = the star's polynomial terms. Summed in sample order (as ``np.bincount``)."""
    n, ki, kj = resid.shape
    nt = pterms.shape[1]
    nn = ng * ng
    A = np.zeros((nn, nt, nt))
    rhs = np.zeros((nn, nt))
    count = np.zeros(nn, np.int64)
    for s in range(n):
        for i in range(ki):
            for j in range(kj):
                y, x, w = jy[s, i, j], jx[s, i, j], omega[s, i, j]
                if not (w > 0 and 0 <= y < ng and 0 <= x < ng):
                    continue
                node = y * ng + x
                count[node] += 1
                for a in range(nt):
                    wa = w * pterms[s, a]
                    rhs[node, a] += wa * resid[s, i, j]
                    for b in range(a, nt):
                        A[node, a, b] += wa * pterms[s, b]
    for a in range(nt):
        for b in range(a + 1, nt):
            A[:, b, a] = A[:, a, b]
    return A, rhs, count


def _bin_update(resid, omega, pterms, jy, jx, ng, min_samples):
    """Per node, weighted LS polynomial fit of the residuals: the node corrections."""
    nt = pterms.shape[1]
    A, rhs, count = _normal_equations(resid, omega, np.ascontiguousarray(pterms, np.float64),
                                      jy, jx, ng)
    few = count < min_samples
    A[few, 1:, :] = 0
    A[few, :, 1:] = 0
    rhs[few, 1:] = 0
    diag = np.einsum("nii->n", A)
    A += np.eye(nt) * (1e-9 * diag + 1e-300)[:, None, None]
    A[few, 1:, 1:] += np.eye(nt - 1)
    empty = (A[:, 0, 0] <= 1e-299) | (count < 5)
    A[empty] = np.eye(nt)
    rhs[empty] = 0
    return np.linalg.solve(A, rhs[..., None])[..., 0].T.reshape(nt, ng, ng)


def _normalise(nodes, s):
    """No pedestal (outer ring of nodes at zero); unit integral of the constant term, zero
    integral of the others."""
    nodes = nodes.copy()
    ng = nodes.shape[1]
    g = np.arange(ng) - (ng - 1) / 2
    r = np.hypot(g[None, :], g[:, None])
    ring = (r > (ng - 1) / 2 - 2 * s) & (r <= (ng - 1) / 2)
    nodes -= nodes[:, ring].mean(axis=1)[:, None, None] * (r <= (ng - 1) / 2)[None]
    nodes[:, r > (ng - 1) / 2] = 0.0
    total = nodes[0].sum()
    if not (np.isfinite(nodes).all() and total > 0):
        raise AlgorithmError("PSF model has no positive flux (too few star samples per node)",
                             node_sum=float(total), oversample=s)
    nodes[0] *= s * s / total
    for t in range(1, len(nodes)):
        nodes[t] -= nodes[t].sum() / (s * s) * nodes[0]
    return nodes


def _initial_nodes(nterms, ng, s, sigma):
    """Starting model: a round Gaussian of ``sigma`` pixels (constant term only)."""
    g = (np.arange(ng) - (ng - 1) / 2) / s
    nodes = np.zeros((nterms, ng, ng))
    nodes[0] = np.exp(-(g[None, :] ** 2 + g[:, None] ** 2) / (2 * sigma**2))
    return nodes * (s * s / nodes[0].sum())


def _sampling_for(n_stars, oversample, degree):
    """Oversampling and degree that ``n_stars`` constrain.

    With ``s`` nodes per pixel a node is sampled by ~``n_stars / s^2`` stars (those of the
    right sub-pixel phase); below 10 per node the grid would have holes, so ``s`` is lowered.
    """
    s = int(oversample)
    while s > 1 and n_stars < 10 * s * s:
        s -= 1
    return s, _degree_for(n_stars, degree)


def _wing_fraction(model, total_radius, r_fit=9.0):
    """Flux beyond the model's support out to ``total_radius``, as a fraction of the flux
    within the support (at most 1%).

    As DAOPHOT's analytic component: a Moffat profile ``A (1 + r^2 / alpha^2)^-beta`` is
    fitted (least squares) to the pixels of the centre PSF within ``r_fit`` pixels, where
    the empirical model is well measured (dominated by the core), and its tail from the
    support radius ``half + 2`` to ``total_radius`` is integrated analytically. A power law
    fitted to the faint model wings alone (a few DN per star at 5-9 px) is noise-driven and
    was found to reach the 1% cap on quadrants with ~150 PSF stars.
    """
    r0 = model.half + 2
    if total_radius <= r0:
        return 0.0
    stamp = model.centre_stamp(r0)
    g = np.arange(-r0, r0 + 1)
    r2 = (g[None, :] ** 2 + g[:, None] ** 2).ravel().astype(np.float64)
    sel = r2 <= r_fit**2
    r2, val = r2[sel], stamp.ravel()[sel]

    def resid(p):
        amp, alpha, beta = p
        return amp * (1 + r2 / alpha**2) ** (-beta) - val
    fwhm = model.meta.get("fwhm_centre") or 2.0
    sol = optimize.least_squares(resid, [float(val.max()), 0.8 * fwhm, 3.0],
                                 bounds=([0, 0.05, 1.01], [np.inf, 50.0, 30.0]))
    _, alpha, beta = sol.x
    if not sol.success:
        return 0.0

    def outside(r):
        return (1 + (r / alpha) ** 2) ** (1 - beta)
    frac = (outside(r0) - outside(total_radius)) / max(1 - outside(r0), 1e-12)
    return float(np.clip(frac, 0.0, 0.01))


def _calibrate_fluxes(data, valid, skyvar, m, flux, fit_radius, annulus, aperture=12.0):
    """PSF stars measured as :func:`zsds.core.psfphot.psf_photometry` does, and in a big aperture.

    Local sky: :func:`annulus_sky` of ``data - flux m``; fit: flux only, within
    ``fit_radius``, weights ``1 / skyvar``; aperture: radius ``aperture`` (model for the
    unusable pixels, e.g. those of neighbours), divided by the model's fraction in it.

    Returns
    -------
    ratio : (n,) array
        Aperture (support) flux over fitted flux.
    rel_err : (n,) array
        Expected relative noise of ``ratio``.
    """
    h = (data.shape[1] - 1) // 2
    sky, sky_err = annulus_sky(data - flux[:, None, None] * m, valid, *annulus)
    d = data - sky[:, None, None]
    w = np.where(valid & disc(h, fit_radius)[None], 1.0 / skyvar, 0.0)
    spp = (w * m * m).sum((1, 2))
    f_fit = (w * m * d).sum((1, 2)) / np.where(spp > 0, spp, np.nan)
    ap = disc(h, aperture)[None]
    f_ap = np.where(valid & ap, d, f_fit[:, None, None] * m).sum((1, 2)) / (m * ap).sum((1, 2))
    var_fit = (w * w * m * m * skyvar).sum((1, 2)) / spp**2
    var_ap = (skyvar * ap).sum((1, 2)) + (ap.sum() * sky_err) ** 2
    return f_ap / f_fit, np.sqrt(var_fit + var_ap) / np.abs(f_fit)


def _free_of_neighbours(cat, idx, xi, yi, half, radius):
    """(n, k, k) bool: stamp pixels not closer to another catalogue object than to the star,
    or farther than ``radius`` from it (so faint neighbours do not enter the apertures)."""
    pos = np.c_[np.asarray(cat["x"], float), np.asarray(cat["y"], float)]
    g = np.arange(-half, half + 1)
    px = np.broadcast_to(xi[:, None, None] + g[None, None, :], (len(idx), len(g), len(g)))
    py = np.broadcast_to(yi[:, None, None] + g[None, :, None], px.shape)
    dist, near = cKDTree(pos).query(np.c_[px.ravel(), py.ravel()])
    own = np.repeat(idx, len(g) ** 2)
    d_own = np.hypot(px.ravel() - pos[own, 0], py.ravel() - pos[own, 1])
    bad = (near != own) & (dist < radius) & (dist < d_own)
    return ~bad.reshape(px.shape)


def _model_error(ratio, rel_err):
    """Relative error ``k`` making the robust scatter of the ratios consistent with
    ``sqrt(rel_err^2 + k^2)`` (0 if the noise explains it)."""
    dev = ratio - np.median(ratio)

    def scatter(k):
        z = dev / np.sqrt(rel_err**2 + k**2)
        return 1.4826 * np.median(np.abs(z))
    if scatter(0.0) <= 1:
        return 0.0
    lo, hi = 0.0, 0.2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if scatter(mid) > 1 else (lo, mid)
    return float(hi)


def _degree_for(n_stars, degree):
    """Lower the degree when there are too few stars to constrain it."""
    for d, need in ((2, 20), (1, 8)):
        if degree >= d and n_stars >= need:
            return d
    return 0


def fit_psf_model(image, background_rms, cat, mask=None, *, stamp_half: int = 12,
                  oversample: int = 2, degree: int = 2, gain: float | None = None,
                  max_stars: int = 300, n_iter: int = 7, min_stars: int = 5,
                  total_radius: float = 30.0, stars=None) -> PSFModel:
    """Build the PSF model from the stars of an aperture catalogue.

    Parameters
    ----------
    image : 2-D array
        **Background-subtracted** calibrated image, DN.
    background_rms : 2-D array
        Background RMS, DN.
    cat : astropy Table
        Aperture catalogue of :func:`zsds.core.extract.extract_sources`.
    mask : 2-D bool array, optional
        Bad pixels (ignored).
    stamp_half : int
        Half-width of the star stamps, pixels.
    oversample : int
        Model nodes per pixel (2 is right for 1.5-3 px FWHM).
    degree : int
        Polynomial degree of the spatial variation (lowered to 1 below 20 stars, 0 below 8).
        ``oversample`` is lowered too when there are fewer than ``10 oversample^2`` stars, so
        that every node is sampled.
    gain : float, optional
        e-/DN, adds the stars' Poisson noise to the weights.
    max_stars, n_iter, min_stars : int
        Selection and iteration controls.
    total_radius : float
        Radius (pixels) of the "total" flux of the aperture correction.
    stars : int array, optional
        Catalogue rows to use instead of :func:`select_psf_stars`.

    Returns
    -------
    PSFModel

    Raises
    ------
    AlgorithmError
        If fewer than ``min_stars`` stars are usable (found, or left after the rejections;
        ``metadata['n_stars']``), or the model has no positive flux.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    rms = np.ascontiguousarray(background_rms, dtype=np.float32)
    idx = select_psf_stars(cat, img.shape, stamp_half, max_stars=max_stars) if stars is None else np.asarray(stars)
    if len(idx) < min_stars:
        raise AlgorithmError(f"only {len(idx)} PSF stars found, {min_stars} required",
                             n_found=len(idx), n_required=min_stars)
    ny, nx = img.shape
    s, deg = _sampling_for(len(idx), oversample, degree)
    h = stamp_half
    ng = 2 * s * (h + 2) + 1
    c = (ng - 1) // 2
    x0, y0 = np.asarray(cat["x"], float)[idx], np.asarray(cat["y"], float)[idx]
    data, inside, xi, yi = cutouts(img, x0, y0, h)
    skyvar = cutouts(rms, x0, y0, h, fill=1.0)[0].astype(np.float64) ** 2
    var = skyvar + (np.clip(data, 0, None) / gain if gain else 0.0)
    valid = inside if mask is None else inside & ~cutouts(np.asarray(mask, bool), x0, y0, h, fill=True)[0]
    weight = np.where(valid, 1.0 / var, 0.0)
    sigma = float(np.median(np.sqrt(np.asarray(cat["a"], float)[idx] * np.asarray(cat["b"], float)[idx])))
    nt = len(poly_terms([0.0], [0.0], deg, 0, 0, 1)[0])
    model = PSFModel(_initial_nodes(nt, ng, s, sigma if np.isfinite(sigma) and sigma > 0.3 else 1.0),
                     s, h, deg, (nx - 1) / 2, (ny - 1) / 2, max(nx, ny) / 2)
    flux_ap = np.asarray(cat["flux_aper"][:, APER_RADII.index(5.66)], float)[idx]
    x, y = x0.copy(), y0.copy()
    g = np.arange(-h, h + 1)
    use = np.ones(len(idx), bool)
    folds = _folds(len(idx))

    def update(model, train):
        resid = data / np.where(train, flux, 1.0)[:, None, None] - m
        omega = weight * flux[:, None, None] ** 2 * train[:, None, None]
        jy = np.rint(c + s * (g[None, :, None] - (y - yi)[:, None, None])).astype(np.int64)
        jx = np.rint(c + s * (g[None, None, :] - (x - xi)[:, None, None])).astype(np.int64)
        jy, jx = np.broadcast_to(jy, data.shape), np.broadcast_to(jx, data.shape)
        delta = _bin_update(resid, omega, model.terms(x, y), jy, jx, ng, min_samples=3 * nt)
        return PSFModel(_normalise(model.nodes + delta, s), s, h, deg, model.x_centre,
                        model.y_centre, model.scale)

    for it in range(n_iter):
        if it == 0:
            flux, m = flux_ap, model.evaluate(x, y, h, xi=xi, yi=yi)
        else:
            m, gx, gy = model.evaluate(x, y, h, gradient=True, xi=xi, yi=yi)
            flux, ddx, ddy = fit_flux_position(data, weight, m, gx, gy, it >= 2)
            x, y = x + np.clip(ddx, -0.5, 0.5), y + np.clip(ddy, -0.5, 0.5)
            use &= (flux > 0.5 * flux_ap) & (flux < 2 * flux_ap) & (np.hypot(x - x0, y - y0) < 1)
            _require(use, min_stars, it)
            x, y = x - np.mean((x - x0)[use]), y - np.mean((y - y0)[use])
            m = model.evaluate(x, y, h, xi=xi, yi=yi)
            chi = (data - flux[:, None, None] * m) ** 2 * weight
            floor = (0.03 * flux[:, None, None] * m) ** 2
            weight = np.where(chi / (1 + floor * weight) > 25, 0.0, weight)
        if it >= 3:
            red = chi.sum((1, 2)) / np.maximum((weight > 0).sum((1, 2)), 1)
            med = np.median(red[use])
            use &= red < med + 5 * 1.4826 * np.median(np.abs(red[use] - med)) + 1e-9
            _require(use, min_stars, it)
        model = update(model, use)
    m = model.evaluate(x, y, h, xi=xi, yi=yi)
    flux = fit_flux_position(data, weight, m, m, m, False)[0]
    fwhm = float(model.fwhm_at(model.x_centre, model.y_centre)[0])
    fit_radius = max(3.0, 1.5 * fwhm)
    annulus = (max(2.0 * fwhm, fit_radius + 1.0), float(h))
    free = _free_of_neighbours(cat, idx, xi, yi, h, radius=max(5.0, 2.5 * fwhm))

    def calibrate(sel, aperture, m_sel, flux_sel):
        return _calibrate_fluxes(data[sel], (valid & free)[sel], skyvar[sel], m_sel, flux_sel,
                                 fit_radius, annulus, aperture=aperture)
    model_error = _cross_validated_error(model, update, calibrate, use, folds, x, y, xi, yi, h, data,
                                         weight, min_stars)
    ratio, _ = calibrate(use, float(h), m[use], flux[use])
    ok = np.isfinite(ratio)
    _require(ok, min_stars, n_iter)
    bright = ok & (flux[use] >= np.median(flux[use][ok]))
    apcorr = float(np.median(ratio[bright])) * (1 + _wing_fraction(model, total_radius))
    meta = {"n_stars": int(use.sum()), "total_radius": total_radius, "fwhm_centre": fwhm,
            "fit_radius": fit_radius, "sky_r_in": annulus[0], "sky_r_out": annulus[1],
            "model_error": model_error}
    return PSFModel(model.nodes, s, h, deg, model.x_centre, model.y_centre, model.scale, apcorr, meta)


def _cross_validated_error(model, update, calibrate, use, folds, x, y, xi, yi, h, data, weight,
                           min_stars):
    """Relative PSF-model error of the fluxes, measured out of sample (k-fold).

    The model's own stars are fitted too well to show its error (on a 1024-px quadrant with
    ~170 stars, 0.3% in sample against ~0.8% on other stars). For each fold, one node update
    from the final model without the fold's stars gives the model without them (the node
    fit is a linear least-squares fit); their fluxes fitted with it, against their 8-px
    aperture fluxes, give the error (:func:`_model_error`). Without folds (too few stars),
    the stars in sample are used.
    """
    m_cv = model.evaluate(x, y, h, xi=xi, yi=yi)
    for f in np.unique(folds[folds >= 0]):
        test = use & (folds == f)
        if test.any():
            m_cv[test] = update(model, use & (folds != f)).evaluate(x[test], y[test], h, xi=xi[test], yi=yi[test])
    flux_cv = fit_flux_position(data[use], weight[use], m_cv[use], m_cv[use], m_cv[use], False)[0]
    ratio8, rel_err = calibrate(use, min(8.0, float(h)), m_cv[use], flux_cv)
    ok = np.isfinite(ratio8) & np.isfinite(rel_err) & (flux_cv > 0)
    return _model_error(ratio8[ok], rel_err[ok]) if ok.sum() >= min(min_stars, 3) else 0.0


def _folds(n, n_folds=5):
    """Fold of each star (by brightness rank), or -1 for all (no cross-validation) when a
    fold would leave fewer than 20 stars to fit or hold fewer than 5."""
    if n - int(np.ceil(n / n_folds)) < 20 or n // n_folds < 5:
        return np.full(n, -1)
    return np.arange(n) % n_folds


def _require(use, min_stars, it):
    """Raise when fewer than ``min_stars`` stars survive the rejections."""
    if use.sum() < min_stars:
        raise AlgorithmError(f"only {int(use.sum())} PSF stars left after rejection (iteration {it}), "
                             f"{min_stars} required", n_stars=int(use.sum()), n_required=min_stars)
