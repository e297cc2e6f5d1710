"""Streak products of the subtraction stage: sky measures, cutouts, product file, database rows.

Called by :mod:`zsds.stages.subtract` after the ZOGY subtraction of a quadrant:

1. :func:`find_streaks`: :func:`zsds.core.streaks.detect_streaks` on ``S_corr`` and
   ``D_flux`` (variance and bad pixels of the candidate extraction, the same border and
   outside-the-reference exclusion), then sky positions of the centre and both endpoints
   (the science WCS), length on the sky, position angle and magnitude.
2. :func:`streak_cutouts`: science, reference and difference cutouts centred on each trail,
   63 px or the trail's length plus 32 px (odd, at most :data:`MAX_CUTOUT`).
3. :func:`write_streaks`: the product ``*_diffimstreaks.fits`` (:func:`read_streaks`,
   :func:`read_streak_cutouts`).
4. :func:`register_streaks`: the quadrant's rows of the database table ``streaks``.

Identifiers: ``streakid = pid * 10**6 + STREAK_INDEX0 + index`` (:func:`streak_id`),
in the ``candid`` name space but out of reach of candidate indices, so a linked track can
list candidates and streaks in one ``candids`` column.

Sky conventions: ``pa_deg`` is the position angle of the trail on the sky, east of north,
in [0, 180) (the direction of motion is not known from one exposure); endpoint 1 is the
pixel-frame endpoint 1 of :mod:`zsds.core.streaks`; ``length_arcsec`` is the angular
distance of the endpoints. Pixel coordinates are 0-based in memory and 1-based (FITS) in
the product file and the database.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table
from sqlalchemy import delete, insert

from ..alerts.ids import make_candid
from ..core import streaks as core_streaks
from ..db import schema as s
from ..db.ops import utcnow
from ..io.products import write_hdulist

__all__ = ["STREAK_INDEX0", "MAX_CUTOUT", "streak_id", "find_streaks", "streak_cutouts",
           "write_streaks", "read_streaks", "read_streak_cutouts", "streak_records",
           "register_streaks"]

#: Index offset of streak identifiers inside the ``candid`` name space.
STREAK_INDEX0 = 900_000
#: Largest streak cutout side, pixels.
MAX_CUTOUT = 255
_PIXEL_COLUMNS = ("x1", "y1", "x2", "y2", "xc", "yc")
_COLUMN_DOC = {
    "index": ("", "row of the quadrant's streak list"),
    "x1": ("pix", "endpoint 1, column"), "y1": ("pix", "endpoint 1, row"),
    "x2": ("pix", "endpoint 2, column"), "y2": ("pix", "endpoint 2, row"),
    "xc": ("pix", "centre, column"), "yc": ("pix", "centre, row"),
    "length_px": ("pix", "length"), "length_err_px": ("pix", "length error"),
    "theta_deg": ("deg", "pixel-frame angle, CCW from +x, [0,180)"),
    "theta_err_deg": ("deg", "angle error"), "width_px": ("pix", "Gaussian sigma across"),
    "flux": ("DN", "total flux, science DN"), "flux_err": ("DN", "flux error"),
    "snr": ("", "total S/N of the trail photometry"),
    "snr_per_px": ("", "S/N per pixel of trail length"),
    "peak_snr": ("", "largest |S_corr| of the trail"), "npix": ("", "pixels fitted"),
    "chi2": ("", "reduced chi2 of the geometry fit"),
    "isdiffpos": ("", "t: science minus ref positive"),
    "ra": ("deg", "centre RA"), "dec": ("deg", "centre Dec"),
    "ra1": ("deg", "endpoint 1 RA"), "dec1": ("deg", "endpoint 1 Dec"),
    "ra2": ("deg", "endpoint 2 RA"), "dec2": ("deg", "endpoint 2 Dec"),
    "length_arcsec": ("arcsec", "length on the sky"),
    "pa_deg": ("deg", "position angle E of N, [0,180)"),
    "mag": ("mag", "total magnitude at MAGZP"), "sigmag": ("mag", "magnitude error"),
}


def streak_id(pid: int, index: int) -> int:
    """The identifier of streak `index` of the quadrant image `pid` (module doc)."""
    return make_candid(pid, STREAK_INDEX0 + int(index))


def _position_angle(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Position angle (deg E of N, [0, 180)) of the great circle through two points."""
    a1, d1, a2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    y = np.sin(a2 - a1) * np.cos(d2)
    x = np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(a2 - a1)
    return np.degrees(np.arctan2(y, x)) % 180.0


def _separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    from ..core.known_objects import angular_separation

    return angular_separation(ra1, dec1, ra2, dec2) * 3600.0


def find_streaks(snr, d_flux, var_flux, psf, bad, exclude, wcs, zp: float,
                 apcorr: float = 1.0,
                 params: core_streaks.StreakParams = core_streaks.StreakParams()) -> Table:
    """Streaks of a difference image with their sky measures.

    Parameters
    ----------
    snr, d_flux, var_flux, psf
        ZOGY ``S_corr``, ``D_flux`` (science DN), its per-pixel variance and ``P_D``.
    bad, exclude : 2-D bool arrays
        Masked pixels of either image; pixels where nothing is searched.
    wcs : astropy.wcs.WCS
        Science WCS (0-based pixel convention of ``pixel_to_world_values``).
    zp, apcorr : float
        Science zero point (mag of 1 DN) and PSF-fit-to-total flux correction.
    params : zsds.core.streaks.StreakParams

    Returns
    -------
    astropy.table.Table
        :data:`zsds.core.streaks.STREAK_COLUMNS` (0-based pixels) plus ``index``, ``ra``,
        ``dec`` (centre), ``ra1``, ``dec1``, ``ra2``, ``dec2``, ``length_arcsec``,
        ``pa_deg``, ``mag``, ``sigmag``.
    """
    t = core_streaks.detect_streaks(snr, d_flux, var_flux, psf, bad=bad, exclude=exclude,
                                    apcorr=apcorr, params=params)
    t.add_column(np.arange(len(t), dtype=np.int64), name="index", index=0)
    for suffix, (xc, yc) in (("", ("xc", "yc")), ("1", ("x1", "y1")), ("2", ("x2", "y2"))):
        ra, dec = wcs.pixel_to_world_values(np.asarray(t[xc], float), np.asarray(t[yc], float))
        t["ra" + suffix], t["dec" + suffix] = np.asarray(ra, float) % 360.0, np.asarray(dec, float)
    t["length_arcsec"] = _separation_arcsec(t["ra1"], t["dec1"], t["ra2"], t["dec2"])
    t["pa_deg"] = _position_angle(t["ra1"], t["dec1"], t["ra2"], t["dec2"])
    flux, err = np.asarray(t["flux"], float), np.asarray(t["flux_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t["mag"] = np.where(flux > 0, zp - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        t["sigmag"] = np.where(flux > 0, 1.0857 * err / np.where(flux > 0, flux, 1.0), np.nan)
    return t


def _cutout(a, xc, yc, size):
    h = size // 2
    xi, yi = int(round(xc)), int(round(yc))
    out = np.full((size, size), np.nan, np.float32)
    ny, nx = a.shape
    y0, y1, x0, x1 = max(0, yi - h), min(ny, yi + h + 1), max(0, xi - h), min(nx, xi + h + 1)
    if y1 > y0 and x1 > x0:
        out[y0 - (yi - h):y1 - (yi - h), x0 - (xi - h):x1 - (xi - h)] = a[y0:y1, x0:x1]
    return out


def cutout_size(length_px: float) -> int:
    """Side of a streak's cutouts: 63 px or the length plus 32 px, odd, at most MAX_CUTOUT."""
    n = max(63, int(np.ceil(length_px)) + 32)
    return min(n + (1 - n % 2), MAX_CUTOUT)


def streak_cutouts(t: Table, science, reference, difference) -> dict:
    """``index -> (science, reference, difference)`` float32 cutouts centred on each trail."""
    out = {}
    for row in t:
        n = cutout_size(float(row["length_px"]))
        out[int(row["index"])] = tuple(_cutout(a, row["xc"], row["yc"], n)
                                       for a in (science, reference, difference))
    return out


def write_streaks(path, t: Table, cutouts: dict, header: fits.Header | None = None):
    """Write ``*_diffimstreaks.fits``: HDU ``STREAKS`` (table, pixels 1-based) and one
    ``CUTOUT<index>`` image HDU per streak (cube: science, reference, difference)."""
    tab = Table(t, copy=True)
    tab.meta.clear()
    for name in _PIXEL_COLUMNS:
        tab[name] = np.asarray(tab[name], float) + 1.0
    hdu = fits.table_to_hdu(tab)
    hdu.name = "STREAKS"
    for i, name in enumerate(tab.colnames, start=1):
        unit, desc = _COLUMN_DOC.get(name, ("", ""))
        if unit:
            hdu.header[f"TUNIT{i}"] = unit
        if desc:
            hdu.header[f"TCOMM{i}"] = (desc + (" (1-based)" if name in _PIXEL_COLUMNS else ""))[:68]
    primary = fits.PrimaryHDU(header=header.copy() if header is not None else None)
    primary.header["NSTREAK"] = (len(t), "streaks detected")
    hdus = [primary, hdu]
    for k in sorted(cutouts):
        img = fits.ImageHDU(np.stack(cutouts[k]).astype(np.float32), name=f"CUTOUT{k}")
        img.header["COMMENT"] = "axis 3: science, reference, difference (DN)"
        hdus.append(img)
    return write_hdulist(path, fits.HDUList(hdus))


def read_streaks(path) -> Table:
    """The ``STREAKS`` table of a ``*_diffimstreaks.fits`` (pixel columns back to 0-based)."""
    import warnings

    from astropy.units import UnitsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        t = Table.read(path, hdu="STREAKS")
    for col in t.itercols():
        col.unit = None
    for name in _PIXEL_COLUMNS:
        t[name] = np.asarray(t[name], float) - 1.0
    t["isdiffpos"] = np.char.decode(t["isdiffpos"]) if t["isdiffpos"].dtype.kind == "S" \
        else t["isdiffpos"]
    return t


def read_streak_cutouts(path) -> dict:
    """``index -> (science, reference, difference)`` arrays of a ``*_diffimstreaks.fits``."""
    out = {}
    with fits.open(path, memmap=False) as h:
        for hdu in h[2:]:
            if hdu.name.startswith("CUTOUT"):
                out[int(hdu.name[6:])] = tuple(np.asarray(hdu.data, np.float32))
    return out


def streak_records(t: Table, job, pid: int, fid: int | None) -> list[dict]:
    """Rows of the ``streaks`` table for a quadrant's streaks (pixels 1-based)."""
    rcid = 4 * (job.ccd_id - 1) + job.qid - 1
    out = []
    for row in t:
        rec = {"streakid": streak_id(pid, int(row["index"])), "streak_index": int(row["index"]),
               "pid": int(pid), "expid": int(job.expid), "ccd_id": int(job.ccd_id),
               "qid": int(job.qid), "rcid": rcid, "field": int(job.field_id),
               "programid": int(job.programid), "fid": fid, "jd": float(job.obsjd),
               "isdiffpos": str(row["isdiffpos"]) == "t"}
        for name in ("ra", "dec", "ra1", "dec1", "ra2", "dec2", "length_px", "length_arcsec",
                     "pa_deg", "flux", "flux_err", "snr", "mag", "sigmag"):
            v = float(row[name])
            rec[name] = v if np.isfinite(v) else None
        for name in ("x1", "y1", "x2", "y2"):
            rec[name] = float(row[name]) + 1.0
        out.append(rec)
    return out


def register_streaks(engine, job, records: list[dict]) -> None:
    """Replace the quadrant's rows of the ``streaks`` table by `records`."""
    c = s.streaks.c
    key = (c.expid == job.expid) & (c.ccd_id == job.ccd_id) & (c.qid == job.qid)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(delete(s.streaks).where(key))
        if records:
            conn.execute(insert(s.streaks), [{**r, "created_at": now} for r in records])
