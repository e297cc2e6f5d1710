"""Lightcurves: cone search over the lightcurve store, the public ZTF lightcurve API, periodograms.

``GET /cgi-bin/ZTF/nph_light_curves`` takes the parameters of IRSA's ZTF lightcurve service
(``ID``, ``POS=CIRCLE ra dec radius_deg``, ``BANDNAME``, ``TIME`` (MJD range), ``NOBS_MIN``,
``BAD_CATFLAGS_MASK``, ``FORMAT``) and answers with its columns (``oid, expid, hjd, mjd, mag,
magerr, catflags, filtercode, ra, dec, chi, sharp, filefracday, field, ccdid, qid, limitmag,
magzp, magzprms, clrcoeff, clrcounc, exptime, airmass, programid``), so scripts written for the
public service work against zsds. ``GET /lightcurves`` is the same with lower-case parameters
(radius in arcsec); ``GET /lightcurves/objects`` returns objects with their metrics;
``GET /lightcurves/periodogram`` a Lomb-Scargle periodogram (nifty-ls) of one object.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.time import Time
from fastapi import APIRouter, Depends, Query

from . import lcquery
from .access import Principal, get_principal
from .common import ID, MAX_ID, bad_request, check_radius, get_ctx, parse_filters, table_response
from .context import ApiContext

__all__ = ["router", "irsa_table", "IRSA_COLUMNS", "parse_pos", "parse_time", "periodogram"]

router = APIRouter(tags=["lightcurves"])

#: Columns of the public ZTF lightcurve service, in its order.
IRSA_COLUMNS = ("oid", "expid", "hjd", "mjd", "mag", "magerr", "catflags", "filtercode", "ra",
                "dec", "chi", "sharp", "filefracday", "field", "ccdid", "qid", "limitmag", "magzp",
                "magzprms", "clrcoeff", "clrcounc", "exptime", "airmass", "programid")
#: Palomar Observatory (P48), for heliocentric times.
PALOMAR = EarthLocation.from_geodetic(-116.8597 * u.deg, 33.3563 * u.deg, 1706 * u.m)
#: Fewest usable epochs of a periodogram.
MIN_PERIODOGRAM_EPOCHS = 3
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SEP = re.compile(r"[\s,]+")

Format = Literal["json", "csv", "ipac_table", "votable", "fits", "parquet"]


def parse_pos(text: str, max_radius_deg: float) -> tuple[float, float, float]:
    """``CIRCLE ra dec radius`` (deg; spaces, ``+`` or commas between) -> (ra, dec, radius_deg)."""
    parts = [p for p in _SEP.split(str(text).strip()) if p]
    numeric = all(re.fullmatch(_NUM, p) for p in parts[1:])
    if len(parts) != 4 or parts[0].upper() != "CIRCLE" or not numeric:
        raise bad_request(f"POS must be 'CIRCLE <ra> <dec> <radius>' in degrees, not {text!r}")
    ra, dec, radius = (float(p) for p in parts[1:])
    if not (0 <= ra < 360 and -90 <= dec <= 90):
        raise bad_request(f"POS: ra must be in [0, 360) and dec in [-90, 90], not ({ra}, {dec})")
    if not (0 < radius <= max_radius_deg):
        raise bad_request(f"POS: radius must be > 0 and <= {max_radius_deg:g} deg, not {radius}")
    return ra, dec, radius


def parse_time(text: str | None) -> tuple[float, float]:
    """``TIME=t1 t2`` (MJD; ``-inf``/``inf`` allowed) -> (t1, t2); None -> unbounded."""
    if text is None or not str(text).strip():
        return -math.inf, math.inf
    parts = [p for p in _SEP.split(str(text).strip()) if p]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 2 or any(math.isnan(v) for v in vals) or vals[0] > vals[1]:
        raise bad_request(f"TIME must be two MJDs 't1 t2' with t1 <= t2, not {text!r}")
    return vals[0], vals[1]


def _parse_ids(values) -> list[int]:
    out = []
    for v in values or []:
        for part in _SEP.split(str(v).strip()):
            if not part:
                continue
            if not part.isdigit() or len(part) > 18:
                raise bad_request(f"ID must be numeric lightcurve object IDs (oid), not {part!r}")
            out.append(int(part))
    return out


def _hjd(mjd, ra, dec) -> np.ndarray:
    if not len(mjd):
        return np.zeros(0)
    from ..core.ephemeris import offline_iers
    with offline_iers():
        t = Time(np.asarray(mjd, float), format="mjd", scale="utc", location=PALOMAR)
        ltt = t.light_travel_time(SkyCoord(np.asarray(ra, float), np.asarray(dec, float), unit="deg"),
                                  "heliocentric")
        return (t.utc + ltt).jd


def irsa_table(res: lcquery.LcResult, *, filters=None, mjd_range=(-math.inf, math.inf),
               bad_catflags_mask: int = 0, nobs_min: int = 0) -> pd.DataFrame:
    """Visible detections of a lightcurve query in the public ZTF service's columns.

    Parameters
    ----------
    res : LcResult
        With detections.
    filters : list of str, optional
        Filter codes to keep.
    mjd_range : (float, float)
        Inclusive MJD range.
    bad_catflags_mask : int
        Epochs with ``catflags & mask != 0`` are dropped.
    nobs_min : int
        Lightcurves (oid) with fewer remaining epochs are dropped.

    Returns
    -------
    pandas.DataFrame
        :data:`IRSA_COLUMNS`, sorted by ``oid, mjd``.
    """
    d = res.detections
    if d is None:
        return pd.DataFrame(columns=list(IRSA_COLUMNS))
    keep = (d["mjd"] >= mjd_range[0]) & (d["mjd"] <= mjd_range[1])
    if bad_catflags_mask:
        keep &= (d["catflags"].astype(np.int64) & int(bad_catflags_mask)) == 0
    if filters:
        keep &= d["filter_code"].isin(filters)
    d = d[keep]
    if nobs_min > 0 and len(d):
        counts = d.groupby("oid")["oid"].transform("size")
        d = d[counts >= nobs_min]
    out = pd.DataFrame({
        "oid": d["oid"].astype(np.int64), "expid": d["expid"].astype(np.int64),
        "hjd": _hjd(d["mjd"], d["ra"], d["dec"]), "mjd": d["mjd"], "mag": d["mag"],
        "magerr": d["mag_err"], "catflags": d["catflags"].astype(np.int64),
        "filtercode": d["filter_code"], "ra": d["ra"], "dec": d["dec"], "chi": d["chi2"],
        "sharp": d["sharpness"], "filefracday": d["filefracday"].astype(np.int64),
        "field": d["field_id"].astype(np.int64), "ccdid": d["ccd_id"].astype(np.int64),
        "qid": d["qid"].astype(np.int64), "limitmag": d["maglim"], "magzp": d["magzp"],
        "magzprms": d["magzprms"], "clrcoeff": d["clrcoeff"], "clrcounc": d["clrcounc"],
        "exptime": d["exptime"], "airmass": d["airmass"],
        "programid": d["programid"].astype(np.int64)})
    return out.sort_values(["oid", "mjd"], kind="stable").reset_index(drop=True)


def _query(ctx, principal, ids, pos) -> lcquery.LcResult:
    """Lightcurves by object IDs or by a cone ``pos = (ra, dec, radius_arcsec)``."""
    if ids and pos:
        raise bad_request("give ID or POS, not both")
    if ids:
        return lcquery.by_ids(ctx, principal, ids)
    if pos:
        ra, dec, radius_arcsec = pos
        return lcquery.cone(ctx, principal, ra, dec, radius_arcsec, detections=True)
    raise bad_request("give ID (object IDs) or POS=CIRCLE ra dec radius")


@router.get("/cgi-bin/ZTF/nph_light_curves", summary="Lightcurves (public ZTF service parameters)")
def nph_light_curves(
    ID: list[str] | None = Query(None, description="Object IDs (oid), repeated or comma-separated"),
    POS: str | None = Query(None, description="CIRCLE <ra> <dec> <radius>, degrees"),
    BANDNAME: str | None = Query(None, description="g, r, i (comma-separated)"),
    TIME: str | None = Query(None, description="MJD range 't1 t2'"),
    BAD_CATFLAGS_MASK: int = Query(0, ge=0, le=2**31 - 1,
                                   description="Drop epochs with catflags & mask"),
    NOBS_MIN: int = Query(0, ge=0, description="Fewest epochs of a returned lightcurve"),
    COLLECTION: str | None = Query(None, description="Accepted for compatibility; "
                                                     "zsds serves its live store"),
    FORMAT: str = Query("votable", description="csv, ipac_table, votable, parquet (or json, fits)"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Lightcurves by object ID or cone, with the parameters of IRSA's ZTF lightcurve API."""
    fmt = FORMAT.strip().lower()
    if fmt not in ("csv", "ipac_table", "ipac", "votable", "vot", "parquet", "json", "fits"):
        raise bad_request(f"FORMAT must be csv, ipac_table, votable or parquet, not {FORMAT!r}")
    max_deg = ctx.config.api.max_cone_radius_arcsec / 3600.0
    pos = parse_pos(POS, max_deg) if POS is not None else None
    pos = (pos[0], pos[1], pos[2] * 3600.0) if pos else None
    filters, mjd_range = parse_filters(BANDNAME), parse_time(TIME)
    res = _query(ctx, principal, _parse_ids(ID), pos)
    table = irsa_table(res, filters=filters, mjd_range=mjd_range,
                       bad_catflags_mask=BAD_CATFLAGS_MASK, nobs_min=NOBS_MIN)
    return table_response(table, fmt, name="lightcurves")


@router.get("/lightcurves", summary="Lightcurves by cone or object ID")
def lightcurves_endpoint(
    ra: float | None = Query(None, ge=0, lt=360, allow_inf_nan=False, description="Centre, deg"),
    dec: float | None = Query(None, ge=-90, le=90, allow_inf_nan=False, description="Centre, deg"),
    radius_arcsec: float = Query(5.0, gt=0, allow_inf_nan=False, description="Cone radius, arcsec"),
    oid: list[ID] | None = Query(None, description="Object IDs instead of a cone"),
    filter: list[str] | None = Query(None, description="zg, zr, zi"),
    mjd_start: float | None = Query(None, allow_inf_nan=False),
    mjd_end: float | None = Query(None, allow_inf_nan=False),
    bad_catflags_mask: int = Query(0, ge=0, le=2**31 - 1),
    nobs_min: int = Query(0, ge=0),
    format: Format = Query("json"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Epochs of the lightcurves within a cone (or of given objects), public-service columns."""
    pos = None
    if oid is None:
        if ra is None or dec is None:
            raise bad_request("give ra and dec (cone) or oid")
        pos = (ra, dec, check_radius(ctx, radius_arcsec))
    res = _query(ctx, principal, oid or [], pos)
    lo = -math.inf if mjd_start is None else mjd_start
    hi = math.inf if mjd_end is None else mjd_end
    table = irsa_table(res, filters=parse_filters(filter), mjd_range=(lo, hi),
                       bad_catflags_mask=bad_catflags_mask, nobs_min=nobs_min)
    return table_response(table, format, name="lightcurves")


@router.get("/lightcurves/objects", summary="Lightcurve objects (with metrics) in a cone")
def objects_endpoint(
    ra: float = Query(..., ge=0, lt=360, allow_inf_nan=False),
    dec: float = Query(..., ge=-90, le=90, allow_inf_nan=False),
    radius_arcsec: float = Query(5.0, gt=0, allow_inf_nan=False),
    filter: list[str] | None = Query(None, description="zg, zr, zi"),
    format: Format = Query("json"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Objects of the lightcurve store within a cone, nearest first, with every metric.

    ``metrics_complete = false`` marks objects with proprietary epochs this user may not see:
    their metrics are withheld (null).
    """
    res = lcquery.cone(ctx, principal, ra, dec, check_radius(ctx, radius_arcsec))
    objs = res.objects.drop(columns=[c for c in ("Norder", "Dir", "Npix") if c in res.objects])
    filters = parse_filters(filter)
    if filters:
        objs = objs[objs["filter_code"].isin(filters)]
    return table_response(objs, format, name="objects")


def periodogram(t, y, dy, fmin: float, fmax: float, nfreq: int) -> pd.DataFrame:
    """Lomb-Scargle periodogram (nifty-ls, standard normalisation) of a lightcurve.

    Parameters
    ----------
    t : array
        Times, days (sorted here).
    y, dy : array
        Magnitudes and their errors.
    fmin, fmax : float
        Frequency range, 1/day.
    nfreq : int
        Number of frequencies.

    Returns
    -------
    pandas.DataFrame
        ``frequency`` (1/d), ``period`` (d), ``power``.
    """
    import nifty_ls

    order = np.argsort(t)
    t, y, dy = (np.asarray(a, float)[order] for a in (t, y, dy))
    res = nifty_ls.lombscargle(t, y, dy, fmin=fmin, fmax=fmax, Nf=nfreq, normalization="standard")
    freq = np.asarray(res.freq(), float)
    with np.errstate(divide="ignore"):
        period = np.where(freq > 0, 1.0 / freq, np.inf)
    power = np.asarray(res.power, float)
    return pd.DataFrame({"frequency": freq, "period": period, "power": power})


@router.get("/lightcurves/periodogram", summary="Lomb-Scargle periodogram of one object")
def periodogram_endpoint(
    oid: int = Query(..., ge=0, le=MAX_ID, description="Object ID"),
    fmin: float | None = Query(None, gt=0, allow_inf_nan=False, description="1/day"),
    fmax: float | None = Query(None, gt=0, le=1000, allow_inf_nan=False, description="1/day"),
    nfreq: int | None = Query(None, ge=2, le=1_000_000, description="Number of frequencies"),
    bad_catflags_mask: int = Query(32768, ge=0, le=2**31 - 1),
    format: Format = Query("json"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Periodogram of the visible epochs of one object (nifty-ls); JSON adds the best period.

    Defaults: ``fmin = 0.5 / baseline``, ``fmax = 20 /d``, 10 frequencies per ``1 / baseline``.
    """
    if fmin is not None and fmax is not None and fmin >= fmax:
        raise bad_request(f"fmin ({fmin}) must be below fmax ({fmax})")
    table = irsa_table(lcquery.by_ids(ctx, principal, [oid]), bad_catflags_mask=bad_catflags_mask)
    table = table[["mjd", "mag", "magerr"]].astype(float)
    good = table[np.isfinite(table["mag"]) & np.isfinite(table["magerr"]) & (table["magerr"] > 0)]
    if len(good) < MIN_PERIODOGRAM_EPOCHS:
        raise bad_request(f"object {oid} has {len(good)} usable visible epochs; a periodogram "
                          f"needs {MIN_PERIODOGRAM_EPOCHS}")
    span = float(good["mjd"].max() - good["mjd"].min())
    if span <= 0:
        raise bad_request(f"object {oid}: all epochs at one time")
    fmin = fmin if fmin is not None else 0.5 / span
    fmax = fmax if fmax is not None else max(20.0, 2 * fmin)
    if fmin >= fmax:
        raise bad_request(f"fmin ({fmin}) must be below fmax ({fmax})")
    nfreq = nfreq or int(np.clip(math.ceil(10 * span * (fmax - fmin)), 100, 1_000_000))
    pg = periodogram(good["mjd"], good["mag"], good["magerr"], fmin, fmax, nfreq)
    best = pg.iloc[int(np.argmax(pg["power"].to_numpy()))] if len(pg) else None
    meta = {"oid": int(oid), "n_epochs": int(len(good)),
            "best_period": float(best["period"]) if best is not None else None,
            "best_power": float(best["power"]) if best is not None else None}
    return table_response(pg, format, name=f"periodogram_{oid}", meta=meta)
