"""Survey schedule of simulated nights (``shared/spec/survey-inputs.md``).

Each night: afternoon biases and dome flats, then object exposures every 45 s or more
while the Sun is 12 deg below the horizon, visiting each field two or more times, 30 minutes
or more apart where the number of fields allows, alternating filters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_sun
from astropy.time import Time

from ..core.ephemeris import offline_iers

__all__ = ["make_schedule", "PALOMAR_LOCATION", "airmass_at", "SCHEDULE_COLUMNS"]

PALOMAR_LOCATION = EarthLocation.from_geodetic(-116.8598 * u.deg, 33.3573 * u.deg, 1668 * u.m)
SCHEDULE_COLUMNS = ["expid", "obsjd", "field_id", "filter", "exptime", "imgtype", "program_id"]
_CADENCE_S = 45.0
_EXPTIME_S = 30.0


def _altaz(jd, ra=None, dec=None):
    """Alt-az at Palomar; UT1 may be extrapolated (a second of UT1 is nothing for airmass)."""
    with offline_iers():
        t = Time(jd, format="jd", scale="utc")
        frame = AltAz(obstime=t, location=PALOMAR_LOCATION)
        target = get_sun(t) if ra is None else SkyCoord(ra * u.deg, dec * u.deg)
        return target.transform_to(frame)


def airmass_at(jd, ra_deg, dec_deg):
    """Airmass (sec z, capped at 10) of positions seen from Palomar at JD (UTC)."""
    alt = _altaz(np.atleast_1d(jd), np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)).alt.deg
    return np.where(alt > 5.7, 1.0 / np.sin(np.radians(np.maximum(alt, 5.7))), 10.0)


def _dark_window(night: str) -> tuple[float, float]:
    """JD (UTC) of the start and end of astronomical (-12 deg) darkness of a UTC night."""
    t0 = Time(f"{night[:4]}-{night[4:6]}-{night[6:]}T00:00:00", scale="utc").jd
    grid = t0 + np.arange(0, 16 * 60, 5) / 1440.0
    dark = _altaz(grid).alt.deg < -12.0
    if not dark.any():
        return t0 + 3 / 24, t0 + 12 / 24
    idx = np.flatnonzero(dark)
    return float(grid[idx[0]]), float(grid[idx[-1]])


def _observable_window(night: str, coords: list[tuple[float, float]]) -> tuple[float, float]:
    """Part of the dark window when the fields are highest (mean airmass < 1.5 if ever)."""
    start, end = _dark_window(night)
    if not coords:
        return start, end
    grid = np.linspace(start, end, 97)
    am = np.mean([airmass_at(grid, np.full(grid.size, ra), np.full(grid.size, dec))
                  for ra, dec in coords], axis=0)
    good = am < max(1.5, float(am.min()) + 0.05)
    idx = np.flatnonzero(good)
    return float(grid[idx[0]]), float(grid[idx[-1]])


def _visit_order(fields, filters, n_exp, rng):
    """(field, filter) of each object exposure: fields cycled, filter alternating per pass."""
    visits = []
    passes = 0
    while len(visits) < n_exp:
        filt = filters[passes % len(filters)]
        for f in fields:
            visits.append((f, filt))
        passes += 1
    return visits[:n_exp]


def _night_offsets(nights: int, span_days: int, seed: int) -> list[int]:
    """Days after the first night of each night: consecutive, or spread over ``span_days``."""
    if span_days <= nights:
        return list(range(nights))
    rng = np.random.default_rng([seed, 13, span_days])
    later = rng.choice(np.arange(1, span_days), size=nights - 1, replace=False)
    return [0] + sorted(int(d) for d in later)


def _visit_times(start: float, end: float, n: int, rng) -> np.ndarray:
    """JD of ``n`` exposures in [start, end]: evenly spaced (centred if few), or at random."""
    span = end - start
    gap = _CADENCE_S / 86400
    if rng is not None and span > n * gap:
        return start + np.sort(rng.uniform(0, span - n * gap, n)) + np.arange(n) * gap
    step = max(gap, span / max(n, 1))
    if step * n < span:  # few exposures: centre them in the window
        start += (span - step * n) / 2
    return start + np.arange(n) * step


def make_schedule(start_night: str, nights: int, fields: list[int], field_coords: dict,
                  filters=("zr", "zg"), exposures_per_night: int = 700, seed: int = 1,
                  n_bias: int = 10, n_flat: int = 10, n_dark: int = 0,
                  program_weights=(0.6, 0.3, 0.1), span_days: int = 0,
                  scatter_visits: bool = False) -> pd.DataFrame:
    """Build the schedule of simulated nights.

    Parameters
    ----------
    start_night : str
        First night, ``YYYYMMDD`` (UTC date).
    nights : int
        Number of consecutive nights.
    fields : list of int
        Field IDs to observe.
    field_coords : dict
        ``field_id -> (ra_deg, dec_deg)``.
    filters : sequence of str
        Filter codes to alternate (``zg``, ``zr``, ``zi``).
    exposures_per_night : int
        Object exposures per night (~700 for a real ZTF night).
    seed : int
    n_bias, n_flat, n_dark : int
        Calibration exposures per night (flats per filter).
    program_weights : tuple of 3 floats
        Probabilities of program IDs 1, 2, 3 for an object visit.
    span_days : int
        If larger than ``nights``, the nights are spread at random over this many days
        (the first is ``start_night``), as weather and the survey's field rotation spread a
        field's visits; otherwise they are consecutive.
    scatter_visits : bool
        Place a night's object exposures at random times in its observable window (45 s or
        more apart), as a scheduler interleaving many fields does, instead of evenly; even
        spacing repeated every night makes strong aliases in periodograms.

    Returns
    -------
    pandas.DataFrame
        Columns ``expid, obsjd, field_id, filter, exptime, imgtype, program_id, night``,
        ordered by time. ``expid`` = days since 2017-01-01 x 10000 + sequence in the night.
    """
    rows = []
    for k in _night_offsets(nights, span_days, seed):
        night_t = Time(f"{start_night[:4]}-{start_night[4:6]}-{start_night[6:]}", scale="utc") + k * u.day
        night = night_t.strftime("%Y%m%d")
        rng = np.random.default_rng([seed, 11, int(night)])
        day_index = int(round(night_t.jd - Time("2017-01-01", scale="utc").jd))
        seq = 0
        t = night_t.jd + 5 / 1440.0

        def add(jd, field_id, filt, exptime, imgtype, prog):
            nonlocal seq
            seq += 1
            rows.append((day_index * 10000 + seq, jd, field_id, filt, exptime, imgtype, prog, night))

        for _ in range(n_bias):
            add(t, 0, "zr", 0.0, "bias", 1)
            t += 20 / 86400
        for filt in filters:
            for _ in range(n_flat):
                add(t, 0, filt, 10.0, "flat", 1)
                t += 30 / 86400
        for _ in range(n_dark):
            add(t, 0, "zr", _EXPTIME_S, "dark", 1)
            t += 45 / 86400
        start, end = _observable_window(night, [field_coords[f] for f in fields if f in field_coords])
        times = _visit_times(start, end, exposures_per_night, rng if scatter_visits else None)
        visits = _visit_order(list(fields), list(filters), exposures_per_night, rng)
        progs = rng.choice([1, 2, 3], size=len(visits), p=list(program_weights))
        for i, (field_id, filt) in enumerate(visits):
            add(times[i], field_id, filt, _EXPTIME_S, "object", int(progs[i]))
    df = pd.DataFrame(rows, columns=SCHEDULE_COLUMNS + ["night"])
    return df.sort_values("obsjd", kind="stable").reset_index(drop=True)
