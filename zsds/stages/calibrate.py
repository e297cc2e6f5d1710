"""Instrumental calibration of a readout quadrant (ZTF real-time pipeline, phase 1).

Public entry point: :func:`calibrate_job` (I/O: loads the raw quadrant, calibrations and the
reference catalogue, writes the ``sci/`` products, registers them). The science is in
:func:`calibrate_quadrant`, a function of in-memory inputs that calls the kernels in order:

1. quadrant preparation (overscan, master bias, non-linearity) ........ ``core.prepare``
2. flat-fielding, variance, bit mask (cosmic rays, saturation, edges) .. ``core.detrend``
3. background and background-RMS maps .................................. ``core.background``
4. source extraction and the aperture catalogue (``sexcat``) ........... ``core.extract``
5. astrometric solution, TAN-SIP, against the reference catalogue ...... ``core.astrometry``
6. PSF model and PSF-fit photometry of every detection (``psfcat``) .... ``core.psf``, ``core.psfphot``
7. zero point and colour term against the reference catalogue, MAGLIM . ``core.photcal``
8. QA bits and STATUS .................................................. ``core.qaflags``

Products (public ZTF suffixes): ``sciimg.fits``, ``mskimg.fits``, ``psfcat.fits``,
``sexcat.fits``, ``sciimgdaopsfcent.fits`` (PSF at the centre), ``sciimgpsf.fits`` (the full
spatially varying model; ZTF writes DAOPHOT's ``sciimgdao.psf``), ``sciimlog.txt``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from sqlalchemy import select

from ..alerts.ids import make_pid
from ..archive.verify import record_checksums
from ..camera import load_camera
from ..config import CalibrateConfig, ZsdsConfig
from ..core import astrometry, background, detrend, extract, photcal, prepare, psf, psfphot, qaflags
from ..db import schema as s
from ..db.ops import find_calibration, set_quadrant_status, utcnow
from ..errors import AlgorithmError, CalibrationNotFoundError, InputDataError
from ..flags import BAD_PIXEL_BITS, mask_header_cards
from ..io.paths import ArchiveLayout
from ..io.products import write_hdulist, write_image, write_table, write_text
from ..io.raw import RawQuadrant, read_raw
from ..io.refcat import apply_proper_motion, read_refcat

__all__ = ["CalibrationFrames", "CalibratedQuadrant", "calibrate_quadrant", "calibrate_job",
           "PRODUCT_SUFFIXES", "COLOUR_BANDS"]

log = logging.getLogger(__name__)

PRODUCT_SUFFIXES = ("sciimg.fits", "mskimg.fits", "psfcat.fits", "sexcat.fits",
                    "sciimgdaopsfcent.fits", "sciimgpsf.fits", "sciimlog.txt")
#: Filter code -> (reference band, colour bands) of the photometric calibration.
COLOUR_BANDS = {"zg": ("g", ("g", "r")), "zr": ("r", ("g", "r")), "zi": ("i", ("r", "i"))}
_PIXSCALE = 1.012


@dataclass(frozen=True)
class CalibrationFrames:
    """Calibration images of one quadrant (numpy ``[y, x]``)."""

    bias: np.ndarray
    flat: np.ndarray
    badpix: np.ndarray
    lowflat: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)


@dataclass
class CalibratedQuadrant:
    """Everything instrumental calibration produces for one quadrant."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    background: np.ndarray
    background_rms: np.ndarray
    sexcat: Table
    psfcat: Table
    psf_model: object | None
    astrometry: object | None
    zeropoint: object | None
    qa: dict
    infobits: int
    status: int
    reasons: list[str]
    header: fits.Header


# ---------------------------------------------------------------------------------------
# science: in-memory composition of the kernels
# ---------------------------------------------------------------------------------------
def _detrend(quad: RawQuadrant, frames: CalibrationFrames, params: CalibrateConfig):
    h = quad.header
    gain, rn = float(h["GAIN"]), float(h["READNOI"])
    nl_a, nl_b = load_camera().nonlinearity(int(h["CCD_ID"]), int(h["AMP_ID"]))
    prep = prepare.prepare_quadrant(quad.data, quad.overscan, int(h["AMP_ID"]) + 1, gain,
                                    float(h["SATURATE"]), nl_a, nl_b, read_noise=rn,
                                    master_bias=frames.bias)
    det = detrend.detrend_quadrant(prep.image, prep.saturated, frames.flat, frames.badpix, gain, rn,
                                   lowflat=frames.lowflat, edge_px=params.edge_px,
                                   find_cosmic_rays=params.cosmic_rays)
    return prep, det, gain


def _reference_stars(refcat: pd.DataFrame, obsjd: float, filter_code: str) -> dict:
    ra, dec = apply_proper_motion(refcat, Time(obsjd, format="jd").jyear)
    band, (c1, c2) = COLOUR_BANDS[filter_code]
    mag = refcat[band].to_numpy(float)
    colour = refcat[c1].to_numpy(float) - refcat[c2].to_numpy(float)
    err = np.hypot(refcat[f"{band}_err"].to_numpy(float),
                   np.hypot(refcat[f"{c1}_err"].to_numpy(float), refcat[f"{c2}_err"].to_numpy(float)))
    rank = np.where(np.isfinite(mag), mag, refcat[["g", "r", "i"]].min(axis=1).to_numpy(float))
    return {"ra": np.asarray(ra), "dec": np.asarray(dec), "mag": mag, "colour": colour,
            "err": err, "rank": rank}


def _solve_astrometry(positions: Table, cat: Table, header_wcs: WCS, refs: dict, shape, params):
    """TAN-SIP solution from source positions (PSF-fit rows aligned with the aperture catalogue)."""
    good = (np.asarray(cat["flags"]) & (extract.FLAGS["SATURATED"] | extract.FLAGS["NEAR_BAD"])) == 0
    if "flux" in positions.colnames:  # PSF-fit catalogue
        good &= (np.asarray(positions["flags"]) == 0) & (np.asarray(positions["flux"]) > 0)
        flux = np.asarray(positions["flux"])
    else:
        flux = np.asarray(positions["flux_auto"])
    x, y = np.asarray(positions["x"])[good], np.asarray(positions["y"])[good]
    err = np.hypot(np.asarray(positions["x_err"])[good], np.asarray(positions["y_err"])[good])
    return astrometry.solve_astrometry(x, y, flux[good], header_wcs, refs["ra"], refs["dec"],
                                       refs["rank"], shape, sip_order=params.sip_order,
                                       centroid_err=err)


def _photometric_calibration(psfcat: Table, sol, refs: dict, filter_code: str, sat_mask):
    ra, dec = sol.pixel_to_sky(np.asarray(psfcat["x"]), np.asarray(psfcat["y"]))
    xr, yr = sol.sky_to_pixel(refs["ra"], refs["dec"])
    i_src, i_ref, _ = astrometry.match_catalogs(np.asarray(psfcat["x"]), np.asarray(psfcat["y"]),
                                                xr, yr, 1.5)
    flux = np.asarray(psfcat["flux"], float)[i_src]
    ferr = np.asarray(psfcat["flux_err"], float)[i_src]
    ok = flux > 0
    i_src, i_ref, flux, ferr = i_src[ok], i_ref[ok], flux[ok], ferr[ok]
    m_inst = -2.5 * np.log10(flux)
    m_err = 1.0857 * ferr / flux
    saturated = sat_mask[i_src]
    flagged = np.asarray(psfcat["flags"])[i_src] != 0
    isolated = photcal.isolation_mask(np.asarray(psfcat["x"])[i_src], np.asarray(psfcat["y"])[i_src], 8.0,
                                      others_x=np.asarray(psfcat["x"]), others_y=np.asarray(psfcat["y"]))
    use = photcal.select_calibrators(m_err, refs["err"][i_ref], refs["colour"][i_ref],
                                     saturated=saturated, flagged=flagged, isolated=isolated)
    use &= np.isfinite(refs["mag"][i_ref])
    pcolor = "r-i" if filter_code == "zi" else "g-r"
    zp = photcal.fit_zero_point(m_inst[use], m_err[use], refs["mag"][i_ref][use],
                                refs["err"][i_ref][use], refs["colour"][i_ref][use], pcolor=pcolor)
    return zp, (ra, dec)


def _psf_stage(sub, det, bkg, cat, gain, params):
    bad = (det.mask & BAD_PIXEL_BITS) > 0
    model = psf.fit_psf_model(sub, bkg.rms, cat, mask=bad, gain=gain, degree=params.psf_degree)
    fwhm = float(model.fwhm_at(model.x_centre, model.y_centre)[0])
    if not (np.all(np.isfinite(model.nodes)) and np.isfinite(fwhm) and fwhm > 0):
        raise AlgorithmError("PSF model is not finite", n_stars=int(model.meta.get("n_stars", 0)))
    pcat = psfphot.psf_photometry(sub, det.variance, model, np.asarray(cat["x"]), np.asarray(cat["y"]),
                                  mask=bad, sky_variance=bkg.rms.astype(np.float64) ** 2)
    return model, pcat


def _qa_metrics(prep, det, bkg, cat, sol, zp, model, params, filter_code, airmass, errors):
    fwhm = float(model.fwhm_at(model.x_centre, model.y_centre)[0]) if model else float("nan")
    nea = photcal.psf_nea(model.centre_stamp()) if model else float("nan")
    sky_rms = background.map_median(bkg.rms)
    m = {
        "n_sources": len(cat), "sky": background.map_median(bkg.sky), "sky_rms": sky_rms,
        "saturated_fraction": float(prep.qa["saturated_fraction"]),
        "seeing_arcsec": fwhm * _PIXSCALE, "fwhm_px": fwhm, "nea_px": nea,
        "astrometry_ok": sol is not None, "zp_fit_failed": zp is None,
        "zp_nominal": qaflags.nominal_zero_point(params.nominal_zp[filter_code],
                                                 params.extinction[filter_code], airmass),
    }
    if sol is not None:
        m.update(astrometry_rms_arcsec=float(np.hypot(sol.rms_ra_arcsec, sol.rms_dec_arcsec) / np.sqrt(2)),
                 astrom_rms_ra=sol.rms_ra_arcsec, astrom_rms_dec=sol.rms_dec_arcsec,
                 astrom_nmatch=sol.n_matches)
    if zp is not None:
        m.update(zp=zp.zp, magzp=zp.zp, zp_unc=zp.zp_unc, zp_rms=zp.zp_rms, n_calibrators=zp.n_used,
                 clrcoeff=zp.clrcoeff, maglim=photcal.limiting_magnitude(zp.zp, sky_rms, nea_px=nea))
    m["errors"] = errors
    return m


def _judge(metrics: dict, params: CalibrateConfig):
    thresholds = qaflags.QualityThresholds(min_calibrators=params.min_calibrators,
                                           max_seeing_arcsec=params.max_seeing_arcsec)
    keys = ("zp_fit_failed", "n_calibrators", "zp_rms", "zp_unc", "zp", "zp_nominal",
            "seeing_arcsec", "astrometry_ok", "astrometry_rms_arcsec", "n_sources",
            "saturated_fraction")
    return qaflags.quality_status({k: metrics[k] for k in keys if k in metrics}, thresholds)


def _card(h: fits.Header, key: str, value, comment: str, ndigits: int = 3):
    """Set a numeric card, or leave it out when the value is not finite (FITS has no NaN)."""
    if value is not None and np.isfinite(value):
        h[key] = (round(float(value), ndigits) if isinstance(value, float) else value, comment)


def _science_header(primary: fits.Header, quad: RawQuadrant, sol, zp, metrics, judged) -> fits.Header:
    h = fits.Header()
    for key in ("ORIGIN", "TELESCOP", "INSTRUME", "IMGTYPE", "EXPID", "OBSJD", "OBSMJD",
                "SHUTOPEN", "SHUTCLSD", "EXPTIME", "FILTER", "FILTERID", "FIELDID", "PROGRMID",
                "TELRAD", "TELDECD", "AIRMASS", "PIXSCALE"):
        if key in primary:
            h[key] = (primary[key], primary.comments[key])
    for key in ("CCD_ID", "AMP_ID", "GAIN", "READNOI", "DARKCUR", "SATURATE"):
        h[key] = (quad.header[key], quad.header.comments[key])
    h["QID"] = int(quad.header["AMP_ID"]) + 1
    h["RCID"] = 4 * (int(quad.header["CCD_ID"]) - 1) + h["QID"] - 1
    h["BUNIT"] = "DN"
    if sol is not None:
        h.update(sol.header())
    if zp is not None:
        for key, (value, comment) in zp.header().items():
            h[key] = (value, comment)
        _card(h, "MAGLIM", metrics["maglim"], "5-sigma point-source limiting mag (AB)")
    _card(h, "SEEING", metrics["seeing_arcsec"], "[arcsec] PSF FWHM at the quadrant centre")
    _card(h, "FWHMPIX", metrics["fwhm_px"], "[pix] PSF FWHM at the quadrant centre")
    _card(h, "SKYBKG", metrics["sky"], "[DN] median background")
    _card(h, "SKYRMS", metrics["sky_rms"], "[DN] median background RMS")
    h["NSOURCES"] = (metrics["n_sources"], "sources extracted")
    h["INFOBITS"] = (int(judged.infobits), "QA bits (zsds.core.qaflags)")
    h["STATUS"] = (int(judged.status), "1 good, 0 bad")
    return h


def calibrate_quadrant(primary: fits.Header, quad: RawQuadrant, frames: CalibrationFrames,
                       refcat: pd.DataFrame, params: CalibrateConfig) -> CalibratedQuadrant:
    """Instrumentally calibrate one raw readout quadrant (no I/O).

    Failures of astrometry or photometry do not raise: the quadrant gets ``STATUS = 0`` with
    the reasons (a cloudy or empty quadrant), and whatever could be measured is returned.
    """
    prep, det, gain = _detrend(quad, frames, params)
    bad = (det.mask & BAD_PIXEL_BITS) > 0
    bkg = background.background_maps(det.image, mask=bad)
    sub = (det.image - bkg.sky).astype(np.float32)
    errors: list[str] = []
    try:
        cat = extract.extract_sources(det.image, bkg.sky, bkg.rms, mask=bad,
                                      thresh=params.detect_thresh, minarea=params.minarea,
                                      gain=gain, saturated=prep.saturated)
    except AlgorithmError as exc:
        errors.append(f"extraction: {exc}")
        cat = Table({name: np.zeros(0) for name in ("x", "y", "x_err", "y_err", "flux_auto", "flags")})
        cat["flags"] = np.zeros(0, int)
    filter_code = {1: "zg", 2: "zr", 3: "zi"}[int(primary["FILTERID"])]
    refs = _reference_stars(refcat, float(primary["OBSJD"]), filter_code)
    sol = zp = model = None
    pcat = Table()
    try:
        model, pcat = _psf_stage(sub, det, bkg, cat, gain, params)
    except AlgorithmError as exc:
        errors.append(f"PSF: {exc}")
    try:
        # PSF-fit positions are the best centroids; the aperture catalogue's otherwise
        positions = pcat if len(pcat) else cat
        sol = _solve_astrometry(positions, cat, WCS(quad.header), refs, det.image.shape, params)
    except AlgorithmError as exc:
        errors.append(f"astrometry: {exc}")
    if sol is not None and model is not None:
        sat = (np.asarray(cat["flags"]) & extract.FLAGS["SATURATED"]) > 0
        try:
            zp, (ra, dec) = _photometric_calibration(pcat, sol, refs, filter_code, sat)
        except AlgorithmError as exc:
            errors.append(f"photometry: {exc}")
    metrics = _qa_metrics(prep, det, bkg, cat, sol, zp, model, params, filter_code,
                          float(primary["AIRMASS"]), errors)
    judged = _judge(metrics, params)
    _finish_catalogues(cat, pcat, sol, zp)
    header = _science_header(primary, quad, sol, zp, metrics, judged)
    return CalibratedQuadrant(det.image, det.variance, det.mask, bkg.sky, bkg.rms, cat, pcat, model,
                              sol, zp, metrics, int(judged.infobits), int(judged.status),
                              list(judged.reasons) + errors, header)


def _finish_catalogues(cat: Table, pcat: Table, sol, zp):
    """Add sky positions and calibrated magnitudes (MAGZP applied, no colour term, as ZTF)."""
    for t, xcol, ycol in ((cat, "x", "y"), (pcat, "x", "y")):
        if len(t) and sol is not None:
            ra, dec = sol.pixel_to_sky(np.asarray(t[xcol]), np.asarray(t[ycol]))
            t["ra"], t["dec"] = ra, dec
    if len(pcat) and zp is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            flux = np.asarray(pcat["flux"], float)
            pcat["mag"] = np.where(flux > 0, zp.zp - 2.5 * np.log10(flux), np.nan)
            pcat["mag_err"] = np.where(flux > 0, 1.0857 * np.asarray(pcat["flux_err"]) / flux, np.nan)
        pcat["source_id"] = np.arange(1, len(pcat) + 1)


# ---------------------------------------------------------------------------------------
# I/O: the stage entry point
# ---------------------------------------------------------------------------------------
def _read_cal(layout: ArchiveLayout, row: dict) -> np.ndarray:
    with fits.open(layout.root / row["path"], memmap=False) as h:
        hdu = next(x for x in h if x.data is not None)
        return np.asarray(hdu.data)


def load_calibrations(engine, layout: ArchiveLayout, ccd_id: int, qid: int, filter_code: str,
                      obsjd: float) -> CalibrationFrames:
    """The nearest valid bias, high-frequency flat, bad-pixel mask and low-frequency flat."""
    rows = {c: find_calibration(engine, c, ccd_id, qid, filter_code, obsjd)
            for c in ("bias", "hifreqflat", "badpix")}
    try:
        rows["lowflat"] = find_calibration(engine, "lowflat", ccd_id, qid, filter_code, obsjd)
    except CalibrationNotFoundError:
        pass
    return CalibrationFrames(
        bias=_read_cal(layout, rows["bias"]).astype(np.float32),
        flat=_read_cal(layout, rows["hifreqflat"]).astype(np.float32),
        badpix=_read_cal(layout, rows["badpix"]).astype(np.uint16),
        lowflat=_read_cal(layout, rows["lowflat"]).astype(np.float32) if "lowflat" in rows else None,
        provenance={k: v["path"] for k, v in rows.items()})


def _refcat_for(config: ZsdsConfig, wcs: WCS, shape) -> pd.DataFrame:
    ny, nx = shape
    ra0, dec0 = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    radius = 0.5 * np.hypot(nx, ny) * _PIXSCALE / 3600 + 0.05
    return read_refcat(config.refcat_path, float(ra0), float(dec0), radius)


def _footprint(sol, header_wcs, shape):
    ny, nx = shape
    xs, ys = np.array([0, nx - 1, nx - 1, 0.0]), np.array([0, 0, ny - 1, ny - 1.0])
    w = sol.wcs if sol is not None else header_wcs
    ra, dec = w.pixel_to_world_values(xs, ys)
    rac, decc = w.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    cosd = np.cos(np.radians(decc))
    radius = float(np.max(np.hypot(((ra - rac + 180) % 360 - 180) * cosd, dec - decc)))
    return float(rac), float(decc), radius, [[float(a), float(b)] for a, b in zip(ra, dec)]


def _write_products(layout, job, res: CalibratedQuadrant, frames, seconds) -> dict:
    paths = {sfx: layout.sci_path(job.filefracday, job.field_id, job.filter_code, job.ccd_id,
                                  job.qid, sfx) for sfx in PRODUCT_SUFFIXES}
    write_image(paths["sciimg.fits"], res.image, res.header)
    mh = fits.Header()
    for key, value, comment in mask_header_cards():
        mh[key] = (value, comment)
    write_image(paths["mskimg.fits"], res.mask, mh)
    write_table(paths["sexcat.fits"], res.sexcat, header=res.header, columns=extract.COLUMNS)
    write_table(paths["psfcat.fits"], res.psfcat, header=res.header, columns=psfphot.PSFPHOT_COLUMNS)
    if res.psf_model is not None:
        write_image(paths["sciimgdaopsfcent.fits"], res.psf_model.centre_stamp().astype(np.float32))
        write_hdulist(paths["sciimgpsf.fits"], res.psf_model.to_fits())
    log_lines = [f"zsds instrumental calibration of expid {job.expid} CCD {job.ccd_id} q{job.qid}",
                 f"raw: {job.raw_path}"] + [f"calibration {k}: {v}" for k, v in frames.provenance.items()]
    log_lines += [f"STATUS {res.status} INFOBITS {res.infobits}"] + [f"reason: {r}" for r in res.reasons]
    log_lines += [f"{k}: {v}" for k, v in sorted(res.qa.items()) if k != "errors"]
    write_text(paths["sciimlog.txt"], "\n".join(log_lines) + "\n")
    return {k: str(v.relative_to(layout.root)) for k, v in paths.items()}


def _register(engine, job, res: CalibratedQuadrant, rel_paths, footprint, seconds, airmass):
    q = res.qa
    values = dict(
        rcid=4 * (job.ccd_id - 1) + job.qid - 1, pid=make_pid(job.filefracday, 4 * (job.ccd_id - 1) + job.qid - 1),
        night=job.night, filefracday=job.filefracday, obsjd=job.obsjd, field_id=job.field_id,
        filter_code=job.filter_code, programid=job.programid, path=rel_paths["sciimg.fits"],
        status=res.status, infobits=res.infobits, reasons="\n".join(res.reasons),
        magzp=q.get("magzp"), magzpunc=q.get("zp_unc"), magzprms=q.get("zp_rms"),
        clrcoeff=q.get("clrcoeff"), clrcounc=getattr(res.zeropoint, "clrcoeff_unc", None),
        maglim=q.get("maglim"), seeing_arcsec=q.get("seeing_arcsec"), sky=q.get("sky"),
        sky_rms=q.get("sky_rms"), n_sources=q.get("n_sources"), n_calibrators=q.get("n_calibrators"),
        astrom_rms_ra=q.get("astrom_rms_ra"), astrom_rms_dec=q.get("astrom_rms_dec"),
        astrom_nmatch=q.get("astrom_nmatch"), airmass=airmass, ra=footprint[0], dec=footprint[1],
        radius_deg=footprint[2], footprint=json.dumps(footprint[3]), seconds=seconds,
        updated_at=utcnow())
    values = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in values.items()}
    c = s.science_images.c
    key = (c.expid == job.expid) & (c.ccd_id == job.ccd_id) & (c.qid == job.qid)
    with engine.begin() as conn:
        if conn.execute(select(c.id).where(key)).first():
            conn.execute(s.science_images.update().where(key).values(**values))
        else:
            conn.execute(s.science_images.insert().values(expid=job.expid, ccd_id=job.ccd_id,
                                                          qid=job.qid, created_at=utcnow(), **values))
    set_quadrant_status(engine, job.expid, job.ccd_id, job.qid,
                        "calibrated" if res.status == 1 else "bad", "\n".join(res.reasons) or None)


def calibrate_job(config: ZsdsConfig, job, engine, keep: dict | None = None) -> dict:
    """Calibrate one quadrant of the archive, write its products and register them.

    Parameters
    ----------
    config : ZsdsConfig
    job : zsds.pipeline.night.QuadrantJob
    engine : sqlalchemy.Engine
    keep : dict, optional
        Receives the in-memory result under ``"calibrated"`` (a :class:`CalibratedQuadrant`)
        for the next stage of the same task.

    Returns
    -------
    dict
        QA numbers (seeing, MAGZP, MAGLIM, ...) and ``status``.

    Raises
    ------
    InputDataError
        The raw file is unreadable or invalid.
    CalibrationNotFoundError
        No valid bias, flat or bad-pixel mask for the quadrant.
    """
    t0 = time.perf_counter()
    layout = ArchiveLayout(config.archive.root)
    raw = read_raw(layout.root / job.raw_path, qids=(job.qid,))
    quad = raw.quadrants[job.qid - 1]
    frames = load_calibrations(engine, layout, job.ccd_id, job.qid, job.filter_code, job.obsjd)
    if frames.bias.shape != quad.data.shape:
        raise InputDataError(str(layout.root / job.raw_path),
                             f"quadrant {job.qid} shape {quad.data.shape} differs from its "
                             f"calibrations {frames.bias.shape}")
    header_wcs = WCS(quad.header)
    refcat = _refcat_for(config, header_wcs, quad.data.shape)
    res = calibrate_quadrant(raw.primary, quad, frames, refcat, config.calibrate)
    seconds = time.perf_counter() - t0
    rel = _write_products(layout, job, res, frames, seconds)
    record_checksums(engine, layout.root, rel.values())
    fp = _footprint(res.astrometry, header_wcs, quad.data.shape)
    _register(engine, job, res, rel, fp, seconds, float(raw.primary["AIRMASS"]))
    if keep is not None:
        keep["calibrated"] = res
    out = {k: v for k, v in res.qa.items() if isinstance(v, (int, float, bool))}
    out.update(status=res.status, infobits=res.infobits, seconds=seconds,
               reasons="; ".join(res.reasons))
    if res.status != 1:
        log.warning("expid %d c%02d q%d is bad: %s", job.expid, job.ccd_id, job.qid,
                    "; ".join(res.reasons))
    return out
