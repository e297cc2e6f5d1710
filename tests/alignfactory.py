"""TAN-SIP WCS pairs for the alignment tests and benchmark (ZTF-like 1.01"/px, distortion)."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS


def sip_wcs(shape, *, crval=(150.0, 30.0), rot_deg=0.0, shift=(0.0, 0.0), scale=1.01 / 3600,
            sip_scale=1.0) -> WCS:
    """A TAN-SIP WCS of an image of ``shape`` with a ~2 px cubic distortion at the corners."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crpix = [nx / 2 + 0.5 + shift[0], ny / 2 + 0.5 + shift[1]]
    w.wcs.crval = list(crval)
    t = np.deg2rad(rot_deg)
    w.wcs.cd = scale * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    half = max(nx, ny) / 2
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    q, c = 2.0 * sip_scale / half**2, 1.0 * sip_scale / half**3   # ~2 px, ~1 px at the edge
    a[2, 0], a[1, 1], a[0, 2] = q, -0.5 * q, 0.3 * q
    b[0, 2], b[1, 1], b[2, 0] = 0.8 * q, 0.4 * q, -0.2 * q
    a[3, 0], b[0, 3], a[1, 2] = c, c, -0.5 * c
    from astropy.wcs import Sip

    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def smooth_image(shape, seed=0):
    """Sum of broad Gaussians (smooth on the pixel scale), float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    img = np.full(shape, 100.0)
    for _ in range(30):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        s, f = rng.uniform(8, 30), rng.uniform(100, 1000)
        img += f * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
    return img.astype(np.float32)
