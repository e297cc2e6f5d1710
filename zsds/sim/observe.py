"""Per-exposure observing conditions and the true optics of the simulated camera.

Truth conventions
-----------------
* ``zp_axis``: zero point (AB mag for 1 DN/exposure) at the optical axis with the full
  (un-vignetted) response: ``m_PS1 = zp_axis - 2.5 log10(flux_DN) + clrcoeff * colour``, colour
  ``g-r`` for ZTF g and r, ``r-i`` for ZTF i.
* The zero point of a quadrant flat-fielded with a flat normalised to median 1 is
  ``zp_axis + 2.5 log10(median response of that quadrant)``; the simulator writes it as
  ``zp_quadrant`` in the truth.
* True astrometry: sky -> gnomonic about the true optical axis -> camera rotation ->
  radial distortion ``(xi, eta) * (1 + k rho^2)`` -> quadrant pixels (layout geometry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..camera import tan_project

__all__ = ["Conditions", "draw_conditions", "sky_to_pixel", "psf_at", "ZP0", "EXTINCTION",
           "CLRCOEFF", "SKY_MAG", "DISTORTION_K", "worst_header_error_arcsec"]

#: Zero point at airmass 0 for 1 DN in a 30 s exposure (AB), per filter code.
ZP0 = {"zg": 26.55, "zr": 26.39, "zi": 25.95}
#: Extinction, mag per airmass.
EXTINCTION = {"zg": 0.18, "zr": 0.10, "zi": 0.06}
#: Colour coefficient of each filter (colour g-r for zg, zr; r-i for zi).
CLRCOEFF = {"zg": -0.04, "zr": 0.09, "zi": -0.03}
#: Dark-sky brightness, mag/arcsec^2.
SKY_MAG = {"zg": 21.6, "zr": 20.75, "zi": 20.2}
#: Radial distortion coefficient, deg^-2 (about 4.5 pixels at the focal-plane corners).
DISTORTION_K = 8.0e-6
_PIXSCALE = 1.012


@dataclass(frozen=True)
class Conditions:
    """Truth of one exposure: pointing, optics, atmosphere. Angles in degrees."""

    expid: int
    filter: str
    airmass: float
    seeing_arcsec: float
    beta: float
    psf_e: float
    psf_theta: float
    sky_mag: float
    sky_grad_x: float
    sky_grad_y: float
    zp_axis: float
    clrcoeff: float
    transparency_mag: float
    axis_ra: float
    axis_dec: float
    rotation_deg: float
    distortion_k: float
    header_rotation_deg: float

    def as_dict(self) -> dict:
        return asdict(self)


def draw_conditions(expid: int, filt: str, airmass: float, pointing: tuple[float, float],
                    rng, seeing_arcsec: float | None = None, sky_mag: float | None = None,
                    cloudy: bool = False) -> Conditions:
    """Draw the conditions of one object exposure.

    Parameters
    ----------
    expid : int
    filt : str
        Filter code.
    airmass : float
    pointing : (ra, dec)
        Commanded pointing (field centre), degrees.
    rng : numpy.random.Generator
    seeing_arcsec : float, optional
        Fix the FWHM at the optical axis (arcsec); default a log-normal around 2.0".
    sky_mag : float, optional
        Fix the sky brightness (mag/arcsec^2); default dark sky with a scatter.
    cloudy : bool
        Lose 2-4 mag of transparency (a cloud-covered exposure).
    """
    seeing = seeing_arcsec if seeing_arcsec else float(np.clip(rng.lognormal(np.log(2.0), 0.15), 1.4, 3.5))
    sky = sky_mag if sky_mag else float(SKY_MAG[filt] - abs(rng.normal(0, 0.25)))
    transp = float(rng.uniform(2, 4)) if cloudy else float(abs(rng.normal(0, 0.02)))
    zp = ZP0[filt] - EXTINCTION[filt] * airmass - transp
    jitter = rng.normal(0, 6.0 / 3600, 2)
    ra0, dec0 = pointing
    axis_ra = (ra0 + jitter[0] / np.cos(np.radians(dec0))) % 360
    return Conditions(
        expid=int(expid), filter=filt, airmass=float(airmass), seeing_arcsec=seeing,
        beta=float(rng.uniform(2.6, 3.6)), psf_e=float(rng.uniform(0.0, 0.06)),
        psf_theta=float(rng.uniform(0, 180)), sky_mag=sky,
        sky_grad_x=float(rng.normal(0, 3e-6)), sky_grad_y=float(rng.normal(0, 3e-6)),
        zp_axis=float(zp), clrcoeff=CLRCOEFF[filt], transparency_mag=transp,
        axis_ra=float(axis_ra), axis_dec=float(dec0 + jitter[1]),
        rotation_deg=float(rng.normal(0, 0.01)), distortion_k=DISTORTION_K,
        header_rotation_deg=float(rng.uniform(-0.1, 0.1)))


def _rotate(xi, eta, angle_deg):
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return c * xi - s * eta, s * xi + c * eta


def sky_to_focal(ra, dec, cond: Conditions):
    """True focal-plane position (EW, NS degrees) of sky positions (degrees, at the epoch)."""
    xi, eta = tan_project(ra, dec, cond.axis_ra, cond.axis_dec)
    xi, eta = _rotate(xi, eta, cond.rotation_deg)
    factor = 1.0 + cond.distortion_k * (xi**2 + eta**2)
    return xi * factor, eta * factor


def sky_to_pixel(ra, dec, cond: Conditions, geometry, shape):
    """True 0-based pixel position of sky positions on a quadrant (stored orientation)."""
    ew, ns = sky_to_focal(ra, dec, cond)
    return geometry.focal_to_pixel(ew, ns, shape)


def psf_at(ew, ns, cond: Conditions):
    """PSF parameters at focal-plane positions: (fwhm_px, beta, ellipticity, theta_rad).

    The FWHM grows by 8% and the ellipticity by 0.06 (tangential) from the axis to the
    focal-plane corner; the exposure adds its own ellipticity (wind, tracking). ``theta`` is
    measured from +x towards +y in the stored pixel frame (x west, y south).
    """
    ew = np.asarray(ew, float)
    ns = np.asarray(ns, float)
    rho2 = (ew**2 + ns**2) / 5.2**2
    fwhm = cond.seeing_arcsec / _PIXSCALE * (1.0 + 0.08 * rho2)
    phi = np.arctan2(ns, ew)
    e_opt = 0.06 * rho2
    # Tangential ellipticity in (EW, NS); pixel axes are both flipped, which keeps angles.
    t_opt = phi + np.pi / 2
    t_exp = np.radians(cond.psf_theta)
    e1 = e_opt * np.cos(2 * t_opt) + cond.psf_e * np.cos(2 * t_exp)
    e2 = e_opt * np.sin(2 * t_opt) + cond.psf_e * np.sin(2 * t_exp)
    ellip = np.hypot(e1, e2)
    theta = 0.5 * np.arctan2(e2, e1)
    return fwhm, np.full_like(fwhm, cond.beta), ellip, theta


def worst_header_error_arcsec(cond: Conditions, header_wcs, geometry, shape) -> float:
    """Largest distance (arcsec) between the header WCS and the truth over a quadrant."""
    ny, nx = shape
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    ra_h, dec_h = header_wcs.pixel_to_world_values(xs.ravel(), ys.ravel())
    xt, yt = sky_to_pixel(ra_h, dec_h, cond, geometry, shape)
    return float(np.max(np.hypot(xt - xs.ravel(), yt - ys.ravel())) * _PIXSCALE)
