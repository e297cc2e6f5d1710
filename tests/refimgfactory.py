"""Synthetic calibrated epochal quadrants for the reference-image tests and benchmark.

Each image: the same star field (sky positions fixed on the reference grid), a small random
pointing offset and rotation, its own zero point and Gaussian seeing, a flat sky with Poisson
and read noise, a TAN WCS that is exact (so co-add astrometry can be tested). Optional
outliers: a cosmic ray in input 0 and a moving object (asteroid) in input 1, at grid pixels
returned in ``outliers``. The products are written where the calibration stage writes them
and registered in ``science_images``.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from zsds.db import schema as s
from zsds.io.paths import ArchiveLayout
from zsds.io.products import write_image
from zsds.stages.refimg import reference_grid

GAIN, READ_NOISE, SKY_DN = 6.0, 9.0, 150.0


def _stars(grid: WCS, shape, n, rng):
    ny, nx = shape
    x, y = rng.uniform(5, nx - 6, n), rng.uniform(5, ny - 6, n)
    ra, dec = grid.pixel_to_world_values(x, y)
    mag = 15.0 + 6.0 * rng.power(2.5, n)
    return np.asarray(ra), np.asarray(dec), mag


def _render(shape, x, y, flux, sigma_px, half=8):
    img = np.zeros(shape, np.float32)
    ny, nx = shape
    for xi, yi, fi in zip(x, y, flux):
        x0, y0 = int(round(xi)), int(round(yi))
        ys, xs = slice(max(y0 - half, 0), min(y0 + half + 1, ny)), slice(max(x0 - half, 0), min(x0 + half + 1, nx))
        yy, xx = np.mgrid[ys, xs]
        if yy.size == 0:
            continue
        g = np.exp(-0.5 * ((xx - xi) ** 2 + (yy - yi) ** 2) / sigma_px ** 2)
        img[ys, xs] += fi * g / (2 * np.pi * sigma_px ** 2)
    return img


def _input_wcs(grid: WCS, rng) -> WCS:
    w = grid.deepcopy()
    w.wcs.crval = w.wcs.crval + rng.normal(0, 2.0 / 3600, 2)
    ang = np.radians(rng.normal(0, 0.01))
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    w.wcs.cd = w.wcs.cd @ rot
    return w


def make_epochal_archive(root, engine, n: int, shape=(260, 256), *, key=(655, "zr", 13, 3),
                         n_stars=250, seed=0, outliers=True, first=0):
    """Write ``n`` synthetic sciimg/mskimg pairs and their science_images rows.

    Returns
    -------
    dict
        ``grid`` (reference WCS), ``stars`` (ra, dec, mag), ``outliers`` {name: (x, y)} in
        grid pixels, ``rows`` (the inserted rows).
    """
    field, fc, ccd, qid = key
    rng = np.random.default_rng(seed)
    layout = ArchiveLayout(root)
    grid = reference_grid(field, ccd, qid, shape)
    ra, dec, mag = _stars(grid, shape, n_stars, np.random.default_rng(1234))
    ny, nx = shape
    out_xy = {"cosmic_ray": (0.3 * nx, 0.4 * ny), "asteroid": (0.6 * nx, 0.7 * ny)}
    rows = []
    for i in range(first, first + n):
        w = _input_wcs(grid, rng)
        magzp, fwhm = 26.2 + rng.normal(0, 0.05), rng.uniform(1.8, 2.6)
        x, y = w.world_to_pixel_values(ra, dec)
        img = _render(shape, x, y, 10 ** (-0.4 * (mag - magzp)), fwhm / 2.3548) + SKY_DN
        if outliers and i == first:
            cx, cy = w.world_to_pixel_values(*grid.pixel_to_world_values(*out_xy["cosmic_ray"]))
            cx, cy = int(np.round(cx)), int(np.round(cy))
            img[cy, cx:cx + 2] += 3000.0
        if outliers and i == first + 1:
            ax, ay = w.world_to_pixel_values(*grid.pixel_to_world_values(*out_xy["asteroid"]))
            img += _render(shape, [float(ax)], [float(ay)], [10 ** (-0.4 * (16.5 - magzp))], fwhm / 2.3548)
        img = rng.poisson(np.clip(img, 0, None) * GAIN) / GAIN + rng.normal(0, READ_NOISE / GAIN, shape)
        rows.append(_write(layout, engine, key, i, img.astype(np.float32), w, magzp, fwhm))
    return {"grid": grid, "stars": (ra, dec, mag), "outliers": out_xy, "rows": rows, "shape": shape}


def _write(layout, engine, key, i, img, w, magzp, fwhm):
    field, fc, ccd, qid = key
    ffd = f"20261121{100000 + 1000 * i:06d}"
    h = w.to_header()
    h["MAGZP"], h["GAIN"], h["SEEING"] = magzp, GAIN, fwhm * 1.012
    path = layout.sci_path(ffd, field, fc, ccd, qid, "sciimg.fits")
    write_image(path, img, h)
    write_image(layout.sci_path(ffd, field, fc, ccd, qid, "mskimg.fits"), np.zeros(img.shape, np.uint16))
    sky_rms = float(np.sqrt(SKY_DN / GAIN + (READ_NOISE / GAIN) ** 2))
    maglim = magzp - 2.5 * np.log10(5 * sky_rms * np.sqrt(4 * np.pi * (fwhm / 2.3548) ** 2))
    row = dict(expid=36110000 + i, ccd_id=ccd, qid=qid, rcid=4 * (ccd - 1) + qid - 1,
               pid=3611000000 + 100 * i + 4 * (ccd - 1) + qid - 1, night="20261121",
               filefracday=ffd, obsjd=2461365.6 + 0.01 * i, field_id=field, filter_code=fc,
               programid=1, path=str(path.relative_to(layout.root)), status=1, infobits=0,
               magzp=magzp, clrcoeff=0.0, maglim=maglim, seeing_arcsec=fwhm * 1.012,
               sky=SKY_DN, sky_rms=sky_rms)
    with engine.begin() as conn:
        conn.execute(s.science_images.insert().values(**row))
    return row
