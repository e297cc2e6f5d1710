"""Raw camera files (``shared/spec/raw-camera-format.md``): read, write and validate.

A raw file holds one CCD of one exposure: a primary header (HDU 0, no data), the four
quadrant images (HDU 1..4, unsigned 16-bit ADU as ``BITPIX=16, BZERO=32768``, RICE_1
tile-compressed) and their overscans (HDU 5..8).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from ..errors import RawFormatError
from .paths import BIAS_FILTER_CODES, IMGTYPE_CODES, filefracday_from_jd, parse_raw_name

__all__ = ["RawQuadrant", "RawExposure", "read_raw", "write_raw", "validate_raw",
           "PRIMARY_KEYWORDS", "QUADRANT_KEYWORDS"]

#: Required primary keywords and their Python types.
PRIMARY_KEYWORDS: dict[str, type | tuple] = {
    "ORIGIN": str, "TELESCOP": str, "INSTRUME": str, "IMGTYPE": str, "EXPID": int,
    "OBSJD": float, "OBSMJD": float, "SHUTOPEN": str, "SHUTCLSD": str, "EXPTIME": float,
    "FILTER": str, "FILTERID": int, "FIELDID": int, "PROGRMID": int, "TELRAD": float,
    "TELDECD": float, "AIRMASS": float, "CCD_ID": int, "PIXSCALE": float,
}
#: Required keywords of the quadrant image HDUs.
QUADRANT_KEYWORDS: dict[str, type | tuple] = {
    "CCD_ID": int, "AMP_ID": int, "GAIN": float, "READNOI": float, "DARKCUR": float,
    "SATURATE": float, "CTYPE1": str, "CTYPE2": str, "CRVAL1": float, "CRVAL2": float,
    "CRPIX1": float, "CRPIX2": float, "CD1_1": float, "CD1_2": float, "CD2_1": float,
    "CD2_2": float,
}
OVERSCAN_KEYWORDS: dict[str, type | tuple] = {"CCD_ID": int, "AMP_ID": int}
_FILTER_IDS = {"ZTF_g": 1, "ZTF_r": 2, "ZTF_i": 3}
_FILTER_CODES = {1: "zg", 2: "zr", 3: "zi"}


@dataclass
class RawQuadrant:
    """One readout quadrant as read out.

    Attributes
    ----------
    data : ndarray of uint16, shape (NAXIS2, NAXIS1)
        Image pixels, raw ADU, numpy ``[y, x]``.
    overscan : ndarray of uint16, shape (NAXIS2, n_overscan)
        Overscan columns, raw ADU.
    header : astropy.io.fits.Header
        Quadrant keywords (gain, read noise, approximate WCS, ...).
    """

    data: np.ndarray
    overscan: np.ndarray
    header: fits.Header

    @property
    def qid(self) -> int:
        return int(self.header["AMP_ID"]) + 1


@dataclass
class RawExposure:
    """One raw CCD file: primary header and four quadrants (``quadrants[qid - 1]``; None for a
    quadrant whose pixels were not read, see :func:`read_raw`)."""

    path: Path
    primary: fits.Header
    quadrants: list[RawQuadrant] = field(default_factory=list)

    @property
    def ccd_id(self) -> int:
        return int(self.primary["CCD_ID"])

    @property
    def imgtype(self) -> str:
        return str(self.primary["IMGTYPE"]).strip()


def _type_ok(value, expected) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_keywords(header: fits.Header, spec: dict, where: str) -> list[str]:
    problems = []
    for key, expected in spec.items():
        if key not in header:
            problems.append(f"{where}: missing required keyword {key}")
        elif not _type_ok(header[key], expected):
            problems.append(f"{where}: keyword {key}={header[key]!r} should be "
                            f"{expected.__name__}")
    return problems


def _check_primary_values(hdr: fits.Header) -> list[str]:
    out = []
    imgtype = str(hdr.get("IMGTYPE", "")).strip()
    if "IMGTYPE" in hdr and imgtype not in IMGTYPE_CODES:
        out.append(f"HDU 0: IMGTYPE={imgtype!r} is not one of {sorted(IMGTYPE_CODES)}")
    filt, fid = hdr.get("FILTER"), hdr.get("FILTERID")
    if imgtype in ("object", "flat") and isinstance(filt, str):
        if filt.strip() not in _FILTER_IDS:
            out.append(f"HDU 0: FILTER={filt!r} is not ZTF_g, ZTF_r or ZTF_i")
        elif isinstance(fid, int) and _FILTER_IDS[filt.strip()] != fid:
            out.append(f"HDU 0: FILTERID={fid} disagrees with FILTER={filt!r}")
    ccd = hdr.get("CCD_ID")
    if isinstance(ccd, int) and not 1 <= ccd <= 16:
        out.append(f"HDU 0: CCD_ID={ccd} outside 1..16")
    prog = hdr.get("PROGRMID")
    if isinstance(prog, int) and prog not in (0, 1, 2, 3):
        out.append(f"HDU 0: PROGRMID={prog} is not 0, 1, 2 or 3")
    field_id = hdr.get("FIELDID")
    if imgtype == "object" and isinstance(field_id, int) and field_id <= 0:
        out.append(f"HDU 0: FIELDID={field_id} must be a field of the grid for object exposures")
    exptime = hdr.get("EXPTIME")
    if isinstance(exptime, (int, float)) and exptime < 0:
        out.append(f"HDU 0: EXPTIME={exptime} is negative")
    jd, mjd = hdr.get("OBSJD"), hdr.get("OBSMJD")
    if isinstance(jd, (int, float)) and isinstance(mjd, (int, float)) and abs(jd - 2400000.5 - mjd) > 1e-6:
        out.append(f"HDU 0: OBSMJD={mjd} disagrees with OBSJD={jd}")
    return out


def _check_name(path: Path, hdr: fits.Header) -> list[str]:
    try:
        rn = parse_raw_name(path.name)
    except ValueError as exc:
        return [f"file name: {exc}"]
    out = []
    imgtype = str(hdr.get("IMGTYPE", "")).strip()
    if imgtype in IMGTYPE_CODES and rn.type_code != IMGTYPE_CODES[imgtype]:
        out.append(f"file name: type code {rn.type_code!r} disagrees with IMGTYPE={imgtype!r}")
    if isinstance(hdr.get("CCD_ID"), int) and rn.ccd_id != hdr["CCD_ID"]:
        out.append(f"file name: c{rn.ccd_id:02d} disagrees with CCD_ID={hdr['CCD_ID']}")
    if isinstance(hdr.get("FIELDID"), int) and rn.field_id != hdr["FIELDID"]:
        out.append(f"file name: field {rn.field_id:06d} disagrees with FIELDID={hdr['FIELDID']}")
    if isinstance(hdr.get("OBSJD"), (int, float)):
        ffd = filefracday_from_jd(hdr["OBSJD"])
        if abs(int(ffd[8:]) - int(rn.frac)) > 1 or ffd[:8] != rn.date:
            out.append(f"file name: {rn.filefracday} disagrees with OBSJD={hdr['OBSJD']} "
                       f"({ffd})")
    if imgtype in ("object", "flat") and isinstance(hdr.get("FILTERID"), int):
        code = _FILTER_CODES.get(hdr["FILTERID"])
        if code and rn.filter_code != code:
            out.append(f"file name: filter code {rn.filter_code!r} disagrees with "
                       f"FILTERID={hdr['FILTERID']}")
    if imgtype == "bias" and rn.filter_code not in BIAS_FILTER_CODES + ("zg", "zr", "zi"):
        out.append(f"file name: filter code {rn.filter_code!r} invalid for a bias")
    return out


def _check_image_hdu(hdu, idx: int) -> list[str]:
    if not isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)):
        return [f"HDU {idx}: not an image extension"]
    hdr = hdu.header
    out = []
    if hdr.get("NAXIS") != 2:
        out.append(f"HDU {idx}: NAXIS={hdr.get('NAXIS')} (expected a 2-D image)")
    if hdr.get("BITPIX") != 16 or hdr.get("BZERO", 0) != 32768:
        out.append(f"HDU {idx}: BITPIX={hdr.get('BITPIX')} BZERO={hdr.get('BZERO')} "
                   "(expected unsigned 16-bit: BITPIX=16, BZERO=32768)")
    return out


def _check_structure(path: Path, hdul: fits.HDUList) -> list[str]:
    if len(hdul) != 9:
        return [f"HDU count: {len(hdul)} HDUs (expected 9: primary, 4 quadrants, 4 overscans)"]
    prim = hdul[0].header
    out = _check_keywords(prim, PRIMARY_KEYWORDS, "HDU 0")
    out += _check_primary_values(prim)
    out += _check_name(path, prim)
    shapes, os_rows = [], []
    for i in range(1, 9):
        out += _check_image_hdu(hdul[i], i)
        is_quad = i <= 4
        hdr = hdul[i].header
        out += _check_keywords(hdr, QUADRANT_KEYWORDS if is_quad else OVERSCAN_KEYWORDS,
                               f"HDU {i}")
        amp_expected = (i - 1) % 4
        if isinstance(hdr.get("AMP_ID"), int) and hdr["AMP_ID"] != amp_expected:
            out.append(f"HDU {i}: AMP_ID={hdr['AMP_ID']} (expected {amp_expected})")
        if isinstance(hdr.get("CCD_ID"), int) and isinstance(prim.get("CCD_ID"), int) \
                and hdr["CCD_ID"] != prim["CCD_ID"]:
            out.append(f"HDU {i}: CCD_ID={hdr['CCD_ID']} disagrees with primary "
                       f"CCD_ID={prim['CCD_ID']}")
        shape = (hdr.get("NAXIS2"), hdr.get("NAXIS1"))
        (shapes if is_quad else os_rows).append(shape)
    if len(set(shapes)) > 1:
        out.append(f"HDU 1-4: quadrant shapes differ: {shapes} (NAXIS2, NAXIS1)")
    for q, (qs, osh) in enumerate(zip(shapes, os_rows), start=1):
        if qs[0] != osh[0]:
            out.append(f"HDU {q + 4}: overscan NAXIS2={osh[0]} disagrees with quadrant "
                       f"HDU {q} NAXIS2={qs[0]}")
        if not isinstance(osh[1], int) or osh[1] < 1:
            out.append(f"HDU {q + 4}: overscan NAXIS1={osh[1]} invalid")
    for key in ("GAIN", "READNOI"):
        for i in range(1, 5):
            v = hdul[i].header.get(key)
            if isinstance(v, (int, float)) and v <= 0:
                out.append(f"HDU {i}: {key}={v} must be positive")
    return out


def _load_pixels(hdul: fits.HDUList, qids=(1, 2, 3, 4)) -> tuple[list[np.ndarray], list[str]]:
    """Pixels of the quadrant and overscan HDUs of ``qids`` (None for the others)."""
    arrays, out = [None] * 8, []
    for i in sorted({q for q in qids} | {q + 4 for q in qids}):
        try:
            arr = np.asarray(hdul[i].data)
        except Exception as exc:  # noqa: BLE001 - any decompression failure is a violation
            out.append(f"HDU {i}: pixels cannot be read or decompressed ({type(exc).__name__}: {exc})")
            continue
        if arr is None or arr.ndim != 2:
            out.append(f"HDU {i}: no 2-D pixel data")
        arrays[i - 1] = arr
    return arrays, out


def _open(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return fits.open(path, memmap=False, lazy_load_hdus=False)


def _inspect(path: Path, load: bool, qids=(1, 2, 3, 4)):
    """Open, check and optionally load a raw file: (primary, quadrant list, violations).

    Headers and structure are always checked in full; pixels are decompressed (and their
    readability checked) for the quadrants ``qids`` only."""
    path = Path(path)
    if not path.exists():
        return None, None, ["file: does not exist"]
    try:
        hdul = _open(path)
    except Exception as exc:  # noqa: BLE001
        return None, None, [f"file: not a readable FITS file ({type(exc).__name__}: {exc})"]
    with hdul:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                hdul.verify("silentfix")
            problems = _check_structure(path, hdul)
        except Exception as exc:  # noqa: BLE001
            return None, None, [f"file: damaged FITS structure ({type(exc).__name__}: {exc})"]
        if len(hdul) != 9:
            return None, None, problems
        arrays, pix_problems = _load_pixels(hdul, qids)
        problems += pix_problems
        if problems or not load:
            return hdul[0].header.copy(), None, problems
        quads = [RawQuadrant(arrays[q].astype(np.uint16, copy=False), arrays[q + 4]
                             .astype(np.uint16, copy=False), hdul[q + 1].header.copy())
                 if q + 1 in qids else None for q in range(4)]
        return hdul[0].header.copy(), quads, []


def validate_raw(path: str | os.PathLike) -> list[str]:
    """Check a raw file against the raw camera format; every violation is reported.

    Parameters
    ----------
    path : path-like
        The raw file.

    Returns
    -------
    list of str
        Violations, each naming the HDU and keyword (empty if the file is valid).
    """
    return _inspect(Path(path), load=False)[2]


def read_raw(path: str | os.PathLike, qids=(1, 2, 3, 4)) -> RawExposure:
    """Read and validate a raw file.

    Parameters
    ----------
    path : path-like
    qids : sequence of int
        Quadrants whose pixels are read (a per-quadrant task reads one; the others are None
        in ``quadrants``). Headers are checked for all four.

    Raises
    ------
    RawFormatError
        If the file violates the format; ``.violations`` lists every problem.
    """
    path = Path(path)
    unknown = set(qids) - {1, 2, 3, 4}
    if unknown:
        raise ValueError(f"qids must be in 1..4, not {sorted(unknown)}")
    primary, quads, problems = _inspect(path, load=True, qids=tuple(qids))
    if problems:
        raise RawFormatError(str(path), problems)
    return RawExposure(path, primary, quads)


def write_raw(path: str | os.PathLike, primary: fits.Header, quadrants: list[RawQuadrant]) -> Path:
    """Write a raw file (RICE_1 tile-compressed), atomically (temporary file, then rename).

    Parameters
    ----------
    path : path-like
        Destination.
    primary : astropy.io.fits.Header
        Primary keywords.
    quadrants : list of RawQuadrant
        Four quadrants in ``qid`` order; data and overscan are written as uint16.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdus = [fits.PrimaryHDU(header=primary)]
    for q in quadrants:
        hdus.append(fits.CompImageHDU(np.asarray(q.data, dtype=np.uint16), header=q.header,
                                      compression_type="RICE_1"))
    for q in quadrants:
        oh = fits.Header()
        oh["CCD_ID"] = q.header["CCD_ID"]
        oh["AMP_ID"] = q.header["AMP_ID"]
        oh["EXTNAME"] = f"OVERSCAN{q.header['AMP_ID'] + 1}"
        hdus.append(fits.CompImageHDU(np.asarray(q.overscan, dtype=np.uint16), header=oh,
                                      compression_type="RICE_1"))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path
