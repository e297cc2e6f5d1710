"""Empirical, spatially varying PSF model (oversampled pixel grid, like PSFEx / the ePSF).

The model is the *effective* PSF (what a point source puts in each pixel) tabulated on a grid
``oversample`` times finer than the pixels, covering offsets ``|u|, |v| <= half + 2`` pixels
from the source position. Each node value is a polynomial of degree ``degree`` in the
normalised quadrant position ``X = (x - x_centre) / scale``, ``Y = (y - y_centre) / scale``
(terms ``1, X, Y, X^2, XY, Y^2`` for degree 2). Between nodes the model is a cubic B-spline
interpolant, so sources are evaluated at any sub-pixel phase without resampling the data.

Normalisation: the model integrates to 1 over its support at every position, so the PSF-fit
flux is the flux within ``half + 2`` pixels; :attr:`PSFModel.apcorr` (measured on the PSF
stars by the curve of growth) converts it to the total flux within ``total_radius`` (30 px).

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
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import AlgorithmError
from .extract import APER_RADII, FLAGS

__all__ = ["PSFModel", "fit_psf_model", "select_psf_stars", "poly_terms", "cutouts",
           "fit_flux_position"]

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
def _render(coef, p, dx, dy, half, s, with_grad):
    """Stamps (n, k, k) of the model and its derivatives w.r.t. the source x and y."""
    n, nt = p.shape
    ng = coef.shape[1]
    c = (ng - 1) // 2
    k = 2 * half + 1
    out = np.zeros((n, k, k))
    gx = np.zeros((n, k, k))
    gy = np.zeros((n, k, k))
    grid = np.empty((ng, ng))
    rows = np.empty((2, k, ng))
    for i in range(n):
        for a in range(ng):
            for b in range(ng):
                acc = 0.0
                for t in range(nt):
                    acc += p[i, t] * coef[t, a, b]
                grid[a, b] = acc
        fy = c - s * dy[i]
        fx = c - s * dx[i]
        iy = int(np.floor(fy))
        ix = int(np.floor(fx))
        wy, dwy = _bspline(fy - iy)
        wx, dwx = _bspline(fx - ix)
        for a in range(k):
            for col in range(ng):
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
    return out, gx, gy


def cutouts(image, x, y, half, fill=0.0):
    """Stamps (n, 2 half + 1, 2 half + 1) around the nearest pixels to (x, y).

    Returns the stamps, a bool array of pixels inside the image, and the integer centres
    ``xi, yi``; outside pixels are set to ``fill``.
    """
    ny, nx = image.shape
    xi = np.rint(np.asarray(x)).astype(np.int64)
    yi = np.rint(np.asarray(y)).astype(np.int64)
    g = np.arange(-half, half + 1)
    yy = yi[:, None, None] + g[None, :, None]
    xx = xi[:, None, None] + g[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    vals = image[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
    return np.where(inside, vals, fill), inside, xi, yi


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
        Build numbers: ``n_stars``, ``total_radius``, ``fwhm_centre``.
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
        object.__setattr__(self, "_coef", np.ascontiguousarray(coef, np.float64))

    def terms(self, x, y):
        """Polynomial terms at positions (x, y), shape (n, nterms)."""
        return poly_terms(x, y, self.degree, self.x_centre, self.y_centre, self.scale)

    def evaluate(self, x, y, half=None, *, gradient=False, xi=None, yi=None):
        """PSF stamps at 0-based positions (x, y).

        Stamp ``i`` is centred on the pixel ``(yi_i, xi_i)`` (default the nearest pixel,
        ``(rint(y_i), rint(x_i))``; offsets up to 1.5 px are supported); its values are the
        fraction of the source flux in each pixel (unit integral over the model support, so a
        stamp of the default ``half`` sums to ~1).

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
        m, gx, gy = _render(self._coef, self.terms(x, y), dx, dy, half, self.oversample, gradient)
        return (m, gx, gy) if gradient else m

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
        meta = {k.lower(): h[k] for k in ("N_STARS", "TOTAL_RADIUS", "FWHM_CENTRE") if k in h}
        return cls(np.asarray(hdul["NODES"].data, np.float64), int(h["OVERSAMP"]), int(h["PSFHALF"]),
                   int(h["PSFDEG"]), float(h["PSFXC"]), float(h["PSFYC"]), float(h["PSFSCALE"]),
                   float(h["APCOR"]), meta)


def select_psf_stars(cat, shape, half, *, snr_min=50.0, isolation=None, max_stars=300,
                     peak_max=None):
    """Indices of isolated, bright, unsaturated point sources in an aperture catalogue.

    Stars: ``class_star > 0.9`` and stellarity within 10% of 1; S/N in the 5.66 px aperture
    above ``snr_min``; none of the bits of saturation, edge, bad pixels, blending; at least
    ``half + 2`` pixels from the border; no other object within ``isolation`` pixels
    (default ``half``) brighter than 1% of the star, and none at all within 4 pixels.
    The brightest ``max_stars`` are returned.
    """
    ny, nx = shape
    iap = APER_RADII.index(5.66)
    f = np.asarray(cat["flux_aper"][:, iap])
    ok = ((np.asarray(cat["flags"]) & _BAD_FOR_PSF) == 0) & (np.asarray(cat["class_star"]) > 0.9)
    ok &= np.abs(np.asarray(cat["stellarity"]) - 1) < 0.1
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
        spoil_i = (fl[j] > 0.01 * f[i]) | (d < 4)
        spoil_j = (fl[i] > 0.01 * f[j]) | (d < 4)
        ok[i[spoil_i]] = False
        ok[j[spoil_j]] = False
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-f[idx])][:max_stars]


def _bin_update(resid, omega, pterms, jy, jx, ng, min_samples):
    """Per node, weighted LS polynomial fit of the residuals: the node corrections."""
    nt = pterms.shape[1]
    node = (jy * ng + jx).ravel()
    good = (omega.ravel() > 0) & (jy.ravel() >= 0) & (jy.ravel() < ng) & (jx.ravel() >= 0) & (jx.ravel() < ng)
    node, w, r = node[good], omega.ravel()[good], resid.ravel()[good]
    pt = np.broadcast_to(pterms[:, None, None, :], resid.shape + (nt,)).reshape(-1, nt)[good]
    nn = ng * ng
    A = np.empty((nn, nt, nt))
    for a in range(nt):
        for b in range(a, nt):
            A[:, a, b] = A[:, b, a] = np.bincount(node, w * pt[:, a] * pt[:, b], minlength=nn)
    rhs = np.stack([np.bincount(node, w * pt[:, a] * r, minlength=nn) for a in range(nt)], -1)
    count = np.bincount(node, minlength=nn)
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
    nodes[0] *= s * s / nodes[0].sum()
    for t in range(1, len(nodes)):
        nodes[t] -= nodes[t].sum() / (s * s) * nodes[0]
    return nodes


def _aperture_correction(image, rms, x, y, flux, sky, total_radius):
    """Total (within ``total_radius``) over model flux, from the curve of growth of the stars.

    Median ratios of the aperture fluxes (corrected for the star's local sky ``sky``, DN/px)
    to the model fluxes at 8, 11.3 and 16 px, over the brighter half of the stars (where a
    small sky error matters least); the growth beyond 16 px is extrapolated as a geometric
    series in steps of sqrt(2) in radius (a power-law wing), at most 1%.
    """
    radii = (8.0, 11.3, 16.0)
    bright = flux >= np.median(flux)
    g = [np.median((sep.sum_circle(image, x, y, r, err=rms)[0] - sky * np.pi * r**2)[bright] / flux[bright])
         for r in radii]
    d1, d2 = g[1] - g[0], g[2] - g[1]
    if not (d1 > 0 and 0 < d2 < 0.8 * d1):
        return float(g[2])
    q = d2 / d1
    steps = np.log(total_radius / radii[2]) / np.log(np.sqrt(2))
    return float(g[2] + min(d2 * q * (1 - q**steps) / (1 - q), 0.01))


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
        If fewer than ``min_stars`` stars are usable.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    rms = np.ascontiguousarray(background_rms, dtype=np.float32)
    idx = select_psf_stars(cat, img.shape, stamp_half, max_stars=max_stars) if stars is None else np.asarray(stars)
    if len(idx) < min_stars:
        raise AlgorithmError(f"only {len(idx)} PSF stars found, {min_stars} required",
                             n_found=len(idx), n_required=min_stars)
    ny, nx = img.shape
    deg = _degree_for(len(idx), degree)
    s, h = oversample, stamp_half
    ng = 2 * s * (h + 2) + 1
    c = (ng - 1) // 2
    x0, y0 = np.asarray(cat["x"], float)[idx], np.asarray(cat["y"], float)[idx]
    data, inside, xi, yi = cutouts(img, x0, y0, h)
    var = cutouts(rms, x0, y0, h, fill=1.0)[0].astype(np.float64) ** 2
    if gain:
        var = var + np.clip(data, 0, None) / gain
    weight = np.where(inside, 1.0 / var, 0.0)
    if mask is not None:
        weight = np.where(cutouts(np.asarray(mask, bool), x0, y0, h, fill=True)[0], 0.0, weight)
    model = PSFModel(np.zeros((len(poly_terms([0.0], [0.0], deg, 0, 0, 1)[0]), ng, ng)), s, h, deg,
                     (nx - 1) / 2, (ny - 1) / 2, max(nx, ny) / 2)
    flux = flux_ap = np.asarray(cat["flux_aper"][:, APER_RADII.index(5.66)], float)[idx]
    x, y = x0.copy(), y0.copy()
    pterms = model.terms(x, y)
    g = np.arange(-h, h + 1)
    use = np.ones(len(idx), bool)
    for it in range(n_iter):
        if it > 0:
            m, gx, gy = model.evaluate(x, y, h, gradient=True, xi=xi, yi=yi)
            flux, ddx, ddy = fit_flux_position(data, weight, m, gx, gy, it >= 2)
            x, y = x + np.clip(ddx, -0.5, 0.5), y + np.clip(ddy, -0.5, 0.5)
            x, y = x - np.mean(x - x0), y - np.mean(y - y0)
            m = model.evaluate(x, y, h, xi=xi, yi=yi)
            sky = np.zeros(len(idx))
            chi = (data - sky[:, None, None] - flux[:, None, None] * m) ** 2 * weight
            use &= (flux > 0.5 * flux_ap) & (flux < 2 * flux_ap) & (np.hypot(x - x0, y - y0) < 1)
            floor = (0.03 * flux[:, None, None] * m) ** 2
            weight = np.where(chi / (1 + floor * weight) > 25, 0.0, weight)
            if it >= 3:
                red = chi.sum((1, 2)) / np.maximum((weight > 0).sum((1, 2)), 1)
                med = np.median(red[use])
                use &= red < med + 5 * 1.4826 * np.median(np.abs(red[use] - med)) + 1e-9
        else:
            m, sky = np.zeros_like(data), np.zeros(len(idx))
        resid = (data - sky[:, None, None]) / np.where(use, flux, 1.0)[:, None, None] - m
        omega = weight * flux[:, None, None] ** 2 * use[:, None, None]
        jy = np.rint(c + s * (g[None, :, None] - (y - yi)[:, None, None])).astype(np.int64)
        jx = np.rint(c + s * (g[None, None, :] - (x - xi)[:, None, None])).astype(np.int64)
        jy, jx = np.broadcast_to(jy, data.shape), np.broadcast_to(jx, data.shape)
        delta = _bin_update(resid, omega, pterms if it == 0 else model.terms(x, y), jy, jx, ng,
                            min_samples=3 * pterms.shape[1])
        model = PSFModel(_normalise(model.nodes + delta, s), s, h, deg, model.x_centre,
                         model.y_centre, model.scale)
    m = model.evaluate(x, y, h, xi=xi, yi=yi)
    flux = fit_flux_position(data - sky[:, None, None], weight, m, m, m, False)[0]
    apcorr = _aperture_correction(img, rms, x[use], y[use], flux[use], sky[use], total_radius)
    meta = {"n_stars": int(use.sum()), "total_radius": total_radius}
    out = PSFModel(model.nodes, s, h, deg, model.x_centre, model.y_centre, model.scale, apcorr, meta)
    out.meta["fwhm_centre"] = float(out.fwhm_at(out.x_centre, out.y_centre)[0])
    return out
