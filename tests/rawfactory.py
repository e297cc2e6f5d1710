"""Small, valid raw camera files with known truth, independent of the simulator.

:func:`make_detector` draws the static truth of a quadrant (bias pattern, pixel response,
illumination, dark current, defects); :func:`make_raw` writes one 9-HDU raw file of a CCD
through :func:`zsds.io.raw.write_raw` and returns the per-quadrant truth (row-wise bias level
as added to both data and overscan, and the noiseless linear signal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from zsds.camera import load_camera
from zsds.camera.detector import delinearize
from zsds.io.paths import filefracday_from_jd
from zsds.io.raw import RawQuadrant, write_raw

HOT, DEAD, BADCOL = 1, 2, 4
GAIN, READ_NOISE_E, SATURATE = 6.0, 9.0, 57000.0
FILTER_IDS = {"zg": ("ZTF_g", 1), "zr": ("ZTF_r", 2), "zi": ("ZTF_i", 3)}
TYPE_CODES = {"object": "o", "bias": "b", "flat": "f", "dark": "d"}


@dataclass
class QuadTruth:
    """Static truth of one quadrant (numpy ``[y, x]``)."""

    bias_pattern: np.ndarray      # ADU beyond the row-wise level
    response: np.ndarray          # small-scale pixel response, median 1
    illumination: np.ndarray      # large-scale dome illumination
    dark: np.ndarray              # e-/s
    defects: np.ndarray           # HOT | DEAD | BADCOL bits


@dataclass
class RawTruth:
    path: Path
    bias_rows: list = field(default_factory=list)   # per qid-1: ADU per row
    signal: list = field(default_factory=list)      # per qid-1: linear DN (noiseless)


def _smooth(rng, shape, scale, rms):
    small = (shape[0] // scale + 4, shape[1] // scale + 4)
    f = ndimage.zoom(rng.standard_normal(small), (shape[0] / (small[0] - 3),
                                                  shape[1] / (small[1] - 3)), order=3)
    f = f[: shape[0], : shape[1]]
    return rms * (f - f.mean()) / f.std()


def make_detector(shape, seed, *, defects=True) -> QuadTruth:
    """Static truth with PRNU (0.8% per pixel, 0.3% on 30-pixel scales), hot and dead pixels
    (1 in 2000 / 4000) and two partial bad columns (one low-response, one hot)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    bias = _smooth(rng, shape, 100, 0.9) + rng.normal(0, 0.2, nx)[None, :]
    resp = (1 + rng.normal(0, 0.008, shape)) * (1 + _smooth(rng, shape, 30, 0.003))
    dark = np.full(shape, 1.0)
    bits = np.zeros(shape, np.uint8)
    if defects:
        hot = rng.choice(ny * nx, ny * nx // 2000, replace=False)
        dead = rng.choice(ny * nx, ny * nx // 4000, replace=False)
        bias.flat[hot] += rng.uniform(15, 300, hot.size)
        dark.flat[hot] = rng.uniform(30, 3000, hot.size)
        bits.flat[hot] |= HOT
        resp.flat[dead] = rng.uniform(0.0, 0.5, dead.size)
        bits.flat[dead] |= DEAD
        c1, c2 = rng.choice(np.arange(5, nx - 5), 2, replace=False)
        y1, y2 = rng.integers(0, ny // 2, 2)
        resp[y1:, c1] *= 0.4
        bias[y2:, c2] += 40.0
        bits[y1:, c1] |= BADCOL
        bits[y2:, c2] |= BADCOL
    resp /= np.median(resp)
    yy, xx = np.mgrid[0:ny, 0:nx] / max(shape)
    illum = 1.0 - 0.12 * ((xx - 0.3) ** 2 + (yy - 0.6) ** 2) + 0.05 * xx
    return QuadTruth(bias.astype(np.float32), resp.astype(np.float32),
                     illum.astype(np.float32), dark.astype(np.float32), bits)


def floating_bias(ny, rng, level=470.0):
    """A row-wise bias level wandering by a few ADU on ~100-row scales."""
    y = np.arange(ny)
    return (level + 2.0 * np.sin(2 * np.pi * y / 120 + rng.uniform(0, 6.3))
            + 1.5 * np.sin(2 * np.pi * y / 377 + rng.uniform(0, 6.3)) + 3.0 * y / ny)


def _primary(imgtype, expid, obsjd, ccd_id, filter_code, exptime, field_id):
    fname, fid = FILTER_IDS.get(filter_code, ("ZTF_r", 2))
    h = fits.Header()
    for k, v in [("ORIGIN", "Zwicky Transient Facility"), ("TELESCOP", "Palomar 48-inch"),
                 ("INSTRUME", "ZTF/MOSAIC"), ("IMGTYPE", imgtype), ("EXPID", expid),
                 ("OBSJD", obsjd), ("OBSMJD", obsjd - 2400000.5),
                 ("SHUTOPEN", "2020-01-01T00:00:00"), ("SHUTCLSD", "2020-01-01T00:00:30"),
                 ("EXPTIME", float(exptime)), ("FILTER", fname), ("FILTERID", fid),
                 ("FIELDID", field_id), ("PROGRMID", 1), ("TELRAD", 10.0), ("TELDECD", 20.0),
                 ("AIRMASS", 1.2), ("CCD_ID", ccd_id), ("PIXSCALE", 1.012)]:
        h[k] = v
    return h


def _quad_header(ccd_id, qid):
    h = fits.Header()
    for k, v in [("CCD_ID", ccd_id), ("AMP_ID", qid - 1), ("GAIN", GAIN),
                 ("READNOI", READ_NOISE_E), ("DARKCUR", 1.0), ("SATURATE", SATURATE),
                 ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", 10.0),
                 ("CRVAL2", 20.0), ("CRPIX1", 1.0), ("CRPIX2", 1.0), ("CD1_1", -2.8e-4),
                 ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", -2.8e-4)]:
        h[k] = v
    return h


def raw_name(imgtype, obsjd, ccd_id, filter_code, field_id=0):
    fc = "bi" if imgtype == "bias" else ("dk" if imgtype == "dark" else filter_code)
    return (f"ztf_{filefracday_from_jd(obsjd)}_{field_id:06d}_{fc}_c{ccd_id:02d}"
            f"_{TYPE_CODES[imgtype]}.fits.fz")


def make_raw(outdir, *, imgtype="bias", expid=1, obsjd=2458849.70, ccd_id=1,
             filter_code="zr", field_id=0, shape=(64, 60), n_overscan=30, seed=0,
             detectors=None, flux=0.0, exptime=None, trail=0.02, edit=None) -> RawTruth:
    """Write one raw file and return its truth.

    Parameters
    ----------
    outdir : path
        Directory of the file (named as the format requires).
    imgtype : str
        ``bias``, ``flat``, ``dark`` or ``object``.
    detectors : list of QuadTruth, optional
        Per-quadrant static truth (default: no defects, flat response).
    flux : float
        Linear DN at response 1 and illumination 1 (flats: ~25000).
    exptime : float, optional
        s; default 0 for biases, 30 otherwise.
    trail : float
        Fraction of the last data column read that leaks into the first overscan columns
        read (what the skipped columns protect against).
    edit : callable, optional
        ``edit(primary, quadrants)`` may damage the file before it is written (tests of bad
        input).
    """
    rng = np.random.default_rng([seed, expid, ccd_id])
    exptime = (0.0 if imgtype == "bias" else 30.0) if exptime is None else exptime
    cam = load_camera()
    truth = RawTruth(Path(outdir) / raw_name(imgtype, obsjd, ccd_id, filter_code, field_id))
    quads = []
    ny, nx = shape
    for qid in (1, 2, 3, 4):
        det = detectors[qid - 1] if detectors else make_detector(shape, 0, defects=False)
        a, b = cam.nonlinearity(ccd_id, qid - 1)
        rows = floating_bias(ny, rng)
        signal = flux * det.response * det.illumination + det.dark * exptime / GAIN
        electrons = rng.poisson(np.maximum(signal, 0) * GAIN)
        raw = delinearize(electrons / GAIN, a, b)
        rn = READ_NOISE_E / GAIN
        raw = raw + det.bias_pattern + rows[:, None] + rng.normal(0, rn, shape)
        ov = rows[:, None] + rng.normal(0, rn, (ny, n_overscan))
        last = raw[:, -1] if qid in (1, 4) else raw[:, 0]
        first = [0, 1] if qid in (1, 4) else [n_overscan - 1, n_overscan - 2]
        for i, col in enumerate(first):
            ov[:, col] += trail * (last - rows) / (i + 1)
        quads.append(RawQuadrant(np.clip(np.round(raw), 0, 65535).astype(np.uint16),
                                 np.clip(np.round(ov), 0, 65535).astype(np.uint16),
                                 _quad_header(ccd_id, qid)))
        truth.bias_rows.append(rows)
        truth.signal.append(signal)
    primary = _primary(imgtype, expid, obsjd, ccd_id, filter_code, exptime, field_id)
    if edit is not None:
        edit(primary, quads)
    write_raw(truth.path, primary, quads)
    return truth


def corrupt_compressed_data(path, hdu=1):
    """Overwrite part of the compressed pixel heap of an HDU (undecompressable file)."""
    with fits.open(path, disable_image_compression=True) as h:
        off, size = h[hdu]._data_offset, h[hdu]._data_size
    raw = bytearray(Path(path).read_bytes())
    raw[off + size // 2: off + size // 2 + 200] = b"\xff" * 200
    Path(path).write_bytes(bytes(raw))


def truncate(path, fraction=0.5):
    """Cut a file to a fraction of its length (an interrupted transfer)."""
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: int(len(raw) * fraction)])
