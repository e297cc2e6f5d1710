"""Reference images: co-adds of good epochal images per field, filter, CCD and quadrant.

Public entry points: :func:`build_references` (all quadrants with enough data, one Dask task
per quadrant reference) and :func:`build_reference` (one quadrant). The steps:

1. select the epochal images by QA (``STATUS = 1``, zero point, seeing) ...... :func:`select_inputs`
2. the reference grid: the nominal TAN WCS of the field/CCD/quadrant ......... ``camera.nominal_wcs``
3. stream the inputs: background-subtract, scale to the common zero point,
   resample; median of a subset, then the weighted mean with rejection ........ ``core.coadd``
4. catalogues of the co-add: background (``refbkg``: sky and RMS maps, which the
   subtraction loads instead of re-estimating), extraction (``refsexcat``), PSF model
   (``refpsf``), PSF photometry (``refpsfcat``), zero point check vs refcat .... ``core.*``
5. Zarr (``ref/<fff>/field<field6>.zarr``) + FITS exports with the ZTF names,
   a new ``reference_images`` version only when the set of inputs changed ...... ``io.zarr_store``

Re-running with the same inputs returns the existing version and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from sqlalchemy import func, select

from ..archive.verify import record_checksums, tree_files
from ..camera import load_camera
from ..config import ZsdsConfig
from ..core import astrometry, background, coadd, extract, photcal, psf, psfphot
from ..db import schema as s
from ..db.ops import engine_from_config, utcnow
from ..errors import AlgorithmError, InputDataError, NoWorkFound
from ..flags import BAD_PIXEL_BITS
from ..io import zarr_store
from ..io.paths import ArchiveLayout
from ..io.products import write_hdulist, write_image, write_smooth_maps, write_table, write_text
from ..io.refcat import apply_proper_motion, read_refcat
from .calibrate import COLOUR_BANDS

__all__ = ["ReferenceParams", "select_inputs", "build_reference", "build_references",
           "REF_SUFFIXES"]

log = logging.getLogger(__name__)

REF_SUFFIXES = ("refimg.fits", "refunc.fits", "refcov.fits", "refbkg.fits", "refpsfcat.fits",
                "refsexcat.fits", "refpsf.fits", "refimlog.txt")
_PIXSCALE = 1.012
_PSF_HALF = 12


@dataclass(frozen=True)
class ReferenceParams:
    """Selection and combination parameters of a reference build.

    Attributes
    ----------
    min_frames : int
        Fewest good epochal images (ZTF: 15).
    max_frames : int
        Most images combined (the deepest are kept).
    max_seeing_arcsec : float
        Worse seeing excludes an image.
    zp : float
        Common zero point of the co-add, AB mag for 1 DN.
    nsigma, frac, grow : float, float, int
        Outlier rejection (see :class:`zsds.core.coadd.CoaddAccumulator`).
    smooth_rejection : bool
        Also reject deviations significant at the PSF scale (Gaussian of the inputs' median
        seeing): faint asteroids and transients.
    n_median : int
        Inputs of the median estimate of pass 1 (bounds the memory).
    detect_thresh, minarea : float, int
        Extraction of the co-add.
    psf_degree, psf_oversample : int, int
        Most complex PSF model of the co-add (spatial polynomial degree, nodes per pixel);
        lowered by :func:`psf_complexity` to what its PSF stars constrain.
    psf_stars_per_term : float
        PSF stars needed per polynomial term and per sub-pixel phase of the nodes.
    """

    min_frames: int = 15
    max_frames: int = 40
    max_seeing_arcsec: float = 3.5
    zp: float = 26.0
    nsigma: float = 5.0
    frac: float = 0.3
    grow: int = 1
    smooth_rejection: bool = True
    n_median: int = 7
    detect_thresh: float = 1.5
    minarea: int = 5
    psf_degree: int = 2
    psf_oversample: int = 2
    psf_stars_per_term: float = 25.0


# ---------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------
def select_inputs(engine, field_id: int, filter_code: str, ccd_id: int, qid: int,
                  params: ReferenceParams) -> list[dict]:
    """Good epochal images of a quadrant, deepest first up to ``max_frames``, in pid order."""
    c = s.science_images.c
    stmt = (select(s.science_images)
            .where((c.field_id == field_id) & (c.filter_code == filter_code) & (c.ccd_id == ccd_id)
                   & (c.qid == qid) & (c.status == 1) & c.magzp.is_not(None)
                   & c.sky_rms.is_not(None) & (c.seeing_arcsec <= params.max_seeing_arcsec))
            .order_by(c.maglim.desc(), c.pid))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return sorted(rows[: params.max_frames], key=lambda r: r["pid"])


def _candidates(engine, field, filter_code, ccd, qid, min_frames) -> list[tuple]:
    c = s.science_images.c
    keys = (c.field_id, c.filter_code, c.ccd_id, c.qid)
    stmt = select(*keys).where(c.status == 1).group_by(*keys).having(func.count() >= min_frames)
    for col, value in zip(keys, (field, filter_code, ccd, qid)):
        if value is not None:
            stmt = stmt.where(col == value)
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(stmt.order_by(*keys)))


def inputs_hash(rows: list[dict]) -> str:
    """sha256 of the sorted contributing pids (the identity of a reference version)."""
    return hashlib.sha256(",".join(str(p) for p in sorted(r["pid"] for r in rows)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# co-addition (streams the inputs)
# ---------------------------------------------------------------------------------------
def reference_grid(field_id: int, ccd_id: int, qid: int, shape) -> WCS:
    """The fixed reference grid: nominal TAN WCS of the quadrant at the field centre."""
    cam = load_camera()
    fld = cam.field(field_id)
    return cam.nominal_wcs(ccd_id, qid, fld.ra, fld.dec, tuple(shape))


def _read_input(layout: ArchiveLayout, row: dict):
    path = layout.root / row["path"]
    with fits.open(path, memmap=False) as h:
        image, header = np.asarray(h[0].data, np.float32), h[0].header
    mpath = path.with_name(path.name.replace("_sciimg.fits", "_mskimg.fits"))
    with fits.open(mpath, memmap=False) as h:
        bad = (np.asarray(h[0].data) & BAD_PIXEL_BITS) > 0
    return image, bad, header


def _prepared(layout, row, grid: WCS, shape, params):
    """One input on the grid, plus its noise and Poisson scale and its background level."""
    image, bad, header = _read_input(layout, row)
    bkg = background.background_maps(image, mask=bad)
    scale = coadd.zero_point_scale(row["magzp"], params.zp)
    data = coadd.prepare_input(image, bad, bkg.sky, scale, WCS(header), grid, shape)
    sigma = scale * float(row["sky_rms"])
    return data, sigma, scale / float(header["GAIN"]), float(np.median(bkg.sky))


def combine_inputs(layout: ArchiveLayout, rows: list[dict], grid: WCS, shape,
                   params: ReferenceParams):
    """Two-pass streaming co-add of ``rows`` on ``grid``; returns (CoaddResult, per-input info)."""
    subset = sorted(rows, key=lambda r: -(r["maglim"] or 0))[: params.n_median]
    stack, sigmas = [], []
    for row in subset:
        data, sigma, _, _ = _prepared(layout, row, grid, shape, params)
        stack.append(data)
        sigmas.append(sigma)
    reference = coadd.median_reference(np.stack(stack)) if len(stack) >= 3 else None
    del stack
    ref_sigma = 1.2533 * float(np.median(sigmas)) / np.sqrt(len(sigmas))
    fwhm_px = float(np.median([r["seeing_arcsec"] for r in rows])) / _PIXSCALE
    acc = coadd.CoaddAccumulator(shape, reference, ref_sigma, nsigma=params.nsigma,
                                 frac=params.frac, grow=params.grow,
                                 smooth_sigma=fwhm_px / 2.3548 if params.smooth_rejection else None)
    info = []
    for row in rows:
        data, sigma, pscale, sky = _prepared(layout, row, grid, shape, params)
        n_rej = acc.add(data, sigma, poisson_scale=pscale)
        info.append({"pid": int(row["pid"]), "path": row["path"], "obsjd": float(row["obsjd"]),
                     "seeing": row["seeing_arcsec"], "maglim": row["maglim"],
                     "magzp": row["magzp"], "sky": sky, "weight": 1.0 / sigma ** 2,
                     "n_rejected": n_rej})
    return acc.result(), info


# ---------------------------------------------------------------------------------------
# catalogues of the co-add
# ---------------------------------------------------------------------------------------
def _effective_gain(result, rows, layout, params) -> float:
    """DN-to-electron factor of the co-add for source Poisson noise (median over pixels)."""
    with fits.open(layout.root / rows[0]["path"], memmap=False) as h:
        gain = float(h[0].header["GAIN"])
    scale = np.mean([coadd.zero_point_scale(r["magzp"], params.zp) for r in rows])
    cov = np.median(result.coverage[result.coverage > 0])
    return float(gain * cov / scale)


def psf_complexity(n_stars: int, max_oversample: int, max_degree: int,
                   stars_per_term: float) -> tuple[int, int]:
    """Oversampling and polynomial degree of a PSF model that ``n_stars`` stars constrain.

    A node of a model with ``s`` nodes per pixel is sampled only by the stars of one sub-pixel
    phase class (``n_stars / s**2`` of them) and carries ``(d + 1)(d + 2) / 2`` polynomial
    coefficients for degree ``d``; both are kept only while every coefficient has at least
    ``stars_per_term`` stars. An under-constrained model fits the noise of its few stars, and
    its node values then differ between phase classes: the fitted positions get errors of
    0.1-0.2 px that depend on the sub-pixel phase (the co-add's astrometry). The degree is
    lowered first (a co-add's PSF varies slowly), then the oversampling.

    Returns
    -------
    (oversample, degree) : (int, int)
    """
    for deg in range(max_degree, -1, -1):
        for s in range(max_oversample, 0, -1):
            if n_stars / s**2 >= stars_per_term * (deg + 1) * (deg + 2) / 2:
                return s, deg
    return 1, 0


def measure_coadd(result, gain_eff: float, fwhm_px: float, params: ReferenceParams):
    """Background, aperture catalogue, PSF model and PSF-fit catalogue of a co-add.

    The PSF model's complexity follows the number of PSF stars (:func:`psf_complexity`).
    """
    bad = (result.mask & coadd.COADD_MASK["NO_DATA"]) > 0
    image = np.where(bad, 0.0, result.image).astype(np.float32)
    bkg = background.background_maps(image, mask=bad)
    cat = extract.extract_sources(image, bkg.sky, bkg.rms, mask=bad, thresh=params.detect_thresh,
                                  minarea=params.minarea, gain=gain_eff, psf_fwhm=fwhm_px)
    sub = (image - bkg.sky).astype(np.float32)
    stars = psf.select_psf_stars(cat, image.shape, _PSF_HALF)
    s, deg = psf_complexity(len(stars), params.psf_oversample, params.psf_degree,
                            params.psf_stars_per_term)
    model = psf.fit_psf_model(sub, bkg.rms, cat, mask=bad, gain=gain_eff, degree=deg, oversample=s,
                              stamp_half=_PSF_HALF, stars=stars)
    unc = np.where(bad, np.inf, result.uncertainty)
    variance = unc.astype(np.float64) ** 2 + np.clip(sub, 0, None) / gain_eff
    pcat = psfphot.psf_photometry(sub, variance, model, np.asarray(cat["x"]), np.asarray(cat["y"]),
                                  mask=bad, sky_variance=bkg.rms.astype(np.float64) ** 2)
    return bkg, cat, model, pcat


def _reference_stars(refcat, jd: float, filter_code: str):
    ra, dec = apply_proper_motion(refcat, Time(jd, format="jd").jyear)
    band, (c1, c2) = COLOUR_BANDS[filter_code]
    err = np.hypot(refcat[f"{band}_err"], np.hypot(refcat[f"{c1}_err"], refcat[f"{c2}_err"]))
    return (np.asarray(ra), np.asarray(dec), refcat[band].to_numpy(float),
            (refcat[c1] - refcat[c2]).to_numpy(float), err.to_numpy(float))


def check_zero_point(pcat: Table, grid: WCS, refcat, jd: float, filter_code: str) -> dict:
    """Zero point and astrometric RMS of the co-add's PSF catalogue against the refcat."""
    ra, dec, mag, colour, err = _reference_stars(refcat, jd, filter_code)
    xr_, yr_ = grid.world_to_pixel_values(ra, dec)
    x, y = np.asarray(pcat["x"], float), np.asarray(pcat["y"], float)
    i_s, i_r, dist = astrometry.match_catalogs(x, y, xr_, yr_, 1.5)
    flux, ferr = np.asarray(pcat["flux"], float)[i_s], np.asarray(pcat["flux_err"], float)[i_s]
    ok = (flux > 0) & np.isfinite(mag[i_r])
    m_err = 1.0857 * ferr[ok] / flux[ok]
    use = photcal.select_calibrators(m_err, err[i_r][ok], colour[i_r][ok],
                                     flagged=np.asarray(pcat["flags"])[i_s][ok] != 0)
    zp = photcal.fit_zero_point(-2.5 * np.log10(flux[ok][use]), m_err[use], mag[i_r][ok][use],
                                err[i_r][ok][use], colour[i_r][ok][use],
                                pcolor="r-i" if filter_code == "zi" else "g-r")
    bright = use & (m_err < 0.02)
    rms = float(np.sqrt(np.mean(dist[ok][bright] ** 2)) * _PIXSCALE) if bright.any() else np.nan
    return {"zp_refcat": zp.zp, "zp_refcat_unc": zp.zp_unc, "clrcoeff_refcat": zp.clrcoeff,
            "n_calibrators": zp.n_used, "astrom_rms_arcsec": rms}


# ---------------------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------------------
def _header(grid: WCS, info: list[dict], version: int, params: ReferenceParams, qa: dict,
            key: tuple) -> fits.Header:
    field, fc, ccd, qid = key
    h = fits.Header()
    h["FIELDID"], h["FILTER"], h["CCD_ID"], h["QID"] = field, fc, ccd, qid
    h["RCID"] = 4 * (ccd - 1) + qid - 1
    h["BUNIT"] = "DN"
    h.update(grid.to_header(relax=True))
    h["MAGZP"] = (round(float(qa.get("magzp", params.zp)), 5),
                  "zero point of the PSF catalogue (refcat fit), AB mag")
    if np.isfinite(qa.get("zp_refcat_unc", np.nan)):
        h["MAGZPUNC"] = (round(float(qa["zp_refcat_unc"]), 5), "MAGZP uncertainty, mag")
    h["ZPCOMMON"] = (params.zp, "zero point the inputs were scaled to, AB mag")
    h["CLRCOEFF"] = (round(float(np.mean(qa["clrcoeff"])), 5), "mean colour coefficient of inputs")
    h["NFRAMES"] = (len(info), "epochal images combined")
    h["JDSTART"] = (min(i["obsjd"] for i in info), "first input, JD")
    h["JDEND"] = (max(i["obsjd"] for i in info), "last input, JD")
    h["REFVERS"] = (version, "reference version")
    for k, card, comment in (("seeing_arcsec", "SEEING", "[arcsec] PSF FWHM at the centre"),
                             ("maglim", "MAGLIM", "5-sigma point-source limit, AB mag"),
                             ("zp_refcat", "ZPCHECK", "zero point fitted against the refcat")):
        if np.isfinite(qa.get(k, np.nan)):
            h[card] = (round(float(qa[k]), 4), comment)
    return h


def _write_fits(layout, key, result, bkg, cat, model, pcat, header, log_text) -> dict:
    paths = {sfx: layout.ref_path(*key, sfx) for sfx in REF_SUFFIXES}
    write_image(paths["refimg.fits"], result.image, header)
    write_image(paths["refunc.fits"], result.uncertainty, header)
    write_image(paths["refcov.fits"], result.coverage.astype(np.int16), header)
    # background and its RMS (DN): what the subtraction would otherwise re-estimate every time
    write_smooth_maps(paths["refbkg.fits"], {"SKY": bkg.sky, "RMS": bkg.rms}, header)
    write_table(paths["refsexcat.fits"], cat, header=header, columns=extract.COLUMNS)
    write_table(paths["refpsfcat.fits"], pcat, header=header, columns=psfphot.PSFPHOT_COLUMNS)
    write_hdulist(paths["refpsf.fits"], model.to_fits())
    write_text(paths["refimlog.txt"], log_text)
    return {k: str(v.relative_to(layout.root)) for k, v in paths.items()}


def _log_text(key, version, info, qa) -> str:
    lines = [f"zsds reference build field {key[0]} {key[1]} c{key[2]:02d} q{key[3]} version {version}"]
    lines += [f"input pid {i['pid']} {i['path']} obsjd {i['obsjd']:.6f} weight {i['weight']:.4g} "
              f"rejected {i['n_rejected']}" for i in info]
    lines += [f"{k}: {v}" for k, v in sorted(qa.items()) if not isinstance(v, list)]
    return "\n".join(lines) + "\n"


def _latest(engine, key) -> dict | None:
    c = s.reference_images.c
    where = (c.field_id == key[0]) & (c.filter_code == key[1]) & (c.ccd_id == key[2]) & (c.qid == key[3])
    with engine.connect() as conn:
        row = conn.execute(select(s.reference_images).where(where).order_by(c.version.desc())).first()
    return None if row is None else dict(row._mapping)


def _register(engine, key, version, rel, group, info, qa, digest, params):
    values = dict(field_id=key[0], filter_code=key[1], ccd_id=key[2], qid=key[3], version=version,
                  path=rel["refimg.fits"], n_frames=len(info),
                  jd_start=min(i["obsjd"] for i in info), jd_end=max(i["obsjd"] for i in info),
                  status="valid", qa=json.dumps({k: v for k, v in qa.items() if not isinstance(v, list)}),
                  zarr_group=group, magzp=qa.get("magzp", params.zp), maglim=qa.get("maglim"),
                  seeing_arcsec=qa.get("seeing_arcsec"), inputs_hash=digest,
                  inputs=json.dumps([i["pid"] for i in info]), created_at=utcnow())
    with engine.begin() as conn:
        conn.execute(s.reference_images.insert().values(**values))


# ---------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------
def _coadd_qa(result, model, info, params, gain_eff) -> dict:
    fwhm = float(model.fwhm_at(model.x_centre, model.y_centre)[0])
    bad = (result.mask & coadd.COADD_MASK["NO_DATA"]) > 0
    noise = coadd.point_source_noise(result.image, model.centre_stamp(), bad)
    return {"seeing_arcsec": fwhm * _PIXSCALE, "fwhm_px": fwhm, "flux_noise_dn": noise,
            "gain_eff": gain_eff,
            "n_rejected_total": int(sum(i["n_rejected"] for i in info)),
            "coverage_max": int(result.coverage.max()),
            "clrcoeff": [0.0]}


def build_reference(config: ZsdsConfig, field: int, filter_code: str, ccd: int, qid: int, *,
                    params: ReferenceParams | None = None, min_frames: int | None = None,
                    engine=None) -> dict:
    """Build (or confirm) the reference of one field/filter/CCD/quadrant.

    Parameters
    ----------
    config : ZsdsConfig
    field, filter_code, ccd, qid : int, str, int, int
        The quadrant.
    params : ReferenceParams, optional
        Defaults :class:`ReferenceParams`; ``min_frames`` overrides its field.
    engine : sqlalchemy.Engine, optional
        Default from the configuration.

    Returns
    -------
    dict
        ``status`` ("built" or "unchanged"), ``version``, ``n_frames``, ``path``, ``zarr_group``
        and the QA numbers.

    Raises
    ------
    NoWorkFound
        Fewer than ``min_frames`` good epochal images.
    AlgorithmError
        The co-add's PSF model or catalogues could not be made.
    """
    t0 = time.perf_counter()
    params = params or ReferenceParams()
    if min_frames is not None:
        params = ReferenceParams(**{**asdict(params), "min_frames": int(min_frames)})
    engine = engine or engine_from_config(config)
    layout = ArchiveLayout(config.archive.root)
    key = (int(field), filter_code, int(ccd), int(qid))
    rows = select_inputs(engine, *key, params)
    if len(rows) < params.min_frames:
        raise NoWorkFound(f"reference {key}: {len(rows)} good images, {params.min_frames} required")
    digest = inputs_hash(rows)
    latest = _latest(engine, key)
    if latest and latest["inputs_hash"] == digest and (layout.root / latest["path"]).exists():
        log.info("reference %s v%d: inputs unchanged", key, latest["version"])
        return {"status": "unchanged", "version": latest["version"], "n_frames": latest["n_frames"],
                "path": latest["path"], "zarr_group": latest["zarr_group"]}
    version = (latest["version"] + 1) if latest else 1
    out = _build(config, layout, key, rows, version, params)
    _register(engine, key, version, out["paths"], out["zarr_group"], out["info"], out["qa"],
              digest, params)
    record_checksums(engine, layout.root,
                     [*out["paths"].values(), *tree_files(layout.root, out["zarr_group"])])
    log.info("reference %s v%d from %d images in %.1f s", key, version, len(rows),
             time.perf_counter() - t0)
    qa = {k: v for k, v in out["qa"].items() if not isinstance(v, list)}
    return {"status": "built", "version": version, "n_frames": len(rows),
            "path": out["paths"]["refimg.fits"], "zarr_group": out["zarr_group"],
            "seconds": time.perf_counter() - t0, **qa}


def _build(config, layout, key, rows, version, params) -> dict:
    with fits.open(layout.root / rows[0]["path"], memmap=False) as h:
        shape = h[0].data.shape
    grid = reference_grid(key[0], key[2], key[3], shape)
    result, info = combine_inputs(layout, rows, grid, shape, params)
    gain_eff = _effective_gain(result, rows, layout, params)
    fwhm_px = float(np.median([r["seeing_arcsec"] for r in rows])) / _PIXSCALE
    bkg, cat, model, pcat = measure_coadd(result, gain_eff, fwhm_px, params)
    qa = _coadd_qa(result, model, info, params, gain_eff)
    qa["clrcoeff"] = [float(r["clrcoeff"] or 0.0) for r in rows]
    qa.update(_zero_point_qa(config, grid, shape, pcat, rows, key[1]))
    qa["magzp"] = _catalogue_zero_point(qa, params)
    qa["maglim"] = qa["magzp"] - 2.5 * np.log10(5 * qa["flux_noise_dn"])
    _finish_catalogues(cat, pcat, grid, qa["magzp"])
    header = _header(grid, info, version, params, qa, key)
    paths = _write_fits(layout, key, result, bkg, cat, model, pcat, header,
                        _log_text(key, version, info, qa))
    group = _write_zarr(layout, key, version, result, model, header, info, qa, params)
    return {"paths": paths, "zarr_group": group, "info": info, "qa": qa}


def _catalogue_zero_point(qa: dict, params: ReferenceParams, min_calibrators: int = 20,
                          max_unc: float = 0.02) -> float:
    """The co-add's MAGZP: its PSF catalogue fitted against the refcat when that fit is good.

    The pixels are on the common zero point ``params.zp`` (each input scaled by its MAGZP), but
    the co-add's PSF fluxes capture a different fraction of a star's light than the inputs'
    (its PSF is their mixture): its own fit, like an epochal image's, makes the catalogue's
    magnitudes and MAGZP agree with the sky. Without a good fit the common zero point is kept.
    """
    zp, unc, n = qa.get("zp_refcat"), qa.get("zp_refcat_unc"), qa.get("n_calibrators", 0)
    if zp is None or not np.isfinite(zp) or n < min_calibrators or not (unc is not None and unc <= max_unc):
        return float(params.zp)
    return float(zp)


def _zero_point_qa(config, grid, shape, pcat, rows, filter_code) -> dict:
    ny, nx = shape
    ra0, dec0 = grid.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    jd = float(np.mean([r["obsjd"] for r in rows]))
    try:
        refcat = read_refcat(config.refcat_path, float(ra0), float(dec0),
                             0.5 * np.hypot(nx, ny) * _PIXSCALE / 3600 + 0.05)
        return check_zero_point(pcat, grid, refcat, jd, filter_code)
    except (AlgorithmError, InputDataError, OSError, ValueError) as exc:
        log.warning("zero-point check of the co-add failed: %s", exc)
        return {"zp_check_error": str(exc)}


def _finish_catalogues(cat, pcat, grid, zp):
    for t in (cat, pcat):
        if len(t):
            t["ra"], t["dec"] = grid.pixel_to_world_values(np.asarray(t["x"]), np.asarray(t["y"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.asarray(pcat["flux"], float)
        pcat["mag"] = np.where(flux > 0, zp - 2.5 * np.log10(flux), np.nan)
        pcat["mag_err"] = np.where(flux > 0, 1.0857 * np.asarray(pcat["flux_err"]) / flux, np.nan)
    pcat["source_id"] = np.arange(1, len(pcat) + 1)


def _write_zarr(layout, key, version, result, model, header, info, qa, params) -> str:
    attrs = {"version": version, "magzp": qa.get("magzp", params.zp), "zp_common": params.zp,
             "field_id": key[0], "filter_code": key[1],
             "ccd_id": key[2], "qid": key[3], "n_frames": len(info),
             "inputs": [{k: i[k] for k in ("pid", "path", "obsjd", "seeing", "maglim")} for i in info],
             **{k: float(v) for k, v in qa.items() if isinstance(v, (float, int))}}
    ds = zarr_store.reference_dataset(result.image, result.uncertainty, result.coverage,
                                      result.mask, model.centre_stamp(), header, attrs)
    store = zarr_store.store_path(layout, key[0])
    group = zarr_store.write_reference(store, key[1], key[2], key[3], version, ds)
    return f"{store.relative_to(layout.root)}/{group}"


def build_references(config: ZsdsConfig, *, field: int | None = None, filter_code: str | None = None,
                     ccd: int | None = None, qid: int | None = None, min_frames: int = 15,
                     client=None, params: ReferenceParams | None = None) -> list[dict]:
    """Build the references of every quadrant with at least ``min_frames`` good images.

    One Dask task per quadrant reference when ``client`` is given (deterministic keys
    ``refimg-<field>-<fc>-<ccd>-<qid>``), else serially. Each outcome dict has the
    quadrant key and either :func:`build_reference`'s result or ``status = "failed"`` and
    ``error``.
    """
    engine = engine_from_config(config)
    keys = _candidates(engine, field, filter_code, ccd, qid, min_frames)
    params = ReferenceParams(**{**asdict(params or ReferenceParams()), "min_frames": int(min_frames)})
    if client is None:
        results = [_safe_build(config, k, params) for k in keys]
    else:
        futures = [client.submit(_safe_build, config, k, params, pure=False,
                                 key=f"refimg-{k[0]}-{k[1]}-{k[2]}-{k[3]}") for k in keys]
        results = client.gather(futures)
    # the Zarr metadata shared by the quadrants of a store, once all tasks have written
    layout = ArchiveLayout(config.archive.root)
    stores = {zarr_store.store_path(layout, k[0]) for k in keys}
    record_checksums(engine, layout.root, [f for st in sorted(stores) if st.exists()
                                           for f in tree_files(layout.root, st, metadata_only=True)])
    return results


def _safe_build(config, key, params) -> dict:
    out = {"field_id": key[0], "filter_code": key[1], "ccd_id": key[2], "qid": key[3]}
    try:
        out.update(build_reference(config, *key, params=params))
    except (NoWorkFound, AlgorithmError) as exc:
        out.update(status="failed", error=str(exc))
    return out
