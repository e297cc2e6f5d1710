"""Minor Planet Center 80-column optical observation records.

Column layout (MPC "Format for optical astrometric observations", 1-based, inclusive):

=======  ==================================================================
1-5      packed minor-planet number (blank if unnumbered)
6-12     packed provisional designation, or a temporary designation
13       discovery asterisk (``*``)
14       note 1 (blank)
15       note 2: observation type, ``C`` for CCD
16-32    date of observation (UTC, mid-exposure): ``YYYY MM DD.ddddd``
33-44    observed RA (J2000): ``HH MM SS.sss``
45-56    observed Dec (J2000): ``sDD MM SS.ss``
57-65    blank
66-70    observed magnitude (``F5.2``; blank if none)
71       band (``g``, ``r``, ``i``)
72-77    blank
78-80    observatory code (``I41``: Palomar Mountain, ZTF)
=======  ==================================================================
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.time import Time

__all__ = ["OBSERVATORY_CODE", "BANDS", "pack_number", "pack_provisional",
           "format_observation", "format_observations", "write_observations",
           "parse_observation"]

#: MPC code of the Palomar/ZTF site.
OBSERVATORY_CODE = "I41"
#: ZTF filter ID -> MPC band letter.
BANDS = {1: "g", 2: "r", 3: "i"}

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PROVISIONAL = re.compile(r"^(\d{2})(\d{2}) ([A-HJ-Y])([A-HJ-Z])(\d*)$")


def pack_number(number: int) -> str:
    """Packed 5-character form of a minor-planet number (``1`` -> ``00001``)."""
    if not 0 < number < 620000:
        if 620000 <= number < 620000 + 62**4:
            n, out = number - 620000, ""
            for _ in range(4):
                n, d = divmod(n, 62)
                out = _B62[d] + out
            return "~" + out
        raise ValueError(f"minor-planet number {number} cannot be packed")
    if number < 100000:
        return f"{number:05d}"
    head, tail = divmod(number, 10000)
    return _B62[head] + f"{tail:04d}"


def pack_provisional(designation: str) -> str:
    """Packed 7-character provisional designation (``2026 WA12`` -> ``K26W12A``)."""
    m = _PROVISIONAL.match(designation.strip())
    if m is None:
        raise ValueError(f"not a provisional designation: {designation!r}")
    century, year, half, letter, cycle = m.groups()
    cyc = int(cycle or 0)
    if not 18 <= int(century) <= 21 or cyc >= 620:
        raise ValueError(f"provisional designation out of range: {designation!r}")
    head, tail = divmod(cyc, 10)
    return f"{chr(ord('A') + int(century) - 10)}{year}{half}{_B62[head]}{tail}{letter}"


def _date(jd: float) -> str:
    t = Time(jd, format="jd", scale="utc")
    ymd = t.to_value("iso", subfmt="date")
    day0 = Time(ymd, scale="utc")
    frac = (t - day0).to_value("day")
    return f"{ymd[:4]} {ymd[5:7]} {int(ymd[8:10]) + frac:08.5f}"


def _sexagesimal(value: float, decimals: int, width: int) -> tuple[int, int, str]:
    """(units, minutes, seconds text) with rounding carried into minutes and units."""
    scale = 10**decimals
    total = int(round(abs(value) * 3600.0 * scale))
    units, rest = divmod(total, 3600 * scale)
    minutes, sec = divmod(rest, 60 * scale)
    return units, minutes, f"{sec / scale:0{width}.{decimals}f}"


def format_observation(jd: float, ra: float, dec: float, *, mag: float = np.nan,
                       fid: int | None = None, designation: str = "", number: int | None = None,
                       discovery: bool = False, code: str = OBSERVATORY_CODE) -> str:
    """One 80-column record. `designation`: a provisional one (packed here) or a temporary
    designation of at most 7 characters (written as is)."""
    try:
        desig = pack_provisional(designation)
    except ValueError:
        if len(designation) > 7:
            raise ValueError(f"designation {designation!r} is longer than 7 characters") from None
        desig = designation
    h, m, s = _sexagesimal(np.remainder(ra, 360.0) / 15.0, 3, 6)
    if h == 24:
        h = 0
    d, dm, ds = _sexagesimal(dec, 2, 5)
    sign = "-" if dec < 0 else "+"
    mag_txt = f"{mag:5.2f}" if np.isfinite(mag) else " " * 5
    band = BANDS.get(int(fid), " ") if fid is not None and np.isfinite(mag) else " "
    line = (f"{pack_number(number) if number else '':>5}{desig:<7}{'*' if discovery else ' '}"
            f" C{_date(jd):<17}{h:02d} {m:02d} {s:<6}{sign}{d:02d} {dm:02d} {ds:<5}"
            f"{'':9}{mag_txt}{band}{'':6}{code:>3}")
    if len(line) != 80:
        raise AssertionError(f"MPC record has {len(line)} columns: {line!r}")
    return line


def format_observations(obs: pd.DataFrame) -> list[str]:
    """Records of a table with ``designation``, ``jd``, ``ra``, ``dec``, optional ``magpsf``,
    ``fid``, ``discovery``; the first record of each designation is marked as discovery
    when ``discovery`` is absent."""
    obs = obs.sort_values(["designation", "jd"], kind="stable")
    first = ~obs["designation"].duplicated()
    disc = obs["discovery"] if "discovery" in obs else first
    mags = obs["magpsf"] if "magpsf" in obs else pd.Series(np.nan, index=obs.index)
    fids = obs["fid"] if "fid" in obs else pd.Series(None, index=obs.index)
    return [format_observation(r.jd, r.ra, r.dec, mag=float(mg), fid=f, designation=r.designation,
                               discovery=bool(dc))
            for r, mg, f, dc in zip(obs.itertuples(index=False), mags, fids, disc)]


def write_observations(obs: pd.DataFrame, path) -> Path:
    """Write :func:`format_observations` records to `path`, one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = format_observations(obs)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def parse_observation(line: str) -> dict:
    """Fields of an 80-column record (the inverse of :func:`format_observation`)."""
    if len(line.rstrip("\n")) != 80:
        raise ValueError(f"an MPC record has 80 columns, got {len(line.rstrip())}")
    yyyy, mm, dd = line[15:32].split()
    day = float(dd)
    jd = Time(f"{yyyy}-{mm}-{int(day):02d}", scale="utc").jd + (day - int(day))
    h, m, s = line[32:44].split()
    d, dm, ds = line[44:56].split()
    sign = -1.0 if d.startswith("-") else 1.0
    mag = line[65:70].strip()
    return {"number": line[0:5].strip(), "designation": line[5:12].strip(),
            "discovery": line[12] == "*", "note2": line[14], "jd": float(jd),
            "ra": 15.0 * (int(h) + int(m) / 60.0 + float(s) / 3600.0),
            "dec": sign * (abs(int(d)) + int(dm) / 60.0 + float(ds) / 3600.0),
            "mag": float(mag) if mag else np.nan, "band": line[70].strip(),
            "code": line[77:80]}
