"""Focal-plane geometry: where every readout quadrant lies, and its nominal WCS.

Conventions
-----------
* Focal-plane coordinates ``(EW, NS)`` are gnomonic standard coordinates in degrees about
  the optical axis (``EW`` = xi, increasing to the east; ``NS`` = eta, to the north), as in
  ``ztf_ccd_quad_layout.tbl``.
* Pixel coordinates are 0-based ``(x, y)`` = (column, row) = numpy ``[y, x]`` = FITS axes
  (1, 2) minus one. Pixel centres are integers; the quadrant spans ``-0.5 .. n - 0.5``.
* Every quadrant is stored with ``x`` increasing to the west and ``y`` to the south, so its
  pixel (0, 0) is the corner of largest ``EW`` and largest ``NS``.
* A quadrant smaller than full size (test data) keeps the pixel scale and is centred on the
  full-size quadrant's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from astropy.wcs import WCS

__all__ = ["FULL_SHAPE", "QuadrantGeometry", "fit_quadrant_geometry", "tan_project",
           "tan_deproject"]

#: Full-size readout quadrant shape as numpy (rows, columns) = (NAXIS2, NAXIS1).
FULL_SHAPE = (3080, 3072)


@dataclass(frozen=True)
class QuadrantGeometry:
    """Affine map between the pixels of one readout quadrant and the focal plane.

    ``[EW, NS] = matrix @ [x, y] + offset`` for full-size 0-based pixel coordinates, degrees.

    Attributes
    ----------
    ccd_id, qid : int
        CCD 1..16 and quadrant 1..4.
    matrix : ndarray, shape (2, 2)
        Degrees per pixel.
    offset : ndarray, shape (2,)
        Focal-plane position of full-size pixel (0, 0), degrees.
    rms_deg : float
        RMS of the fit to the four tabulated corners, degrees.
    """

    ccd_id: int
    qid: int
    matrix: np.ndarray
    offset: np.ndarray
    rms_deg: float

    @property
    def rcid(self) -> int:
        """Readout-channel ID 0..63."""
        return 4 * (self.ccd_id - 1) + self.qid - 1

    @cached_property
    def inverse(self) -> np.ndarray:
        """Pixels per degree (inverse of :attr:`matrix`)."""
        return np.linalg.inv(self.matrix)

    def pixel_offset(self, shape: tuple[int, int]) -> np.ndarray:
        """Full-size pixel coordinates of pixel (0, 0) of a quadrant of ``shape`` (rows, cols)."""
        ny, nx = shape
        return np.array([(FULL_SHAPE[1] - nx) / 2.0, (FULL_SHAPE[0] - ny) / 2.0])

    def pixel_to_focal(self, x, y, shape=FULL_SHAPE):
        """Focal-plane ``(EW, NS)`` in degrees of 0-based pixel ``(x, y)``."""
        off = self.pixel_offset(shape)
        xf = np.asarray(x, dtype=float) + off[0]
        yf = np.asarray(y, dtype=float) + off[1]
        m = self.matrix
        return (m[0, 0] * xf + m[0, 1] * yf + self.offset[0],
                m[1, 0] * xf + m[1, 1] * yf + self.offset[1])

    def focal_to_pixel(self, ew, ns, shape=FULL_SHAPE):
        """0-based pixel ``(x, y)`` of focal-plane ``(EW, NS)`` in degrees."""
        off = self.pixel_offset(shape)
        d0 = np.asarray(ew, dtype=float) - self.offset[0]
        d1 = np.asarray(ns, dtype=float) - self.offset[1]
        inv = self.inverse
        return (inv[0, 0] * d0 + inv[0, 1] * d1 - off[0],
                inv[1, 0] * d0 + inv[1, 1] * d1 - off[1])

    def nominal_wcs(self, ra_deg: float, dec_deg: float, shape=FULL_SHAPE) -> WCS:
        """Nominal TAN WCS of the quadrant for a telescope pointing (no distortion).

        Parameters
        ----------
        ra_deg, dec_deg : float
            Pointing of the optical axis, ICRS degrees.
        shape : tuple of int
            Quadrant shape (rows, columns).

        Returns
        -------
        astropy.wcs.WCS
            ``CRVAL`` at the pointing, ``CRPIX`` at the optical axis (1-based FITS pixels,
            usually far outside the quadrant), ``CD`` from the fitted layout.
        """
        x0, y0 = self.focal_to_pixel(0.0, 0.0, shape)
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [ra_deg, dec_deg]
        w.wcs.crpix = [float(x0) + 1.0, float(y0) + 1.0]
        w.wcs.cd = self.matrix.copy()
        w.pixel_shape = (shape[1], shape[0])
        return w


def fit_quadrant_geometry(ccd_id: int, qid: int, ew: np.ndarray, ns: np.ndarray) -> QuadrantGeometry:
    """Fit the affine pixel-to-focal-plane map of one quadrant from its four corners.

    Parameters
    ----------
    ccd_id, qid : int
        CCD 1..16 and quadrant 1..4.
    ew, ns : array of 4 floats
        Corner positions, degrees, in any order.

    Returns
    -------
    QuadrantGeometry
    """
    ew = np.asarray(ew, float)
    ns = np.asarray(ns, float)
    east = ew > np.median(ew)
    north = ns > np.median(ns)
    px = np.where(east, -0.5, FULL_SHAPE[1] - 0.5)
    py = np.where(north, -0.5, FULL_SHAPE[0] - 0.5)
    design = np.column_stack([px, py, np.ones(4)])
    coef_ew, *_ = np.linalg.lstsq(design, ew, rcond=None)
    coef_ns, *_ = np.linalg.lstsq(design, ns, rcond=None)
    resid = np.concatenate([design @ coef_ew - ew, design @ coef_ns - ns])
    matrix = np.array([coef_ew[:2], coef_ns[:2]])
    offset = np.array([coef_ew[2], coef_ns[2]])
    return QuadrantGeometry(ccd_id, qid, matrix, offset, float(np.sqrt(np.mean(resid**2))))


def tan_project(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float):
    """Gnomonic standard coordinates (xi, eta) in degrees of sky positions about a tangent point.

    Parameters
    ----------
    ra_deg, dec_deg : array-like
        Positions, degrees.
    ra0_deg, dec0_deg : float
        Tangent point, degrees.

    Returns
    -------
    xi, eta : ndarray
        Standard coordinates, degrees (xi to the east, eta to the north).
    """
    ra = np.radians(ra_deg)
    dec = np.radians(dec_deg)
    ra0 = np.radians(ra0_deg)
    dec0 = np.radians(dec0_deg)
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi_deg, eta_deg, ra0_deg: float, dec0_deg: float):
    """Inverse of :func:`tan_project`: sky positions (degrees) of standard coordinates."""
    xi = np.radians(xi_deg)
    eta = np.radians(eta_deg)
    ra0 = np.radians(ra0_deg)
    dec0 = np.radians(dec0_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)
