"""Known solar-system objects in alert packets: ``ssdistnr``, ``ssmagnr``, ``ssnamenr``.

Runs on the workers, once per quadrant, when the alert packets are built
(:func:`zsds.stages.alerts.build_alerts`): every candidate within ``radius_arcsec`` (5 by
default, the issue's tagging radius; ZTF's alert documentation says 30) of a known asteroid's
ephemeris at its mid-exposure time gets the distance (arcsec), the V magnitude and the
designation of the nearest one; the fields stay null otherwise.

Cost: the orbit file is read once per process (cached on its path and modification time);
a coarse geometric ephemeris of every object is computed once per process and 6-hour slot
(cached), and keeps only the objects that can reach the quadrant; the precise ephemerides
(:func:`zsds.core.known_objects.predict_positions`: two-body, light time, topocentric for
Palomar) are computed for those only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.ephemeris import ELEMENT_COLUMNS, ephemeris_arrays, jd_utc_to_mjd_tdb, observer_state
from ..core.known_objects import angular_separation, predict_positions, tag_candidates
from ..errors import InputDataError

__all__ = ["read_orbits", "tag_records", "SS_FIELDS"]

#: The alert fields filled here.
SS_FIELDS = ("ssdistnr", "ssmagnr", "ssnamenr")
_SLOT_DAYS = 0.25
_MARGIN_DEG = 1.0


def read_orbits(path) -> pd.DataFrame:
    """The known-asteroid orbit file (CSV or Parquet), cached per process."""
    p = Path(path)
    if not p.exists():
        raise InputDataError(str(p), "known-asteroid orbit file not found (moving.orbits_path)")
    return _read_cached(str(p.resolve()), p.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _read_cached(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


@lru_cache(maxsize=8)
def _coarse(path: str, mtime_ns: int, jd0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometric positions (deg) and total rates (deg/day) of every object at `jd0`."""
    orbits = _read_cached(path, mtime_ns)
    elements = {c: orbits[c].to_numpy(float) for c in ELEMENT_COLUMNS}
    o_r, o_v = observer_state(jd0)
    eph = ephemeris_arrays(elements, jd_utc_to_mjd_tdb(jd0), o_r, o_v, light_time=False)
    return (eph["ra"][:, 0], eph["dec"][:, 0],
            np.hypot(eph["dra_cosdec"][:, 0], eph["ddec"][:, 0]))


def _mid_jd(records) -> np.ndarray:
    """Mid-exposure JD of each record (``jd`` is the exposure start, ZTF convention)."""
    return np.array([float(r["jd"]) + float(r.get("exptime") or 30.0) / 172800.0
                     for r in records])


def tag_records(records: list[dict], orbits_path, *, radius_arcsec: float = 5.0) -> int:
    """Fill ``ssdistnr``, ``ssmagnr``, ``ssnamenr`` of candidate records in place.

    Parameters
    ----------
    records : list of dict
        Candidate records of one quadrant image (``jd`` at the exposure start, ``ra``,
        ``dec``; ``exptime`` in seconds, 30 if absent).
    orbits_path : path-like
        Known-asteroid orbit file.
    radius_arcsec : float
        Tagging radius.

    Returns
    -------
    int
        Number of records tagged.
    """
    if not records:
        return 0
    p = Path(orbits_path)
    orbits = read_orbits(p)
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    cands = pd.DataFrame({"jd": _mid_jd(records), "ra": [float(r["ra"]) for r in records],
                          "dec": [float(r["dec"]) for r in records]})
    n_tagged = 0
    for jd, group in cands.groupby("jd"):
        ra0, dec0 = float(np.median(group["ra"])), float(np.median(group["dec"]))
        radius = float(np.max(angular_separation(ra0, dec0, group["ra"], group["dec"]))) + 0.01
        jd0 = float(np.round(jd / _SLOT_DAYS) * _SLOT_DAYS)
        c_ra, c_dec, rate = _coarse(*key, jd0)
        near = angular_separation(ra0, dec0, c_ra, c_dec) < (radius + _MARGIN_DEG
                                                              + rate * abs(jd - jd0))
        if not near.any():
            continue
        exposure = pd.DataFrame({"expid": [0], "jd": [jd], "ra": [ra0], "dec": [dec0],
                                 "radius_deg": [radius]})
        pred = predict_positions(orbits.loc[near].reset_index(drop=True), exposure)
        tags = tag_candidates(group, pred, radius_arcsec)
        hit = tags["ssnamenr"].notna().to_numpy()
        for i, dist, mag, name in zip(tags.index[hit], tags["ssdistnr"].to_numpy()[hit],
                                      tags["ssmagnr"].to_numpy()[hit],
                                      tags["ssnamenr"].to_numpy()[hit]):
            records[i].update(ssdistnr=float(dist), ssmagnr=float(mag), ssnamenr=str(name))
        n_tagged += int(hit.sum())
    return n_tagged
