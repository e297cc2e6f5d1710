"""Low-frequency ("low-v") flats from calibrated exposures (``zsds calib lowflat``).

For every quadrant and filter with calibrated exposures in a window of nights, the PSF-fit
photometry of reference stars is compared with the reference catalogue after each exposure's
zero point and colour term; the smooth residual pattern over all exposures becomes a
multiplicative flat (``core.lowflat``), stored as a calibration product ``lowflat`` and
applied by the instrumental-calibration stage after the high-frequency flat. Reprocess the
exposures (``zsds run-night NIGHT --force``) to apply it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.time import Time
from sqlalchemy import select

from ..core import astrometry, lowflat
from ..db import ops
from ..db import schema as s
from ..errors import AlgorithmError, NoWorkFound
from ..io.paths import ArchiveLayout
from ..io.products import read_table, write_image, write_text
from ..io.refcat import apply_proper_motion, read_refcat
from .calibrate import COLOUR_BANDS

__all__ = ["make_lowflats", "LowflatReport"]

log = logging.getLogger(__name__)


@dataclass
class LowflatReport:
    night: str
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"low-frequency flats of {self.night}: {len(self.made)} made, {len(self.skipped)} skipped"


def _images(engine, night: str, days: float) -> list[dict]:
    t = Time(f"{night[:4]}-{night[4:6]}-{night[6:]}T00:00:00", scale="utc").jd + 1.0
    c = s.science_images.c
    stmt = (select(s.science_images).where((c.obsjd >= t - days) & (c.obsjd <= t)
                                           & c.magzp.is_not(None))
            .order_by(c.ccd_id, c.qid, c.filter_code, c.obsjd))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def _residuals(layout, config, img: dict, refcache: dict):
    """(x, y, dmag, weight) of matched reference stars on one calibrated image."""
    cat = read_table(layout.root / img["path"].replace("sciimg.fits", "psfcat.fits"))
    hdr = fits.getheader(layout.root / img["path"])
    key = (img["field_id"], img["ccd_id"], img["qid"])
    if key not in refcache:
        refcache[key] = read_refcat(config.refcat_path, img["ra"], img["dec"], img["radius_deg"] + 0.02)
    ref = refcache[key]
    ra, dec = apply_proper_motion(ref, Time(img["obsjd"], format="jd").jyear)
    band, (c1, c2) = COLOUR_BANDS[img["filter_code"]]
    from astropy.wcs import WCS
    xr, yr = astrometry.sky_to_pixel(WCS(hdr), np.asarray(ra), np.asarray(dec))
    i, j, _ = astrometry.match_catalogs(np.asarray(cat["x"]), np.asarray(cat["y"]), xr, yr, 1.5)
    flux = np.asarray(cat["flux"], float)[i]
    ferr = np.asarray(cat["flux_err"], float)[i]
    mref = ref[band].to_numpy(float)[j]
    colour = ref[c1].to_numpy(float)[j] - ref[c2].to_numpy(float)[j]
    ref_err = ref[f"{band}_err"].to_numpy(float)[j]
    ok = (flux > 0) & np.isfinite(mref) & np.isfinite(colour) & (np.asarray(cat["flags"])[i] == 0)
    ok &= (flux / ferr > 30) & (ref_err < 0.03)
    m_inst = -2.5 * np.log10(np.where(ok, flux, 1.0))
    dmag = mref - m_inst - img["magzp"] - img["clrcoeff"] * colour
    var = (1.0857 * ferr / np.where(ok, flux, 1.0)) ** 2 + ref_err**2 + 0.005**2
    return (np.asarray(cat["x"])[i][ok], np.asarray(cat["y"])[i][ok], dmag[ok], 1.0 / var[ok],
            hdr["NAXIS2"], hdr["NAXIS1"])


def make_lowflats(night: str, config, *, days: float = 30.0, engine=None, degree: int = 3,
                  validity_days: float = 30.0, min_exposures: int = 3) -> LowflatReport:
    """Fit and store the low-frequency flat of every quadrant and filter observed in the
    ``days`` up to ``night`` (inclusive).

    Raises
    ------
    NoWorkFound
        If no calibrated exposure lies in the window.
    """
    engine = engine or ops.init_db(ops.engine_from_config(config))
    layout = ArchiveLayout(config.archive.root)
    images = _images(engine, night, days)
    if not images:
        raise NoWorkFound(f"no calibrated exposures in the {days:g} days up to {night}; run "
                          "zsds run-night first")
    report = LowflatReport(night)
    groups: dict[tuple, list[dict]] = {}
    for img in images:
        groups.setdefault((img["ccd_id"], img["qid"], img["filter_code"]), []).append(img)
    refcache: dict = {}
    for (ccd, qid, fc), imgs in sorted(groups.items()):
        label = f"c{ccd:02d} q{qid} {fc}"
        if len(imgs) < min_exposures:
            report.skipped.append(f"{label}: {len(imgs)} exposures < {min_exposures}")
            continue
        parts = [_residuals(layout, config, img, refcache) + (k,) for k, img in enumerate(imgs)]
        x, y, dmag, w = (np.concatenate([p[n] for p in parts]) for n in range(4))
        expo = np.concatenate([np.full(len(p[0]), p[6]) for p in parts])
        shape = (parts[0][4], parts[0][5])
        try:
            fit = lowflat.fit_lowflat(x, y, dmag, w, shape, exposure=expo, degree=degree)
        except AlgorithmError as exc:
            report.skipped.append(f"{label}: {exc}")
            continue
        _store(engine, layout, night, fc, ccd, qid, imgs, fit, validity_days)
        report.made.append(f"{label}: {len(imgs)} exposures, {fit.n_used} stars, RMS "
                           f"{fit.rms_before * 1000:.1f} -> {fit.rms * 1000:.1f} mmag, flat "
                           f"{fit.flat.min():.4f}..{fit.flat.max():.4f}")
    return report


def _store(engine, layout, night, fc, ccd, qid, imgs, fit, validity_days):
    path = layout.cal_path(night, "lowflat", fc, ccd, qid)
    hdr = fits.Header()
    hdr["CALTYPE"] = "lowflat"
    hdr["NIGHT"] = night
    hdr["NEXPOSUR"] = (len(imgs), "exposures fitted")
    hdr["NSTARS"] = (int(fit.n_used), "calibration stars used")
    hdr["RMSBEFOR"] = (round(float(fit.rms_before), 5), "[mag] residual RMS before")
    hdr["RMSAFTER"] = (round(float(fit.rms), 5), "[mag] residual RMS after")
    write_image(path, fit.flat.astype(np.float32), hdr)
    log_path = layout.cal_path(night, "lowflat", fc, ccd, qid, "log.txt")
    write_text(log_path, "\n".join([f"low-frequency flat {night} {fc} CCD {ccd} q{qid}",
                                    *(f"input {i['path']}" for i in imgs),
                                    f"stars {fit.n_used} rms {fit.rms_before:.5f} -> {fit.rms:.5f}"]) + "\n")
    import hashlib
    mid = float(np.mean([i["obsjd"] for i in imgs]))
    ops.register_calibration(engine, dict(
        caltype="lowflat", night=night, filter_code=fc, ccd_id=ccd, qid=qid,
        path=path.relative_to(layout.root).as_posix(), unc_path=None,
        log_path=log_path.relative_to(layout.root).as_posix(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), n_frames=len(imgs), mid_jd=mid,
        valid_from_jd=mid - validity_days, valid_to_jd=mid + validity_days, status="valid",
        qa={"rms_before": float(fit.rms_before), "rms_after": float(fit.rms), "n_stars": int(fit.n_used)}))
