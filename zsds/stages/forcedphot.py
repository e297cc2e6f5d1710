"""Forced photometry at requested positions on archived difference images (the ZFPS analogue).

:func:`plan_tasks` turns a request (positions, JD range) and the science-image rows the
requester may see into one task per difference image covering at least one position;
:func:`measure_image` runs on a Dask worker: it reads the image's products
(``scimrefdiffimg.fits.fz``, ``diffimgpsf.fits``, ``mskimg.fits``) and fits the PSF at every
position with :func:`zsds.core.forcedphot.forced_photometry`; :func:`run_forced` maps the
tasks on a ``distributed.Client`` and returns a future of the concatenated table.

Output columns follow the ZTF Forced Photometry Service (``ztf-facts.md`` §14):
``index, ra, dec, field, ccdid, qid, filter (ZTF_g/r/i), pid, infobitssci, sciinpseeing [px],
scibckgnd [DN], scisigpix [DN], zpmaginpsci, zpmaginpsciunc, zpmaginpscirms, clrcoeff,
clrcoeffunc, ncalmatches, exptime, adpctdif1, adpctdif2 [arcsec], diffmaglim, zpdiff,
programid, jd, rfid, forcediffimflux, forcediffimfluxunc [DN], forcediffimsnr, forcediffimchisq,
forcediffimfluxap, forcediffimfluxuncap [DN], forcediffimsnrap, aperturecorr, refjdstart,
refjdend, procstatus``. ``index`` is the position's 0-based index in the request. Fluxes are in
DN of the difference image with zero point ``zpdiff``: ``mag = zpdiff - 2.5 log10(flux)``.
``scisigpix`` is the robust RMS of the unmasked difference-image pixels, used as the (white)
noise of the PSF fit; ``adpctdif1/2`` carry the astrometric RMS of the science image in RA and
Dec (zsds has no Gaia comparison of its own). The nearest-reference-source columns of ZFPS
are not produced.

``procstatus``: ``"0"`` no warning; otherwise comma-separated zsds codes
``56`` (masked or non-finite pixels left out of the fit), ``57`` (the PSF stamp runs off the
image), ``255`` (no usable pixels: flux null).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["FORCED_COLUMNS", "PROCSTATUS", "plan_tasks", "measure_image", "run_forced",
           "inside_footprint"]

#: Output columns, in order.
FORCED_COLUMNS = ("index", "ra", "dec", "field", "ccdid", "qid", "filter", "pid", "infobitssci",
                  "sciinpseeing", "scibckgnd", "scisigpix", "zpmaginpsci", "zpmaginpsciunc",
                  "zpmaginpscirms", "clrcoeff", "clrcoeffunc", "ncalmatches", "exptime",
                  "adpctdif1", "adpctdif2", "diffmaglim", "zpdiff", "programid", "jd", "rfid",
                  "forcediffimflux", "forcediffimfluxunc", "forcediffimsnr", "forcediffimchisq",
                  "forcediffimfluxap", "forcediffimfluxuncap", "forcediffimsnrap", "aperturecorr",
                  "refjdstart", "refjdend", "procstatus")
#: procstatus codes (see the module docstring).
PROCSTATUS = {"BAD_PIXELS": 56, "PARTIAL": 57, "NO_DATA": 255}
#: Aperture diameter of the aperture fluxes, pixels (as ZFPS).
APERTURE_DIAMETER_PX = 9.0
_PIXSCALE = 1.012
_FILTER = {"zg": "ZTF_g", "zr": "ZTF_r", "zi": "ZTF_i"}
_DIFF = "scimrefdiffimg.fits.fz"


def inside_footprint(ra, dec, corners) -> np.ndarray:
    """Which points (arrays, deg) lie inside a convex quadrilateral footprint [[ra, dec] x 4].

    Tangent-plane test about the footprint centre (great circles are straight lines there).
    """
    c = np.asarray(corners, float)
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    a0 = math.radians(float(np.degrees(np.arctan2(np.sin(np.radians(c[:, 0])).mean(),
                                                   np.cos(np.radians(c[:, 0])).mean()))))
    d0 = math.radians(float(c[:, 1].mean()))

    def proj(r, d):
        r, d = np.radians(r), np.radians(d)
        cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(r - a0)
        x = np.cos(d) * np.sin(r - a0) / cosc
        y = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(r - a0)) / cosc
        return x, y, cosc

    xs, ys, _ = proj(c[:, 0], c[:, 1])
    px, py, cosc = proj(ra, dec)
    nxt = [(i + 1) % 4 for i in range(4)]
    cross = np.stack([(xs[j] - xs[i]) * (py - ys[i]) - (ys[j] - ys[i]) * (px - xs[i])
                      for i, j in zip(range(4), nxt)])
    return (cosc > 0) & (np.all(cross >= 0, axis=0) | np.all(cross <= 0, axis=0))


def _sibling(sci: Path, suffix: str) -> str:
    """Path of another product of a science image's quadrant."""
    return str(sci.with_name(sci.name.replace("sciimg.fits", suffix)))


def _meta(img: dict, references: dict) -> dict:
    """The output columns that come from the science image and its reference."""
    rfid, ref_start, ref_end = references.get(
        (img["field_id"], img["filter_code"], img["ccd_id"], img["qid"]), (None, None, None))
    return {"field": img["field_id"], "ccdid": img["ccd_id"], "qid": img["qid"],
            "filter": _FILTER.get(img["filter_code"], img["filter_code"]), "pid": img["pid"],
            "infobitssci": img["infobits"],
            "sciinpseeing": (img["seeing_arcsec"] or np.nan) / _PIXSCALE,
            "scibckgnd": img["sky"], "zpmaginpsci": img["magzp"],
            "zpmaginpsciunc": img["magzpunc"], "zpmaginpscirms": img["magzprms"],
            "clrcoeff": img["clrcoeff"], "clrcoeffunc": img["clrcounc"],
            "ncalmatches": img["n_calibrators"], "exptime": img.get("exptime"),
            "adpctdif1": img["astrom_rms_ra"], "adpctdif2": img["astrom_rms_dec"],
            "programid": img["programid"], "jd": img["obsjd"], "rfid": rfid,
            "refjdstart": ref_start, "refjdend": ref_end}


def plan_tasks(images: list[dict], positions: np.ndarray, root: Path,
               references: dict) -> list[dict]:
    """One task per difference image that covers at least one requested position.

    Parameters
    ----------
    images : list of dict
        ``science_images`` rows (with ``exptime``) the requester may see, in the JD range.
    positions : (n, 2) array
        Requested (ra, dec), deg.
    root : Path
        Archive root.
    references : dict
        ``(field_id, filter_code, ccd_id, qid) -> (rfid, jd_start, jd_end)``.

    Returns
    -------
    list of dict
        Each with ``diff``, ``psf``, ``mask`` paths, ``meta`` (output metadata columns),
        ``index``, ``ra``, ``dec`` (the positions on the image).
    """
    from ..alerts.sky import separation_deg

    pos = np.asarray(positions, float).reshape(-1, 2)
    tasks = []
    for img in images:
        sci = root / img["path"]
        diff = Path(_sibling(sci, _DIFF))
        if not diff.is_file() or not img.get("footprint"):
            continue
        sep = separation_deg(img["ra"], img["dec"], pos[:, 0], pos[:, 1])
        near = sep <= (img["radius_deg"] or 1.0)
        idx = np.flatnonzero(near)
        if len(idx):
            idx = idx[inside_footprint(pos[idx, 0], pos[idx, 1], json.loads(img["footprint"]))]
        if not len(idx):
            continue
        tasks.append({"diff": str(diff), "psf": _sibling(sci, "diffimgpsf.fits"),
                      "mask": _sibling(sci, "mskimg.fits"), "meta": _meta(img, references),
                      "index": idx.tolist(), "ra": pos[idx, 0].tolist(),
                      "dec": pos[idx, 1].tolist()})
    return tasks


def _read_first_image(path: str):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None and np.ndim(hdu.data) == 2:
                return np.asarray(hdu.data, np.float64), hdu.header.copy()
    raise ValueError(f"{path}: no 2-D image")


def _aperture(D, bad, var, psf, x, y):
    """Aperture fluxes (9 px diameter, curve-of-growth corrected with the PSF) and errors."""
    from photutils.aperture import CircularAperture, aperture_photometry

    r = APERTURE_DIAMETER_PX / 2
    ky, kx = psf.shape
    frac = float(aperture_photometry(psf / psf.sum(), CircularAperture([(kx // 2, ky // 2)], r))
                 ["aperture_sum"][0])
    corr = 1.0 / frac if frac > 0 else np.nan
    ap = CircularAperture(np.c_[x, y], r)
    data = np.where(bad, 0.0, D)
    flux = np.asarray(aperture_photometry(data, ap, mask=bad)["aperture_sum"], float) * corr
    npix = np.asarray(aperture_photometry((~bad).astype(float), ap)["aperture_sum"], float)
    err = np.sqrt(np.clip(npix, 0, None) * var) * corr
    return flux, err, corr


def _procstatus(flags: np.ndarray) -> list[str]:
    from ..core.forcedphot import FORCED_FLAGS as F

    out = []
    for f in np.asarray(flags, int):
        codes = []
        if f & (F["MASKED"] | F["NONFINITE"]):
            codes.append(PROCSTATUS["BAD_PIXELS"])
        if f & F["PARTIAL"]:
            codes.append(PROCSTATUS["PARTIAL"])
        if f & (F["OFF_IMAGE"] | F["NO_DATA"]):
            codes.append(PROCSTATUS["NO_DATA"])
        out.append(",".join(str(c) for c in codes) or "0")
    return out


def measure_image(task: dict) -> pd.DataFrame:
    """Forced PSF (and aperture) photometry of one difference image at the task's positions.

    Parameters
    ----------
    task : dict
        From :func:`plan_tasks`.

    Returns
    -------
    pandas.DataFrame
        :data:`FORCED_COLUMNS`, one row per position.
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import FITSFixedWarning, WCS

    from ..core.forcedphot import forced_photometry
    from ..flags import BAD_PIXEL_BITS

    D, header = _read_first_image(task["diff"])
    psf = np.asarray(fits.getdata(task["psf"]), np.float64)
    bad = ~np.isfinite(D)
    if Path(task["mask"]).is_file():
        bad |= (np.asarray(fits.getdata(task["mask"])).astype(np.int64) & BAD_PIXEL_BITS) != 0
    good = D[~bad]
    sigpix = float(1.4826 * np.median(np.abs(good - np.median(good)))) if good.size else np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, relax=True).celestial
    x, y = wcs.all_world2pix(np.asarray(task["ra"]), np.asarray(task["dec"]), 0, quiet=True)
    var = sigpix**2 if np.isfinite(sigpix) and sigpix > 0 else np.nan
    fp = forced_photometry(np.where(bad, np.nan, D), psf, var, np.c_[x, y], mask=bad)
    apf, ape, corr = _aperture(D, bad, var, psf, x, y)
    n = len(task["index"])
    out = pd.DataFrame({"index": task["index"], "ra": task["ra"], "dec": task["dec"]})
    for key, value in task["meta"].items():
        out[key] = [value] * n
    zpdiff = float(header.get("MAGZP", task["meta"]["zpmaginpsci"] or np.nan))
    out["scisigpix"] = sigpix
    out["diffmaglim"] = float(header.get("DIFMGLIM", np.nan))
    out["zpdiff"] = zpdiff
    out["forcediffimflux"], out["forcediffimfluxunc"] = fp.flux, fp.err
    out["forcediffimsnr"], out["forcediffimchisq"] = fp.snr, fp.chi2
    out["forcediffimfluxap"], out["forcediffimfluxuncap"] = apf, ape
    with np.errstate(invalid="ignore", divide="ignore"):
        out["forcediffimsnrap"] = apf / ape
    out["aperturecorr"] = corr
    out["procstatus"] = _procstatus(fp.flags)
    return out[list(FORCED_COLUMNS)]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(FORCED_COLUMNS))
    return pd.concat(frames, ignore_index=True).sort_values(["index", "jd", "pid"], kind="stable") \
        .reset_index(drop=True)


def run_forced(client, tasks: list[dict]):
    """Submit the tasks to a ``distributed.Client``; returns a future of the result table."""
    futures = client.map(measure_image, tasks, pure=False)
    return client.submit(_concat, futures, pure=False)
