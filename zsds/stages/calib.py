"""Calibration products of a night: master bias, high-frequency flat, bad-pixel mask.

``make_bias(night, config)``: per CCD and quadrant, the night's registered bias frames are
prepared (overscan subtracted, linearised) and combined (:func:`zsds.core.calib.combine_bias`)
into ``..._bias.fits``, ``..._biasunc.fits`` and ``..._biaslog.txt`` (filter code ``OO``).

``make_flat(night, config)``: per CCD, quadrant and filter, the night's dome flats are
prepared with the nearest valid master bias subtracted and combined
(:func:`zsds.core.calib.combine_flat`) into ``..._hifreqflat.fits``,
``..._hifreqflatunc.fits`` and ``..._hifreqflatlog.txt``; a bad-pixel mask from the master
bias and the flat (:func:`zsds.core.calib.bad_pixel_mask`) is written as
``cal/.../badpix/<fc>/ccdCC/qQ/ztf_<night>_<fc>_cCC_qQ_badpix.fits``.

Every product is registered in ``calibrations`` with validity ``mid_jd +/- validity_days``
(``mid_jd``: mean OBSJD of the inputs). Products are written atomically and only when their
bytes change, and rows are updated only when their content changes, so re-running a night
leaves archive and database identical. Headers and logs carry no wall-clock times.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .. import __version__
from ..archive.verify import record_checksums
from ..camera import load_camera, rcid_of
from ..core import calib as kern
from ..core.prepare import prepare_quadrant
from ..db import ops
from ..errors import CalibrationNotFoundError
from ..io.paths import ArchiveLayout

__all__ = ["make_bias", "make_flat", "CalibReport", "DEFAULT_VALIDITY_DAYS", "MIN_FRAMES"]

#: Half-width of the validity interval of a product, days.
DEFAULT_VALIDITY_DAYS = 15.0
#: Fewest frames combined into a product.
MIN_FRAMES = 3


@dataclass
class CalibReport:
    """What a calibration run produced: ``(caltype, filter_code, ccd_id, qid, path, status)``
    per product, status ``new``, ``updated`` or ``same``."""

    products: list[tuple] = field(default_factory=list)

    def summary(self) -> str:
        by = {}
        for p in self.products:
            by[p[5]] = by.get(p[5], 0) + 1
        return f"{len(self.products)} products: " + ", ".join(f"{n} {s}" for s, n in
                                                              sorted(by.items()))


# -- reading -----------------------------------------------------------------------------------
def _read_quadrant(path: Path, qid: int):
    """(data, overscan, header) of one quadrant of a raw file (already validated at ingest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False) as hdul:
            return (np.asarray(hdul[qid].data).astype(np.uint16),
                    np.asarray(hdul[qid + 4].data).astype(np.uint16), hdul[qid].header.copy())


def _prepared_stack(files: list[dict], layout: ArchiveLayout, ccd_id: int, qid: int,
                    master_bias: np.ndarray | None = None):
    a, b = load_camera().nonlinearity(ccd_id, qid - 1)
    images, header = [], None
    for f in files:
        data, ov, header = _read_quadrant(layout.root / f["path"], qid)
        prep = prepare_quadrant(data, ov, qid, float(header["GAIN"]), float(header["SATURATE"]),
                                a, b, read_noise=float(header["READNOI"]),
                                master_bias=master_bias)
        images.append(prep.image)
    return np.stack(images), header


# -- writing -----------------------------------------------------------------------------------
def _write_if_changed(path: Path, data: bytes) -> str:
    """Atomically write ``data`` unless the file already holds exactly it; return sha256."""
    sha = hashlib.sha256(data).hexdigest()
    if path.exists() and path.read_bytes() == data:
        return sha
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sha


def _fits_bytes(image: np.ndarray, header: fits.Header) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(image, header=header).writeto(buf)  # no CHECKSUM: its comment is dated
    return buf.getvalue()


def _header(caltype, night, fc, ccd_id, qid, raw_hdr, files, what, bunit) -> fits.Header:
    h = fits.Header()
    h["CALTYPE"] = (caltype, "calibration product type")
    h["PRODUCT"] = (what, "content of this file")
    h["NIGHT"] = (night, "UTC date of the input exposures")
    h["FILTER"] = (fc, "filter code (OO for bias)")
    h["CCD_ID"], h["QID"], h["AMP_ID"] = ccd_id, qid, qid - 1
    h["RCID"] = rcid_of(ccd_id, qid)
    h["GAIN"] = (float(raw_hdr["GAIN"]), "e-/ADU")
    h["READNOI"] = (float(raw_hdr["READNOI"]), "e-")
    h["NFRAMES"] = (len(files), "input frames")
    h["MIDJD"] = (float(np.mean([f["obsjd"] for f in files])), "mean OBSJD of inputs")
    h["BUNIT"] = bunit
    h["ZSDSVER"] = (__version__, "zsds version")
    return h


def _log_text(caltype, night, fc, ccd_id, qid, files, params: dict, qa: dict) -> str:
    lines = [f"zsds {__version__} {caltype} calibration", f"night {night} filter {fc} "
             f"CCD_ID {ccd_id} qid {qid} rcid {rcid_of(ccd_id, qid)}",
             f"inputs ({len(files)}):"]
    lines += [f"  {f['filename']} EXPID={f['expid']} OBSJD={f['obsjd']:.6f} "
              f"sha256={f['sha256'][:16]}" for f in files]
    lines.append("parameters: " + json.dumps(params, sort_keys=True))
    lines += [f"qa {k} = {v:.6g}" if isinstance(v, float) else f"qa {k} = {v}"
              for k, v in sorted(qa.items())]
    return "\n".join(lines) + "\n"


def _register(engine, layout, caltype, night, fc, ccd_id, qid, files, paths, sha, qa,
              validity_days) -> str:
    mid = float(np.mean([f["obsjd"] for f in files]))
    rel = {k: (p.relative_to(layout.root).as_posix() if p else None) for k, p in paths.items()}
    status = ops.register_calibration(engine, dict(
        caltype=caltype, night=night, filter_code=fc, ccd_id=ccd_id, qid=qid,
        path=rel["main"], unc_path=rel.get("unc"), log_path=rel.get("log"), sha256=sha,
        n_frames=len(files), mid_jd=mid, valid_from_jd=mid - validity_days,
        valid_to_jd=mid + validity_days, status="valid", qa=qa))
    # the main image's checksum is in calibrations.sha256; its companions are products
    record_checksums(engine, layout.root, [p for k, p in paths.items() if k != "main" and p])
    return status


def _group(files: list[dict], *keys) -> dict:
    out: dict = {}
    for f in files:
        out.setdefault(tuple(f[k] for k in keys), []).append(f)
    return out


def _check_frames(files, what, night, ccd_id, fc, min_frames):
    if len(files) < min_frames:
        raise CalibrationNotFoundError(
            f"night {night} CCD_ID={ccd_id} filter {fc}: {len(files)} {what} frame(s), "
            f"at least {min_frames} needed")


# -- bias ------------------------------------------------------------------------------------
def make_bias(night: str, config, *, engine=None, validity_days: float = DEFAULT_VALIDITY_DAYS,
              min_frames: int = MIN_FRAMES, nsigma: float = 3.0) -> CalibReport:
    """Master bias and its uncertainty for every CCD quadrant with biases in a night.

    Parameters
    ----------
    night : str
        ``YYYYMMDD`` (UTC).
    config : ZsdsConfig
    engine : sqlalchemy.Engine, optional
    validity_days : float
        Half-width of the validity interval registered.
    min_frames : int
        Fewest bias frames per CCD.
    nsigma : float
        Outlier rejection threshold.

    Raises
    ------
    CalibrationNotFoundError
        If the night has no registered bias frames, or a CCD has fewer than ``min_frames``.
    """
    layout = ArchiveLayout(config.archive.root)
    engine = engine or ops.engine_from_config(config)
    files = ops.raw_files_for_night(engine, night, "bias")
    if not files:
        raise CalibrationNotFoundError(
            f"night {night}: no bias exposures registered (ingest the night's raw bias files "
            "first)")
    report = CalibReport()
    for (ccd_id,), group in sorted(_group(files, "ccd_id").items()):
        _check_frames(group, "bias", night, ccd_id, "OO", min_frames)
        for qid in (1, 2, 3, 4):
            stack, hdr = _prepared_stack(group, layout, ccd_id, qid)
            res = kern.combine_bias(stack, nsigma=nsigma)
            report.products.append(_write_bias(engine, layout, night, ccd_id, qid, group, hdr,
                                               res, validity_days, nsigma))
    return report


def _write_bias(engine, layout, night, ccd_id, qid, files, raw_hdr, res, validity_days,
                nsigma):
    paths = {k: layout.cal_path(night, "bias", "OO", ccd_id, qid, sfx)
             for k, sfx in (("main", ".fits"), ("unc", "unc.fits"), ("log", "log.txt"))}
    rn_adu = float(raw_hdr["READNOI"]) / float(raw_hdr["GAIN"])
    qa = {"median": float(np.median(res.image)), "rms": kern.robust_sigma(res.image),
          "median_frame_noise": float(np.median(res.std)), "readnoise_adu": rn_adu,
          "median_unc": float(np.median(res.unc)), "n_frames": len(files)}
    sha = _write_if_changed(paths["main"], _fits_bytes(res.image, _header(
        "bias", night, "OO", ccd_id, qid, raw_hdr, files, "master bias", "DN")))
    _write_if_changed(paths["unc"], _fits_bytes(res.unc, _header(
        "bias", night, "OO", ccd_id, qid, raw_hdr, files, "master bias 1-sigma unc", "DN")))
    _write_if_changed(paths["log"], _log_text("bias", night, "OO", ccd_id, qid, files,
                                              {"nsigma": nsigma}, qa).encode())
    status = _register(engine, layout, "bias", night, "OO", ccd_id, qid, files, paths, sha,
                       qa, validity_days)
    return ("bias", "OO", ccd_id, qid, paths["main"], status)


# -- flat --------------------------------------------------------------------------------------
def make_flat(night: str, config, *, engine=None, validity_days: float = DEFAULT_VALIDITY_DAYS,
              min_frames: int = MIN_FRAMES, nsigma: float = 3.0, block: int = 128
              ) -> CalibReport:
    """High-frequency flats, their uncertainties and bad-pixel masks of a night.

    Parameters
    ----------
    night : str
        ``YYYYMMDD`` (UTC).
    config : ZsdsConfig
    engine : sqlalchemy.Engine, optional
    validity_days : float
        Half-width of the validity interval registered.
    min_frames : int
        Fewest flats per CCD and filter.
    nsigma : float
        Outlier rejection threshold.
    block : int
        Scale (pixels) of the large-scale structure removed from the flat.

    Raises
    ------
    CalibrationNotFoundError
        If the night has no registered dome flats, or no valid master bias exists for a
        quadrant (the message names night, CCD, quadrant and filter).
    """
    layout = ArchiveLayout(config.archive.root)
    engine = engine or ops.engine_from_config(config)
    files = ops.raw_files_for_night(engine, night, "flat")
    if not files:
        raise CalibrationNotFoundError(
            f"night {night}: no dome-flat exposures registered (ingest the night's raw flat "
            "files first)")
    report = CalibReport()
    for (ccd_id, fc), group in sorted(_group(files, "ccd_id", "filter_code").items()):
        _check_frames(group, "flat", night, ccd_id, fc, min_frames)
        for qid in (1, 2, 3, 4):
            bias_row = ops.find_calibration(engine, "bias", ccd_id, qid, fc, night)
            bias = fits.getdata(layout.root / bias_row["path"]).astype(np.float32)
            bias_unc = fits.getdata(layout.root / bias_row["unc_path"]).astype(np.float32)
            stack, hdr = _prepared_stack(group, layout, ccd_id, qid, master_bias=bias)
            res = kern.combine_flat(stack, nsigma=nsigma, block=block)
            report.products += _write_flat(engine, layout, night, fc, ccd_id, qid, group, hdr,
                                           res, bias, bias_unc, bias_row, validity_days,
                                           dict(nsigma=nsigma, block=block))
    return report


def _write_flat(engine, layout, night, fc, ccd_id, qid, files, raw_hdr, res, bias, bias_unc,
                bias_row, validity_days, params):
    paths = {k: layout.cal_path(night, "hifreqflat", fc, ccd_id, qid, sfx)
             for k, sfx in (("main", ".fits"), ("unc", "unc.fits"), ("log", "log.txt"))}
    mask = kern.bad_pixel_mask(bias, bias_unc, res.image)
    qa = {"rms": kern.robust_sigma(res.image), "median_unc": float(np.median(res.unc)),
          "n_frames": len(files), "bias": bias_row["path"],
          "masked_fraction": float((mask != 0).mean())}
    for name, bit in kern.MASK_BITS.items():
        qa[f"n_{name.lower()}"] = int(((mask & bit) != 0).sum())
    mk = lambda what, unit: _header("hifreqflat", night, fc, ccd_id, qid, raw_hdr, files,  # noqa: E731
                                    what, unit)
    sha = _write_if_changed(paths["main"], _fits_bytes(res.image, mk("hi-freq flat", "")))
    _write_if_changed(paths["unc"], _fits_bytes(res.unc, mk("hi-freq flat 1-sigma unc", "")))
    _write_if_changed(paths["log"], _log_text("hifreqflat", night, fc, ccd_id, qid, files,
                                              params, qa).encode())
    out = [("hifreqflat", fc, ccd_id, qid, paths["main"], _register(
        engine, layout, "hifreqflat", night, fc, ccd_id, qid, files, paths, sha, qa,
        validity_days))]
    out.append(_write_mask(engine, layout, night, fc, ccd_id, qid, files, raw_hdr, mask,
                           validity_days))
    return out


def _write_mask(engine, layout, night, fc, ccd_id, qid, files, raw_hdr, mask, validity_days):
    path = layout.cal_path(night, "badpix", fc, ccd_id, qid, ".fits")
    hdr = _header("badpix", night, fc, ccd_id, qid, raw_hdr, files, "bad-pixel mask", "")
    for name, bit in kern.MASK_BITS.items():
        hdr[f"M{name}"[:8]] = (bit, f"mask bit value: {name}")
    sha = _write_if_changed(path, _fits_bytes(mask, hdr))
    qa = {"masked_fraction": float((mask != 0).mean())}
    status = _register(engine, layout, "badpix", night, fc, ccd_id, qid, files, {"main": path},
                       sha, qa, validity_days)
    return ("badpix", fc, ccd_id, qid, path, status)
