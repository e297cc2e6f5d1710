"""Astrometric calibration of one readout quadrant: detections + reference catalogue -> TAN-SIP.

Conventions
-----------
* Pixel coordinates are 0-based ``(x, y)`` = (column, row) centres of the stored image. FITS
  ``CRPIX`` is 1-based; the conversion happens only in :func:`_build_wcs` (``crpix = centre + 1``).
* Sky positions are ICRS degrees at the epoch of the exposure (the caller propagates the
  reference catalogue with its proper motions).
* Standard coordinates ``(xi, eta)`` are gnomonic, degrees, xi to the east and eta to the north,
  about the current tangent point (:func:`zsds.camera.tan_project`); they are the FITS
  intermediate world coordinates of a TAN projection.

Algorithm
---------
1. **Initial match** (:func:`initial_offset`): project the reference stars with the header WCS,
   then vote the pairwise pixel offsets between the brightest detections and the brightest
   reference stars for every trial rotation (about the image centre) on a grid; the rotation with
   the highest, significant 2-D histogram peak gives the shift and rotation of the header.
2. **Iterative fit** (:func:`fit_tan_sip`): a polynomial ``(u, v) -> (xi, eta)`` of the pixel
   offsets from the image centre is fitted by weighted linear least squares with sigma clipping;
   its constant term moves the tangent point (``CRVAL``) until it vanishes, its linear terms are
   the ``CD`` matrix, the higher ones the SIP ``A``/``B`` polynomials. The match radius tightens
   from stage to stage: order 1 (TAN), then ``sip_order`` twice.
3. The inverse polynomials ``AP``/``BP`` are fitted on a pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from ..camera import tan_deproject, tan_project
from ..errors import AlgorithmError

__all__ = ["AstrometrySolution", "solve_astrometry", "initial_offset", "match_catalogs",
           "fit_tan_sip", "fit_terms", "pixel_to_sky", "sky_to_pixel", "InitialOffset",
           "TangentPolynomial"]

#: Match radius (arcsec) of each fit stage after the initial match, and the polynomial order
#: of the stage (``None``: the requested ``sip_order``).
_STAGES = ((5.0, 1), (2.0, None), (1.0, None))
#: Residuals below this (arcsec) are never clipped: the sigma clipping must not eat into
#: systematic residuals of the low-order stages or run away on noise-free positions.
_CLIP_FLOOR_ARCSEC = 0.2


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitialOffset:
    """Header WCS correction found by voting, in the header's pixel frame.

    A detection at pixel ``p`` lies at header pixel ``centre + R(rotation) (p - centre) + shift``.

    Attributes
    ----------
    dx, dy : float
        Shift, pixels.
    rotation_deg : float
        Rotation about the image centre, degrees (from +x towards +y).
    votes : int
        Pairs in the winning histogram cell (3x3 bins).
    background : float
        Mean number of pairs per 3x3 cell of that histogram.
    """

    dx: float
    dy: float
    rotation_deg: float
    votes: int
    background: float

    def apply(self, x, y, centre):
        """Header-frame pixel positions of detections at ``(x, y)`` (0-based pixels)."""
        xr, yr = _rotate(np.asarray(x, float) - centre[0], np.asarray(y, float) - centre[1],
                         self.rotation_deg)
        return xr + centre[0] + self.dx, yr + centre[1] + self.dy


@dataclass(frozen=True)
class TangentPolynomial:
    """Polynomial map from pixel offsets ``(u, v) = (x, y) - centre`` to ``(xi, eta)``, degrees.

    Attributes
    ----------
    crval : (float, float)
        Tangent point (RA, Dec), degrees.
    centre : (float, float)
        0-based pixel of the tangent point.
    terms : list of (p, q)
        Exponents of ``u**p * v**q``.
    cx, cy : ndarray
        Coefficients of xi and eta, degrees per pixel**(p+q).
    """

    crval: tuple[float, float]
    centre: tuple[float, float]
    terms: tuple[tuple[int, int], ...]
    cx: np.ndarray
    cy: np.ndarray

    def __call__(self, x, y):
        """Standard coordinates ``(xi, eta)`` (degrees) of 0-based pixels ``(x, y)``."""
        design = _design(np.asarray(x, float) - self.centre[0],
                         np.asarray(y, float) - self.centre[1], self.terms)
        return design @ self.cx, design @ self.cy

    @property
    def order(self) -> int:
        return max(p + q for p, q in self.terms)


@dataclass(frozen=True)
class AstrometrySolution:
    """Astrometric solution of one quadrant.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        TAN-SIP WCS (``RA---TAN-SIP``/``DEC--TAN-SIP``, ``A``/``B`` and ``AP``/``BP``) with
        ``CRPIX`` at the image centre and ``CRVAL`` at its sky position.
    n_matches : int
        Detections matched to reference stars and kept in the final fit.
    rms_ra_arcsec, rms_dec_arcsec : float
        RMS of the final fit residuals along RA (times cos Dec) and Dec, arcsec (includes the
        centroid noise of the detections).
    offset_arcsec : float
        Distance between the header WCS and the solution at the image centre, arcsec.
    rotation_deg : float
        Rotation of the header WCS relative to the solution, degrees, counter-clockwise in the
        (xi east, eta north) plane, i.e. from east towards north.
    matched : (ndarray, ndarray)
        Indices into the input detections and reference stars of the final matches.
    sip_order : int
        Order of the forward SIP polynomials.
    inverse_error_px : float
        Largest round-trip error of the ``AP``/``BP`` inverse over the quadrant, pixels.
    """

    wcs: WCS
    n_matches: int
    rms_ra_arcsec: float
    rms_dec_arcsec: float
    offset_arcsec: float
    rotation_deg: float
    matched: tuple[np.ndarray, np.ndarray]
    sip_order: int
    inverse_error_px: float

    def header(self) -> fits.Header:
        """FITS keywords to write into the science image header.

        The WCS (``CTYPE``, ``CRPIX``, ``CRVAL``, ``CD``, ``A_*``, ``B_*``, ``AP_*``, ``BP_*``)
        and QA keywords:

        ========  ==============================================================
        ASTRRMS1  RMS of the fit residuals along RA (times cos Dec), arcsec
        ASTRRMS2  RMS of the fit residuals along Dec, arcsec
        ASTRNMAT  number of reference stars in the final fit
        ASTROFFS  header WCS offset from the solution at the image centre, arcsec
        ASTRROT   header WCS rotation relative to the solution, deg (E towards N)
        ASTRSIPO  order of the SIP distortion polynomials
        ========  ==============================================================
        """
        h = _wcs_header(self.wcs)
        h["ASTRRMS1"] = (round(self.rms_ra_arcsec, 4), "[arcsec] astrometric RMS along RA")
        h["ASTRRMS2"] = (round(self.rms_dec_arcsec, 4), "[arcsec] astrometric RMS along Dec")
        h["ASTRNMAT"] = (int(self.n_matches), "reference stars in the astrometric fit")
        h["ASTROFFS"] = (round(self.offset_arcsec, 3), "[arcsec] header WCS offset at centre")
        h["ASTRROT"] = (round(self.rotation_deg, 5), "[deg] header WCS rotation (E to N)")
        h["ASTRSIPO"] = (int(self.sip_order), "SIP polynomial order")
        return h

    def pixel_to_sky(self, x, y):
        """(RA, Dec) in degrees of 0-based pixels; see :func:`pixel_to_sky`."""
        return pixel_to_sky(self.wcs, x, y)

    def sky_to_pixel(self, ra, dec):
        """0-based pixels of (RA, Dec) in degrees; see :func:`sky_to_pixel`."""
        return sky_to_pixel(self.wcs, ra, dec)


# ---------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------
def pixel_to_sky(wcs: WCS, x, y):
    """Sky positions (RA, Dec; degrees) of 0-based pixel positions, distortion included."""
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.asarray(ra) % 360.0, np.asarray(dec)


def sky_to_pixel(wcs: WCS, ra, dec):
    """0-based pixel positions of sky positions (degrees), distortion included."""
    x, y = wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0,
                             tolerance=1e-6, maxiter=50, quiet=True)
    return np.asarray(x), np.asarray(y)


def match_catalogs(x1, y1, x2, y2, radius):
    """Unique nearest-neighbour matches between two position lists in the same plane.

    Each point of list 1 is paired with its nearest neighbour in list 2 within ``radius``;
    when several points of list 1 claim the same point of list 2, only the closest is kept.

    Parameters
    ----------
    x1, y1, x2, y2 : array-like
        Positions, any common unit.
    radius : float
        Largest separation, same unit.

    Returns
    -------
    i1, i2 : ndarray of int
        Indices of the matched pairs, sorted by ``i1``.
    sep : ndarray
        Their separations.
    """
    x2 = np.asarray(x2, float)
    if len(x2) == 0 or len(np.atleast_1d(x1)) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    tree = cKDTree(np.column_stack([x2, np.asarray(y2, float)]))
    dist, i2 = tree.query(np.column_stack([np.asarray(x1, float), np.asarray(y1, float)]),
                          distance_upper_bound=radius)
    i1 = np.flatnonzero(np.isfinite(dist))
    i2, dist = i2[i1], dist[i1]
    order = np.lexsort((dist, i2))
    first = np.ones(len(order), bool)
    first[1:] = i2[order][1:] != i2[order][:-1]
    keep = np.sort(order[first])
    return i1[keep], i2[keep], dist[keep]


def initial_offset(xd, yd, fluxd, xr, yr, magr, shape, *, max_offset_px=150.0,
                   max_rotation_deg=0.15, rotation_step_deg=0.02, n_bright=150, bin_px=2.0,
                   min_votes=12) -> InitialOffset:
    """Shift and rotation of detections onto reference stars projected with the header WCS.

    Votes the offsets of all pairs (brightest ``n_bright`` detections, brightest
    ``2.5 n_bright`` reference stars) in a 2-D histogram for each trial rotation about the
    image centre; the winning cell (3x3 bins) must hold at least ``min_votes`` pairs and stand
    6 sigma (+5) above the mean cell. The rotation and shift are then refined by least squares
    on the pairs that agree with the winner.

    Parameters
    ----------
    xd, yd, fluxd : ndarray
        Detections: 0-based pixels and flux (any unit; ranking only).
    xr, yr, magr : ndarray
        Reference stars: header-WCS pixels (0-based) and magnitude (NaN ranks last).
    shape : (int, int)
        Image shape (rows, columns).
    max_offset_px : float
        Largest shift searched, pixels.
    max_rotation_deg, rotation_step_deg : float
        Rotation grid, degrees.
    n_bright : int
        Detections used.
    bin_px : float
        Histogram bin, pixels.
    min_votes : int
        Fewest pairs accepted in the winning cell.

    Returns
    -------
    InitialOffset

    Raises
    ------
    AlgorithmError
        No significant peak (``votes``, ``background`` and ``n_detections`` attached).
    """
    centre = _centre(shape)
    bright_d = np.argsort(-np.nan_to_num(fluxd, nan=-np.inf))[:n_bright]
    bright_r = np.argsort(np.nan_to_num(magr, nan=np.inf))[:int(2.5 * n_bright)]
    xd, yd = xd[bright_d] - centre[0], yd[bright_d] - centre[1]
    xr, yr = xr[bright_r], yr[bright_r]
    n_steps = int(np.ceil(max_rotation_deg / rotation_step_deg))
    steps = np.arange(-n_steps, n_steps + 1)
    best = None
    for angle in rotation_step_deg * steps[np.argsort(np.abs(steps), kind="stable")]:
        xa, ya = _rotate(xd, yd, angle)
        trial = _vote(xr[None, :] - (xa[:, None] + centre[0]),
                      yr[None, :] - (ya[:, None] + centre[1]), max_offset_px, bin_px)
        if best is None or trial[2] > best[0][2]:  # ties: the smallest rotation wins
            best = (trial, angle)
    (dx, dy, votes, background), angle = best
    if votes < min_votes or votes < background + 6.0 * np.sqrt(background) + 5:
        raise AlgorithmError(
            f"no significant offset between {len(xd)} detections and the reference stars: "
            f"{votes} votes over a background of {background:.1f}",
            n_matches=int(votes), votes=int(votes), background=float(background),
            n_detections=int(len(xd)))
    coarse = InitialOffset(float(dx), float(dy), float(angle), int(votes), float(background))
    return _refine_offset(coarse, xd + centre[0], yd + centre[1], xr, yr, centre, 2 * bin_px)


def _refine_offset(start: InitialOffset, xd, yd, xr, yr, centre, radius) -> InitialOffset:
    """Least-squares rotation and shift (no scale) of the pairs within ``radius`` of ``start``."""
    xs, ys = start.apply(xd, yd, centre)
    i_d, i_r, _ = match_catalogs(xs, ys, xr, yr, radius)
    if len(i_d) < 3:
        return start
    pd_ = np.column_stack([xs[i_d], ys[i_d]])
    pr = np.column_stack([xr[i_r], yr[i_r]])
    md, mr = pd_.mean(axis=0), pr.mean(axis=0)
    a, b = pd_ - md, pr - mr
    dtheta = np.degrees(np.arctan2(np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), np.sum(a * b)))
    # New map: p -> c + R(theta + dtheta)(p - c) + shift; the shift makes the pair means agree.
    angle = start.rotation_deg + dtheta
    xm, ym = _rotate(np.mean(xd[i_d]) - centre[0], np.mean(yd[i_d]) - centre[1], angle)
    shift = mr - np.array([xm + centre[0], ym + centre[1]])
    return InitialOffset(float(shift[0]), float(shift[1]), float(angle), start.votes,
                         start.background)


def fit_tan_sip(x, y, ra, dec, crval, centre, order, *, weights=None, n_iter=5):
    """Weighted least-squares polynomial ``(u, v) -> (xi, eta)`` with a vanishing constant term.

    The tangent point starts at ``crval`` and moves to the sky position of the constant term
    until that term is below 1e-9 deg, so ``crval`` ends at the sky position of ``centre``.

    Parameters
    ----------
    x, y : ndarray
        0-based pixels of matched detections.
    ra, dec : ndarray
        Sky positions of their reference stars, degrees.
    crval : (float, float)
        Starting tangent point, degrees.
    centre : (float, float)
        0-based pixel of the tangent point (``CRPIX - 1``).
    order : int
        Total polynomial order (1: TAN, affine).
    weights : ndarray, optional
        Least-squares weights (1 / variance); default uniform.
    n_iter : int
        Most tangent-point updates.

    Returns
    -------
    TangentPolynomial
    """
    terms = fit_terms(order)
    scale = max(centre) + 1.0
    design = _design((x - centre[0]) / scale, (y - centre[1]) / scale, terms)
    sw = np.sqrt(np.ones(len(x)) if weights is None else weights)
    norm = scale ** -np.array([p + q for p, q in terms], float)
    for _ in range(n_iter):
        xi, eta = tan_project(ra, dec, *crval)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], np.column_stack([xi, eta]) * sw[:, None],
                                   rcond=None)
        cx, cy = coef[:, 0] * norm, coef[:, 1] * norm
        ra0, dec0 = tan_deproject(cx[0], cy[0], *crval)
        crval = (float(ra0), float(dec0))
        if np.hypot(cx[0], cy[0]) < 1e-9:
            break
    cx[0] = cy[0] = 0.0
    return TangentPolynomial(crval, tuple(centre), terms, cx, cy)


def solve_astrometry(x, y, flux, header_wcs: WCS, ref_ra, ref_dec, ref_mag, shape, *,
                     sip_order=3, centroid_err=None, max_offset_arcsec=150.0,
                     max_rotation_deg=0.15, n_bright=150, min_matches=30,
                     clip_sigma=3.0) -> AstrometrySolution:
    """Astrometric solution (TAN-SIP) of a quadrant from its detections and a reference catalogue.

    Parameters
    ----------
    x, y : array-like
        0-based pixel centroids of the detections (pass only usable ones: no saturated or
        flagged sources if they should stay out of the fit).
    flux : array-like
        Detection fluxes (any unit), to rank the brightest for the initial match.
    header_wcs : astropy.wcs.WCS
        Approximate WCS of the raw header (may be off by ~1-2 arcmin and ~0.15 deg).
    ref_ra, ref_dec : array-like
        Reference positions propagated to the exposure epoch, degrees.
    ref_mag : array-like
        Reference magnitudes for ranking (NaN allowed).
    shape : (int, int)
        Image shape (rows, columns).
    sip_order : int
        Order of the SIP polynomials (2..5); 1 fits a plain TAN WCS (no distortion).
    centroid_err : array-like, optional
        1-sigma centroid error of each detection, pixels; weights the fit as
        ``1 / (err**2 + 0.01**2)``.
    max_offset_arcsec, max_rotation_deg : float
        Search range of the initial match.
    n_bright : int
        Brightest detections used for the initial match.
    min_matches : int
        Fewest matched stars accepted.
    clip_sigma : float
        Residuals beyond this many RMS are rejected at every stage.

    Returns
    -------
    AstrometrySolution

    Raises
    ------
    AlgorithmError
        Too few detections or matches (``n_matches`` attached), or no significant initial match.
    """
    if not 1 <= sip_order <= 5:
        raise ValueError(f"sip_order={sip_order} must be between 1 (plain TAN) and 5")
    det = _clean_detections(x, y, flux, centroid_err)
    refs = _clean_refs(ref_ra, ref_dec, ref_mag)
    n_needed = max(min_matches, 2 * len(fit_terms(sip_order)))
    if len(det.x) < n_needed:
        raise AlgorithmError(f"only {len(det.x)} usable detections, {n_needed} needed",
                             n_matches=0, n_detections=int(len(det.x)), n_required=n_needed)
    scale = _pixel_scale_arcsec(header_wcs)
    xr, yr, near = _refs_on_image(header_wcs, refs, shape, max_offset_arcsec / scale)
    start = initial_offset(det.x, det.y, det.flux, xr[near], yr[near], refs[2][near], shape,
                           max_offset_px=max_offset_arcsec / scale,
                           max_rotation_deg=max_rotation_deg, n_bright=n_bright)
    poly = _start_polynomial(header_wcs, start, shape)
    ra_r, dec_r = refs[0][near], refs[1][near]
    for radius, order in _STAGES:
        poly, pairs, resid = _match_and_fit(poly, det, ra_r, dec_r, radius,
                                            order or sip_order, clip_sigma, n_needed)
    wcs, inv_err = _build_wcs(poly, shape)
    offset, rotation = _header_difference(header_wcs, wcs, shape)
    rms = np.sqrt(np.mean(resid**2, axis=0)) * 3600.0
    index = (det.index[pairs[0]], np.flatnonzero(refs[3])[np.flatnonzero(near)[pairs[1]]])
    return AstrometrySolution(wcs, int(len(pairs[0])), float(rms[0]), float(rms[1]), offset,
                              rotation, index, int(sip_order), inv_err)


def fit_terms(order):
    """Exponents ``(p, q)`` of a full 2-D polynomial of total order ``order``."""
    return tuple((p, n - p) for n in range(order + 1) for p in range(n, -1, -1))


# ---------------------------------------------------------------------------------------
# steps of solve_astrometry
# ---------------------------------------------------------------------------------------
class _Detections(NamedTuple):
    """Usable detections: 0-based pixels, ranking flux, fit weight, index into the input."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    weight: np.ndarray
    index: np.ndarray


def _clean_detections(x, y, flux, err) -> _Detections:
    """Detections with finite positions and weights."""
    x, y, flux = (np.asarray(a, float).ravel() for a in (x, y, flux))
    if not len(x) == len(y) == len(flux):
        raise ValueError(f"x, y, flux lengths differ: {len(x)}, {len(y)}, {len(flux)}")
    w = np.ones(len(x)) if err is None else 1.0 / (np.asarray(err, float) ** 2 + 0.01**2)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(w)
    idx = np.flatnonzero(ok)
    return _Detections(x[idx], y[idx], np.nan_to_num(flux[idx], nan=-np.inf), w[idx], idx)


def _clean_refs(ra, dec, mag):
    """Finite reference positions: (ra, dec, mag, mask of the kept input rows)."""
    ra, dec, mag = (np.asarray(a, float).ravel() for a in (ra, dec, mag))
    ok = np.isfinite(ra) & np.isfinite(dec)
    return ra[ok], dec[ok], mag[ok], ok


def _refs_on_image(header_wcs, refs, shape, margin_px):
    """Header-WCS pixels of the reference stars and which fall within ``margin_px`` of the image."""
    xr, yr = header_wcs.all_world2pix(refs[0], refs[1], 0, quiet=True)
    ny, nx = shape
    near = ((xr > -margin_px) & (xr < nx - 1 + margin_px)
            & (yr > -margin_px) & (yr < ny - 1 + margin_px))
    return xr, yr, near


def _start_polynomial(header_wcs, start: InitialOffset, shape) -> TangentPolynomial:
    """Order-1 polynomial equivalent to the header WCS corrected by the initial offset."""
    centre = _centre(shape)
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    hx, hy = start.apply(gx.ravel(), gy.ravel(), centre)
    ra, dec = header_wcs.all_pix2world(hx, hy, 0)
    crval = tuple(float(c) for c in header_wcs.all_pix2world(*start.apply(*centre, centre), 0))
    return fit_tan_sip(gx.ravel(), gy.ravel(), ra, dec, crval, centre, 1)


def _match_and_fit(poly, det, ra_r, dec_r, radius_arcsec, order, clip_sigma, n_needed):
    """Match detections through ``poly`` within the radius, fit ``order`` with clipping.

    Returns the new polynomial, the kept pairs (detection, reference index arrays) and their
    residuals ``(dxi, deta)`` in degrees.
    """
    xi_d, eta_d = poly(det.x, det.y)
    xi_r, eta_r = tan_project(ra_r, dec_r, *poly.crval)
    i_d, i_r, _ = match_catalogs(xi_d, eta_d, xi_r, eta_r, radius_arcsec / 3600.0)
    keep = np.ones(len(i_d), bool)
    for _ in range(3):
        _require(keep.sum(), n_needed, radius_arcsec, order)
        d, r = i_d[keep], i_r[keep]
        poly = fit_tan_sip(det.x[d], det.y[d], ra_r[r], dec_r[r], poly.crval, poly.centre,
                           order, weights=det.weight[d])
        resid = _residuals(poly, det, ra_r, dec_r, i_d, i_r)
        dist = np.hypot(*resid.T)
        # RMS distance of a 2-D Gaussian from the median: median(r^2) = 2 ln2 sigma^2.
        rms = np.sqrt(np.median(dist[keep] ** 2) / np.log(2.0))
        new_keep = dist < max(clip_sigma * rms, _CLIP_FLOOR_ARCSEC / 3600.0)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    _require(keep.sum(), n_needed, radius_arcsec, order)
    return poly, (i_d[keep], i_r[keep]), resid[keep]


def _residuals(poly, det, ra_r, dec_r, i_d, i_r):
    """(n, 2) residuals detection minus reference in the tangent plane of ``poly``, degrees."""
    xi_d, eta_d = poly(det.x[i_d], det.y[i_d])
    xi_r, eta_r = tan_project(ra_r[i_r], dec_r[i_r], *poly.crval)
    return np.column_stack([xi_d - xi_r, eta_d - eta_r])


def _require(n, n_needed, radius_arcsec, order):
    if n < n_needed:
        raise AlgorithmError(
            f"only {n} detections matched the reference catalogue within {radius_arcsec} arcsec "
            f"(order-{order} fit), {n_needed} needed",
            n_matches=int(n), n_required=int(n_needed), radius_arcsec=float(radius_arcsec))


def _build_wcs(poly: TangentPolynomial, shape):
    """TAN-SIP WCS of a tangent polynomial, and the largest AP/BP round-trip error (pixels).

    An order-1 polynomial gives a plain TAN WCS (round-trip error 0).
    """
    cd = np.array([[poly.cx[1], poly.cx[2]], [poly.cy[1], poly.cy[2]]])
    crpix = np.asarray(poly.centre, float) + 1.0  # 0-based -> FITS 1-based, the only place
    w = WCS(naxis=2)
    w.wcs.crval = list(poly.crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = cd
    w.pixel_shape = (shape[1], shape[0])
    order = poly.order
    if order == 1:
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.set()
        return w, 0.0
    cd_inv = np.linalg.inv(cd)
    a = np.zeros((order + 1, order + 1))
    b = np.zeros_like(a)
    for k, (p, q) in enumerate(poly.terms):
        if p + q >= 2:
            a[p, q], b[p, q] = cd_inv @ np.array([poly.cx[k], poly.cy[k]])
    ap, bp, inv_err = _fit_inverse(a, b, shape, order + 1)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, ap, bp, crpix)
    w.wcs.set()
    return w, inv_err


def _fit_inverse(a, b, shape, order):
    """AP, BP (order ``order``) of the forward SIP ``a, b`` on a pixel grid with margins."""
    ny, nx = shape
    cx, cy = _centre(shape)
    gx, gy = np.meshgrid(np.linspace(-0.05 * nx, 1.05 * nx, 40) - cx,
                         np.linspace(-0.05 * ny, 1.05 * ny, 40) - cy)
    u, v = gx.ravel(), gy.ravel()
    big_u = u + _sip_eval(a, u, v)
    big_v = v + _sip_eval(b, u, v)
    terms = fit_terms(order)
    scale = max(cx, cy) + 1.0
    design = _design(big_u / scale, big_v / scale, terms)
    coef, *_ = np.linalg.lstsq(design, np.column_stack([u - big_u, v - big_v]), rcond=None)
    coef *= (scale ** -np.array([p + q for p, q in terms], float))[:, None]
    ap = np.zeros((order + 1, order + 1))
    bp = np.zeros_like(ap)
    for k, (p, q) in enumerate(terms):
        ap[p, q], bp[p, q] = coef[k]
    err = np.hypot(big_u + _sip_eval(ap, big_u, big_v) - u, big_v + _sip_eval(bp, big_u, big_v) - v)
    return ap, bp, float(err.max())


def _header_difference(header_wcs, wcs, shape):
    """Offset (arcsec) at the image centre and rotation (deg, E towards N) of the header WCS."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    crval = wcs.wcs.crval
    xi_s, eta_s = tan_project(*pixel_to_sky(wcs, gx.ravel(), gy.ravel()), *crval)
    xi_h, eta_h = tan_project(*header_wcs.all_pix2world(gx.ravel(), gy.ravel(), 0), *crval)
    xi_c, eta_c = tan_project(*header_wcs.all_pix2world(*_centre(shape), 0), *crval)
    ds = np.column_stack([xi_s - xi_s.mean(), eta_s - eta_s.mean()])
    dh = np.column_stack([xi_h - xi_h.mean(), eta_h - eta_h.mean()])
    cross = np.sum(ds[:, 0] * dh[:, 1] - ds[:, 1] * dh[:, 0])
    dot = np.sum(ds * dh)
    return float(np.hypot(xi_c, eta_c) * 3600.0), float(np.degrees(np.arctan2(cross, dot)))


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def _centre(shape):
    """0-based pixel of the image centre (x, y)."""
    return (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0


def _rotate(x, y, angle_deg):
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return c * x - s * y, s * x + c * y


def _design(u, v, terms):
    return np.column_stack([u**p * v**q for p, q in terms])


def _sip_eval(coef, u, v):
    """Sum of ``coef[p, q] u**p v**q``."""
    out = np.zeros_like(u)
    for p, q in zip(*np.nonzero(coef)):
        out += coef[p, q] * u**p * v**q
    return out


def _pixel_scale_arcsec(wcs):
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)


def _vote(dx, dy, max_offset, bin_px):
    """Peak of the 2-D histogram of offsets: (dx, dy, votes in 3x3 bins, mean per 3x3 cell)."""
    dx, dy = dx.ravel(), dy.ravel()
    inside = (np.abs(dx) < max_offset) & (np.abs(dy) < max_offset)
    dx, dy = dx[inside], dy[inside]
    n_bins = int(np.ceil(2 * max_offset / bin_px))
    hist, ex, ey = np.histogram2d(dx, dy, bins=n_bins, range=[[-max_offset, max_offset]] * 2)
    cells = sum(np.roll(np.roll(hist, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1))
    ix, iy = np.unravel_index(np.argmax(cells), cells.shape)
    cx, cy = 0.5 * (ex[ix] + ex[ix + 1]), 0.5 * (ey[iy] + ey[iy + 1])
    near = (np.abs(dx - cx) < 1.5 * bin_px) & (np.abs(dy - cy) < 1.5 * bin_px)
    if not near.any():
        return cx, cy, 0, 9.0 * hist.mean()
    background = 9.0 * hist.mean()
    return float(np.median(dx[near])), float(np.median(dy[near])), int(cells[ix, iy]), background


def _wcs_header(wcs):
    """WCS keywords in the ZTF form: ``CDi_j`` (degrees/pixel) instead of ``PCi_j`` + ``CDELT``."""
    h = wcs.to_header(relax=True)
    for key in ("WCSAXES", "MJDREF", "DATEREF", "MJD-OBS", "DATE-OBS", "CDELT1", "CDELT2"):
        h.remove(key, ignore_missing=True)
    cd = wcs.wcs.cd
    for i in (1, 2):
        for j in (1, 2):
            h.rename_keyword(f"PC{i}_{j}", f"CD{i}_{j}")
            h[f"CD{i}_{j}"] = (float(cd[i - 1, j - 1]), "[deg/pixel] linear part of the WCS")
    return h
