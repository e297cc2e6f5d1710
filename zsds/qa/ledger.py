"""The data-volume ledger of a night: bytes in and out, compression, projected yearly volume.

In the spirit of the WFCAM data-flow document: what came in (raw files, from the database and
checked on disk), what the pipeline wrote per product type (a scan of the night's ``sci/``,
``cal/``, ``alerts/`` trees and the reference products of the quadrants observed), how well
each compresses, and what a year of survey would need at tonight's rate.

FITS sizes are read from the headers only (no pixel is decompressed): the *uncompressed* size
of a file is the size of the equivalent plain FITS file, i.e. every HDU's header plus its data
``|BITPIX|/8 * NAXIS1 * NAXIS2 ...`` (``ZBITPIX``/``ZNAXISn`` for tile-compressed images),
padded to 2880-byte blocks.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..camera import FULL_SHAPE
from ..io.paths import ArchiveLayout

__all__ = ["FitsSize", "fits_size", "scan_products", "raw_volume", "product_volume",
           "ProjectionAssumptions", "project_yearly", "product_suffix"]

_BLOCK = 2880
_CARD = 80
_SUFFIX_RE = re.compile(r"_q\d_(?P<suffix>.+)$")


@dataclass(frozen=True)
class FitsSize:
    """Sizes of a FITS file, bytes: on disk, and as an uncompressed FITS file."""

    file_bytes: int
    uncompressed_bytes: int
    n_hdus: int
    compressed: bool


def _pad(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _header(fh) -> tuple[dict, int] | None:
    """Cards of the next header (keyword -> raw value string) and its size in bytes."""
    cards: dict[str, str] = {}
    size = 0
    while True:
        block = fh.read(_BLOCK)
        if not block:
            return None if size == 0 else (cards, size)
        if len(block) < _BLOCK:
            raise ValueError("truncated FITS header")
        size += _BLOCK
        for i in range(0, _BLOCK, _CARD):
            card = block[i:i + _CARD].decode("ascii", errors="replace")
            key = card[:8].strip()
            if key == "END":
                return cards, size
            if card[8:10] == "= ":
                cards.setdefault(key, card[10:].split("/")[0].strip())


def _int(cards: dict, key: str, default: int = 0) -> int:
    try:
        return int(float(cards.get(key, default)))
    except ValueError:
        return default


def _data_bytes(cards: dict, prefix: str = "") -> int:
    naxis = _int(cards, f"{prefix}NAXIS")
    if naxis == 0:
        return 0
    n = abs(_int(cards, f"{prefix}BITPIX")) // 8
    for i in range(1, naxis + 1):
        n *= _int(cards, f"{prefix}NAXIS{i}")
    return n


def fits_size(path: str | os.PathLike) -> FitsSize:
    """On-disk and uncompressed sizes of a FITS file, from its headers only.

    Tile-compressed image HDUs (``ZIMAGE = T``) count as their ``ZNAXISn``/``ZBITPIX``
    image plus their header; other HDUs count as they are (tables with their heap).
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    uncompressed, n_hdus, compressed = 0, 0, False
    with open(path, "rb") as fh:
        while True:
            hdr = _header(fh)
            if hdr is None:
                break
            cards, hsize = hdr
            n_hdus += 1
            stored = _data_bytes(cards) + _int(cards, "PCOUNT")
            stored *= max(_int(cards, "GCOUNT", 1), 1)
            if cards.get("ZIMAGE", "").upper() == "T":
                compressed = True
                uncompressed += hsize + _pad(_data_bytes(cards, "Z"))
            else:
                uncompressed += hsize + _pad(stored)
            fh.seek(_pad(stored), os.SEEK_CUR)
            if fh.tell() >= file_bytes:
                break
    return FitsSize(file_bytes, uncompressed, n_hdus, compressed)


def product_suffix(name: str) -> str:
    """The product type of an archive file name: ``sciimg.fits``, ``biasunc.fits``, ``.avro``.

    zsds products end in ``_q<Q>_<suffix>`` (science, calibration and reference products);
    other files are typed by their extension.
    """
    m = _SUFFIX_RE.search(name)
    if m:
        return m["suffix"]
    suffixes = Path(name).suffixes
    return "".join(suffixes[-2:]) if suffixes[-2:-1] == [".fits"] else (suffixes[-1] if suffixes
                                                                           else name)


def _is_fits(name: str) -> bool:
    return name.endswith((".fits", ".fits.fz", ".fit", ".fts"))


def _file_row(path: Path, area: str, root: Path) -> dict:
    name = path.name
    row = {"area": area, "suffix": product_suffix(name), "path": path.relative_to(root).as_posix(),
           "file_bytes": path.stat().st_size, "uncompressed_bytes": None, "compressed": False}
    if _is_fits(name):
        try:
            size = fits_size(path)
            row.update(file_bytes=size.file_bytes, uncompressed_bytes=size.uncompressed_bytes,
                       compressed=size.compressed)
        except (OSError, ValueError):
            pass
    return row


def scan_products(layout: ArchiveLayout, night: str, references: pd.DataFrame | None = None,
                  observed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every product file of the night, one row each.

    Scans ``sci/YYYY/MMDD``, ``cal/YYYY/MMDD`` and ``alerts/<night>``; for ``ref/``, the
    directories of the (field, filter, CCD, quadrant) combinations in ``observed`` (the
    night's object quadrants: a reference is shared by every night of its field, so it is
    listed but not scaled into the yearly projection).

    Returns
    -------
    DataFrame
        ``area`` (sci, cal, ref, alerts), ``suffix``, ``path`` (relative to the root),
        ``file_bytes``, ``uncompressed_bytes`` (FITS only, else None), ``compressed``.
    """
    root = layout.root
    trees = [("sci", root / "sci" / night[:4] / night[4:8]),
             ("cal", root / "cal" / night[:4] / night[4:8]),
             ("alerts", layout.alerts_dir(night))]
    if observed is not None and not observed.empty:
        combos = observed[["field_id", "filter_code", "ccd_id", "qid"]].drop_duplicates()
        for r in combos.itertuples(index=False):
            trees.append(("ref", layout.ref_dir(int(r.field_id), r.filter_code, int(r.ccd_id),
                                                int(r.qid))))
    rows = []
    for area, top in trees:
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top):
            for f in sorted(files):
                if f.startswith(".") or f.endswith(".tmp"):
                    continue
                rows.append(_file_row(Path(dirpath) / f, area, root))
    cols = ["area", "suffix", "path", "file_bytes", "uncompressed_bytes", "compressed"]
    return pd.DataFrame(rows, columns=cols)


def _ratio(uncompressed, stored) -> float | None:
    if uncompressed is None or not stored or pd.isna(uncompressed):
        return None
    return float(uncompressed) / float(stored)


def raw_volume(raw_files: pd.DataFrame, root: Path) -> dict:
    """Raw bytes in: per image type, from ``raw_files.size_bytes``, checked on disk.

    Returns ``total_bytes`` (sum of ``size_bytes``), ``disk_bytes`` (sum of the files'
    actual sizes; missing files count 0), ``missing`` (files not found), ``uncompressed_bytes``
    and ``compression_ratio`` (uncompressed / on disk), and ``by_imgtype`` rows.
    """
    rows = []
    for r in raw_files.itertuples(index=False):
        path = Path(root) / r.path
        try:
            size = fits_size(path)
            disk, unc = size.file_bytes, size.uncompressed_bytes
        except (OSError, ValueError):
            disk, unc = (path.stat().st_size if path.exists() else 0), None
        rows.append({"imgtype": r.imgtype, "size_bytes": int(r.size_bytes), "disk_bytes": disk,
                     "uncompressed_bytes": unc, "exists": path.exists()})
    df = pd.DataFrame(rows, columns=["imgtype", "size_bytes", "disk_bytes", "uncompressed_bytes",
                                     "exists"])
    by_type = []
    for imgtype, g in df.groupby("imgtype", sort=True):
        unc = g["uncompressed_bytes"]
        unc_sum = int(unc.sum()) if unc.notna().all() else None
        by_type.append({"imgtype": imgtype, "files": int(len(g)),
                        "bytes": int(g["size_bytes"].sum()),
                        "disk_bytes": int(g["disk_bytes"].sum()),
                        "uncompressed_bytes": unc_sum,
                        "compression_ratio": _ratio(unc_sum, int(g["disk_bytes"].sum()))})
    known = df["uncompressed_bytes"].notna().all()
    unc_all = int(df["uncompressed_bytes"].sum()) if known else None
    return {"files": int(len(df)), "total_bytes": int(df["size_bytes"].sum()),
            "disk_bytes": int(df["disk_bytes"].sum()),
            "missing": int((~df["exists"]).sum()) if len(df) else 0,
            "uncompressed_bytes": unc_all,
            "compression_ratio": _ratio(unc_all, int(df["disk_bytes"].sum())),
            "by_imgtype": by_type}


def product_volume(products: pd.DataFrame) -> list[dict]:
    """Bytes out per product type (``area``, ``suffix``): files, bytes, compression ratio."""
    out = []
    for (area, suffix), g in products.groupby(["area", "suffix"], sort=True):
        unc = g["uncompressed_bytes"]
        unc_sum = int(unc.sum()) if unc.notna().all() else None
        stored = int(g["file_bytes"].sum())
        out.append({"area": area, "suffix": suffix, "files": int(len(g)), "bytes": stored,
                    "uncompressed_bytes": unc_sum,
                    "compressed": bool(g["compressed"].any()),
                    "compression_ratio": _ratio(unc_sum, stored)})
    return out


@dataclass(frozen=True)
class ProjectionAssumptions:
    """What the yearly projection assumes (printed in the report).

    Attributes
    ----------
    exposures_per_night : int
        Object exposures of a full night (ZTF takes about 700).
    nights_per_year : int
        Nights with data per year.
    quadrants_per_exposure : int
        Readout quadrants of the camera (16 CCDs x 4).
    full_quadrant_pixels : int
        Pixels of a full-size quadrant (the data of the night may be smaller test quadrants).
    """

    exposures_per_night: int = 700
    nights_per_year: int = 300
    quadrants_per_exposure: int = 64
    full_quadrant_pixels: int = FULL_SHAPE[0] * FULL_SHAPE[1]


def project_yearly(raw: dict, products: list[dict], quadrants: pd.DataFrame, n_exposures: int,
                   assumptions: ProjectionAssumptions = ProjectionAssumptions()) -> dict:
    """The yearly volume at tonight's rate, scaled to a full camera and full night.

    * Per-exposure volume (raw object files, ``sci`` and ``alerts`` products): tonight's bytes
      / exposures x ``exposures_per_night`` x ``nights_per_year`` x (64 / quadrants per
      exposure observed) x (full-size / observed pixels per quadrant).
    * Calibrations (raw bias/flat files, ``cal`` products) are per night: tonight's bytes x
      ``nights_per_year`` x the same camera and pixel scalings.
    * References (``ref``) are built once per field and are not projected.
    """
    a = assumptions
    q_per_exp = (quadrants.groupby("expid").size().mean() if not quadrants.empty else math.nan)
    pix = (quadrants["nx"] * quadrants["ny"]).mean() \
        if not quadrants.empty else math.nan
    camera_scale = a.quadrants_per_exposure / q_per_exp if q_per_exp else math.nan
    pixel_scale = a.full_quadrant_pixels / pix if pix else math.nan
    scale = camera_scale * pixel_scale
    by_type = {t["imgtype"]: t["bytes"] for t in raw["by_imgtype"]}
    raw_obj = by_type.get("object", 0)
    raw_cal = sum(v for k, v in by_type.items() if k != "object")
    area = {}
    for p in products:
        area[p["area"]] = area.get(p["area"], 0) + p["bytes"]
    per_exp_tonight = raw_obj + area.get("sci", 0) + area.get("alerts", 0)
    per_night_fixed = raw_cal + area.get("cal", 0)
    n = max(int(n_exposures), 1)
    nightly = (per_exp_tonight / n * a.exposures_per_night + per_night_fixed) * scale
    rows = {
        "raw_object": raw_obj / n * a.exposures_per_night * scale,
        "raw_calibration": raw_cal * scale,
        "sci": area.get("sci", 0) / n * a.exposures_per_night * scale,
        "alerts": area.get("alerts", 0) / n * a.exposures_per_night * scale,
        "cal": area.get("cal", 0) * scale,
    }
    return {
        "assumptions": {**asdict(a), "observed_quadrants_per_exposure": q_per_exp,
                        "observed_pixels_per_quadrant": pix, "camera_scale": camera_scale,
                        "pixel_scale": pixel_scale, "exposures_tonight": int(n_exposures)},
        "bytes_per_exposure_tonight": per_exp_tonight / n,
        "bytes_per_night": nightly,
        "bytes_per_year": nightly * a.nights_per_year,
        "per_night_by_kind": rows,
        "per_year_by_kind": {k: v * a.nights_per_year for k, v in rows.items()},
    }
