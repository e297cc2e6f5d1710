"""The camera model: focal-plane geometry, field grid and per-amplifier detector values.

The data files under ``zsds/camera/data`` are copies of ``shared/spec/camera`` (layout, field
grid, non-linearity) plus ``zsds_amplifiers.csv``, the nominal per-amplifier values the
simulator uses. Pipelines take detector values from the headers of the data they process.

Examples
--------
>>> from zsds.camera import load_camera
>>> cam = load_camera()
>>> cam.quadrant(13, 3).rcid
50
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from .detector import Amplifier, delinearize, linearize
from .geometry import (FULL_SHAPE, QuadrantGeometry, fit_quadrant_geometry, tan_deproject,
                       tan_project)

__all__ = ["Camera", "load_camera", "Amplifier", "QuadrantGeometry", "FULL_SHAPE", "linearize",
           "delinearize", "tan_project", "tan_deproject", "rcid_of", "FILTERS"]

#: Filter code -> (FILTER keyword, FILTERID).
FILTERS = {"zg": ("ZTF_g", 1), "zr": ("ZTF_r", 2), "zi": ("ZTF_i", 3)}


def rcid_of(ccd_id: int, qid: int) -> int:
    """Readout-channel ID ``4*(ccd_id-1) + qid - 1`` (0..63)."""
    return 4 * (int(ccd_id) - 1) + int(qid) - 1


def _data_text(name: str) -> str:
    return (resources.files("zsds.camera") / "data" / name).read_text()


def _rows(name: str, delimiter: str = ","):
    lines = [ln for ln in _data_text(name).splitlines() if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter=delimiter))


@dataclass(frozen=True)
class Field:
    """A field of the survey grid (``ztf_fields.txt``); angles in degrees."""

    field_id: int
    ra: float
    dec: float
    ebv: float
    gal_lon: float
    gal_lat: float


class Camera:
    """The ZTF-like camera: 16 CCDs x 4 readout quadrants.

    Built once from package data (:func:`load_camera` caches it); immutable and thread-safe.
    """

    def __init__(self):
        corners: dict[int, list[tuple[float, float]]] = {}
        for row in _rows("ztf_ccd_quad_layout.tbl"):
            corners.setdefault(int(row["Quad"]), []).append((float(row["EW"]), float(row["NS"])))
        self._quads: dict[tuple[int, int], QuadrantGeometry] = {}
        for rcid, pts in sorted(corners.items()):
            ccd, qid = rcid // 4 + 1, rcid % 4 + 1
            pts_arr = np.array(pts)
            self._quads[(ccd, qid)] = fit_quadrant_geometry(ccd, qid, pts_arr[:, 0], pts_arr[:, 1])
        nonlin = {}
        for line in _data_text("ztf_ccd_amp_nonlinearity.txt").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            ccd, _name, amp, a, b = line.split()
            nonlin[(int(ccd), int(amp))] = (float(a), float(b))
        self._amps: dict[tuple[int, int], Amplifier] = {}
        for row in _rows("zsds_amplifiers.csv"):
            key = (int(row["ccd_id"]), int(row["amp_id"]))
            a, b = nonlin[key]
            self._amps[key] = Amplifier(
                ccd_id=key[0], amp_id=key[1], gain=float(row["gain_e_per_adu"]),
                read_noise=float(row["read_noise_e"]),
                dark_current=float(row["dark_current_e_per_s"]),
                saturate=float(row["saturate_adu"]), bias_level=float(row["bias_level_adu"]),
                nl_a=a, nl_b=b)
        self._fields = {}
        for row in _rows("ztf_fields.txt"):
            f = Field(int(row["ID"]), float(row["RA"]), float(row["Dec"]), float(row["Ebv"]),
                      float(row["GalLong"]), float(row["GalLat"]))
            self._fields[f.field_id] = f

    ccd_ids = tuple(range(1, 17))
    qids = (1, 2, 3, 4)

    def quadrant(self, ccd_id: int, qid: int) -> QuadrantGeometry:
        """Geometry of quadrant ``qid`` (1..4) of CCD ``ccd_id`` (1..16)."""
        try:
            return self._quads[(int(ccd_id), int(qid))]
        except KeyError:
            raise ValueError(f"no readout quadrant CCD_ID={ccd_id} qid={qid} "
                             "(CCD_ID 1..16, qid 1..4)") from None

    def amplifier(self, ccd_id: int, qid: int) -> Amplifier:
        """Nominal detector values of the amplifier reading quadrant ``qid`` of ``ccd_id``."""
        try:
            return self._amps[(int(ccd_id), int(qid) - 1)]
        except KeyError:
            raise ValueError(f"no amplifier for CCD_ID={ccd_id} qid={qid}") from None

    def nonlinearity(self, ccd_id: int, amp_id: int) -> tuple[float, float]:
        """Non-linearity coefficients (A, B) of an amplifier (``amp_id`` = qid - 1)."""
        amp = self._amps.get((int(ccd_id), int(amp_id)))
        if amp is None:
            raise ValueError(f"no non-linearity coefficients for CCD_ID={ccd_id} AMP_ID={amp_id}")
        return amp.nl_a, amp.nl_b

    def field(self, field_id: int) -> Field:
        """A field of the grid by ID."""
        try:
            return self._fields[int(field_id)]
        except KeyError:
            raise ValueError(f"FIELDID {field_id} is not in the field grid") from None

    def has_field(self, field_id: int) -> bool:
        return int(field_id) in self._fields

    def nominal_wcs(self, ccd_id: int, qid: int, ra_deg: float, dec_deg: float,
                    shape=FULL_SHAPE):
        """Nominal TAN WCS of a quadrant for a pointing; see :meth:`QuadrantGeometry.nominal_wcs`."""
        return self.quadrant(ccd_id, qid).nominal_wcs(ra_deg, dec_deg, shape)

    def focal_plane_extent(self) -> float:
        """Largest distance of any quadrant corner from the optical axis, degrees."""
        r = 0.0
        for q in self._quads.values():
            for x in (-0.5, FULL_SHAPE[1] - 0.5):
                for y in (-0.5, FULL_SHAPE[0] - 0.5):
                    ew, ns = q.pixel_to_focal(x, y)
                    r = max(r, float(np.hypot(ew, ns)))
        return r


@lru_cache(maxsize=1)
def load_camera() -> Camera:
    """The camera model (built once per process)."""
    return Camera()
