"""Simulate a survey: reference catalogue, schedule, asteroids and raw files with truth.

Output layout (``OUTDIR``)::

    raw/...                     raw CCD files in the archive layout
    refcat/                     reference catalogue (Parquet, HEALPix-partitioned)
    schedule.csv                the survey schedule
    asteroids.csv               the known-asteroid orbit file
    truth/
        exposures.parquet       per exposure and quadrant: conditions, zero points, WCS truth
        detector/ccdCC_qQ.fits  static detector truth (BIAS, PIXRESP, ILLUM, DARK, DEFECTS)
        floating_bias.parquet   true raw bias level of every row of every quadrant read
        sources/<night>/<expid>_cCC_qQ.parquet   every rendered source (if source truth on;
                                                 asteroid trails: ``trail_dx``, ``trail_dy``)
        transients.parquet, variables.parquet, asteroids.parquet, cosmic_rays.parquet
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.time import Time

from ..camera import FILTERS, load_camera, tan_deproject
from ..io.paths import ArchiveLayout, RawName, filefracday_from_jd
from ..io.raw import RawQuadrant, write_raw
from . import render
from .detector import DetectorTruth, make_detector
from .observe import Conditions, draw_conditions, psf_at, sky_to_focal, worst_header_error_arcsec
from .schedule import airmass_at, make_schedule

__all__ = ["SimulationSpec", "simulate", "simulate_quadrant"]

log = logging.getLogger(__name__)
_PIXSCALE = 1.012
_FLAT_LEVEL_DN = 25000.0
_CR_RATE = 0.03  # cosmic rays per cm^2 per second (Palomar, 1700 m)


@dataclass
class SimulationSpec:
    """What to simulate.

    Attributes
    ----------
    outdir : Path
    nights : int
    start_night : str
        ``YYYYMMDD``.
    fields : list of int
    ccds : list of int
        CCDs written (each file carries 4 quadrants).
    quads : list of int
        Quadrants rendered with sky and sources; the others of each CCD are written blank
        (bias and noise, header ``SIMBLANK = T``).
    quad_shape : (rows, cols)
    seed : int
    filters : list of str
    exposures_per_night : int
    seeing_arcsec : float or None
        Fix the seeing of every exposure.
    sky_mag : float or None
        Fix the sky brightness.
    n_transients : int
        Transients per simulated quadrant footprint.
    quiet_nights : int
        Transients appear only after the first ``quiet_nights`` nights (each explodes at a
        random time after them and peaks later). A reference built from those nights then holds
        none of their light, as with fakes injected into science images. 0: every transient
        exists throughout the survey (rising to and declining from its peak).
    span_days, scatter_visits : int, bool
        Spread the nights at random over ``span_days`` days, and the exposures of a night at
        random over its observable window (see :func:`~zsds.sim.schedule.make_schedule`).
    variable_fraction : float
        Fraction of stars brighter than r = 19 that are periodic variables.
    n_mba, n_nea : int
        Asteroids (known and unknown) placed in the survey footprint.
    nea_delta_au : (float, float)
        Range of the NEAs' topocentric distances (au) when placed; a close range such as
        (0.005, 0.03) makes most of them streak over more than 10 pixels in 30 s.
    source_truth : bool
        Write per-quadrant source truth tables.
    cloudy_fraction : float
        Fraction of object exposures lost to clouds.
    cosmic_rays : bool
        Deposit cosmic rays (False keeps every other random number: with ``n_mba = n_nea = 0``
        it makes a twin of a survey without its single-epoch outliers).
    """

    outdir: Path
    nights: int = 1
    start_night: str = "20261121"
    fields: list[int] = field(default_factory=lambda: [655])
    ccds: list[int] = field(default_factory=lambda: list(range(1, 17)))
    quads: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    quad_shape: tuple[int, int] = (3080, 3072)
    seed: int = 1
    filters: list[str] = field(default_factory=lambda: ["zr", "zg"])
    exposures_per_night: int = 700
    seeing_arcsec: float | None = None
    sky_mag: float | None = None
    n_transients: int = 5
    quiet_nights: int = 0
    span_days: int = 0
    scatter_visits: bool = False
    cosmic_rays: bool = True
    variable_fraction: float = 0.02
    n_mba: int = 40
    n_nea: int = 6
    nea_delta_au: tuple[float, float] = (0.05, 0.5)
    source_truth: bool = True
    cloudy_fraction: float = 0.0
    n_bias: int = 10
    n_flat: int = 10


# ---------------------------------------------------------------------------------------
# footprint and catalogue
# ---------------------------------------------------------------------------------------
def _quad_circle(camera, field_xy, ccd, qid, shape):
    geo = camera.quadrant(ccd, qid)
    ny, nx = shape
    ew, ns = geo.pixel_to_focal((nx - 1) / 2, (ny - 1) / 2, shape)
    ra, dec = tan_deproject(ew, ns, *field_xy)
    radius = 0.5 * np.hypot(nx, ny) * _PIXSCALE / 3600 + 0.03
    return float(ra), float(dec), float(radius)


def _footprint(spec: SimulationSpec, camera):
    circles = {}
    for f in spec.fields:
        fld = camera.field(f)
        for ccd in spec.ccds:
            for qid in spec.quads:
                circles[(f, ccd, qid)] = _quad_circle(camera, (fld.ra, fld.dec), ccd, qid,
                                                      spec.quad_shape)
    return circles


def _variables(refcat: pd.DataFrame, spec: SimulationSpec) -> pd.DataFrame:
    """Periodic variables: a deterministic subset of stars brighter than r = 19."""
    stars = refcat[(~refcat["galaxy"]) & (refcat["r"].notna()) & (refcat["r"] < 19.0)]
    ids = stars["source_id"].to_numpy()
    rng = np.random.default_rng([spec.seed, 23])
    h = (ids * 2654435761 + spec.seed) % 1000003 / 1000003.0
    chosen = ids[h < spec.variable_fraction]
    n = chosen.size
    return pd.DataFrame({
        "source_id": chosen,
        "period_d": np.exp(rng.uniform(np.log(0.2), np.log(20.0), n)),
        "amplitude_mag": rng.uniform(0.1, 0.8, n),
        "phase0": rng.uniform(0, 1, n),
        "shape": rng.choice(["sine", "sawtooth"], n),
    })


def _variable_dmag(var: pd.DataFrame, jd: float) -> np.ndarray:
    phase = ((jd - 2461000.5) / var["period_d"].to_numpy() + var["phase0"].to_numpy()) % 1.0
    amp = var["amplitude_mag"].to_numpy()
    saw = var["shape"].to_numpy() == "sawtooth"
    wave = np.where(saw, 2.0 * phase - 1.0, np.sin(2 * np.pi * phase))
    return 0.5 * amp * wave


def _transients(spec: SimulationSpec, circles, refcat, jd0, jd1,
                quiet_end_jd: float | None = None) -> pd.DataFrame:
    rng = np.random.default_rng([spec.seed, 29])
    rows = []
    gals = refcat[refcat["galaxy"] & refcat["r"].notna() & (refcat["r"] < 20.5)]
    used_hosts: set[int] = set()  # a galaxy hosts one transient at a time
    for (f, ccd, qid), (ra, dec, radius) in sorted(circles.items()):
        inner = radius * 0.6
        for k in range(spec.n_transients):
            host = None
            if k % 2 == 1 and len(gals):
                d = np.hypot((gals["ra"] - ra) * np.cos(np.radians(dec)), gals["dec"] - dec)
                near = gals[(d < inner) & ~gals["source_id"].isin(used_hosts)]
                if len(near):
                    host = near.iloc[int(rng.integers(len(near)))]
            if host is not None:
                off = rng.normal(0, 0.5 * float(host["gal_hlr_arcsec"]) / 3600, 2)
                t_ra = float(host["ra"] + off[0] / np.cos(np.radians(dec)))
                t_dec = float(host["dec"] + off[1])
                host_id = int(host["source_id"])
                used_hosts.add(host_id)
            else:
                r = inner * np.sqrt(rng.uniform())
                a = rng.uniform(0, 2 * np.pi)
                t_ra = float(ra + r * np.cos(a) / np.cos(np.radians(dec)))
                t_dec = float(dec + r * np.sin(a))
                host_id = -1
            rows.append(dict(
                transient_id=len(rows) + 1, ra=t_ra % 360, dec=t_dec, host_source_id=host_id,
                field_id=f, t_peak_jd=float(rng.uniform(jd0 - 3, jd1 + 3)),
                peak_mag_r=float(rng.uniform(16.5, 20.0)), color_gr=float(rng.normal(0.0, 0.2)),
                rise_mag_per_day=float(rng.uniform(0.15, 0.5)),
                decline_mag_per_day=float(rng.uniform(0.03, 0.1))))
    table = pd.DataFrame(rows)
    table["t_explode_jd"] = -np.inf
    if quiet_end_jd is not None and len(table):
        late = np.random.default_rng([spec.seed, 30])
        table["t_explode_jd"] = quiet_end_jd + late.uniform(0.01, 0.3, len(table))
        table["t_peak_jd"] = table["t_explode_jd"] + late.uniform(0.0, max(jd1 + 3 - quiet_end_jd, 0.5),
                                                                   len(table))
    return table


def _transient_mags(tr: pd.DataFrame, jd: float, filt: str) -> np.ndarray:
    if tr.empty:
        return np.zeros(0)
    dt = jd - tr["t_peak_jd"].to_numpy()
    rate = np.where(dt < 0, tr["rise_mag_per_day"], tr["decline_mag_per_day"])
    mag_r = tr["peak_mag_r"].to_numpy() + np.abs(dt) * rate
    offset = {"zg": tr["color_gr"].to_numpy(), "zr": 0.0, "zi": -0.2}[filt]
    if "t_explode_jd" in tr:
        mag_r = np.where(jd >= tr["t_explode_jd"].to_numpy(), mag_r, np.inf)  # not yet there
    return mag_r + offset


# ---------------------------------------------------------------------------------------
# one quadrant
# ---------------------------------------------------------------------------------------
@dataclass
class QuadrantScene:
    """Sources of one quadrant exposure in sky terms (before projection)."""

    ids: np.ndarray
    kind: np.ndarray          # 'star', 'galaxy', 'transient', 'asteroid'
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray           # AB, PS1 system, in the exposure's band
    colour: np.ndarray        # g-r (or r-i for ZTF i)
    hlr_arcsec: np.ndarray
    axis_ratio: np.ndarray
    pa_deg: np.ndarray
    trail_dx: np.ndarray      # trail across the exposure, pixels (asteroids)
    trail_dy: np.ndarray


def _bias_rows(rng, ny, bias_level):
    """A floating bias: offset plus smooth structure of ~3 ADU on ~300-row scales."""
    n_knots = max(4, ny // 300 + 2)
    knots = rng.normal(0, 3.0, n_knots)
    yk = np.linspace(0, ny - 1, n_knots)
    smooth = np.interp(np.arange(ny), yk, knots)
    kernel = np.hanning(61)
    smooth = np.convolve(np.pad(smooth, 30, mode="edge"), kernel / kernel.sum(), mode="valid")
    return bias_level + rng.normal(0, 5.0) + smooth + 0.5 * np.sin(np.arange(ny) / ny * 7 + rng.uniform(0, 6))


def _project_scene(scene: QuadrantScene, cond: Conditions, geo, shape, gain):
    ew, ns = sky_to_focal(scene.ra, scene.dec, cond)
    x, y = geo.focal_to_pixel(ew, ns, shape)
    ny, nx = shape
    keep = (x > -40) & (x < nx + 40) & (y > -40) & (y < ny + 40) & np.isfinite(scene.mag)
    fwhm, beta, ellip, theta = psf_at(ew[keep], ns[keep], cond)
    mag = scene.mag[keep]
    m_inst = mag - cond.zp_axis - cond.clrcoeff * scene.colour[keep]
    flux_dn = 10.0 ** (-0.4 * m_inst)
    kind = scene.kind[keep]
    ext = kind == "galaxy"
    hlr_px = scene.hlr_arcsec[keep] / _PIXSCALE
    gal_fwhm = np.sqrt(fwhm**2 + (1.2 * hlr_px) ** 2)
    fwhm = np.where(ext, gal_fwhm, fwhm)
    q = np.clip(scene.axis_ratio[keep], 0.2, 1.0)
    intrinsic = (1.2 * hlr_px) ** 2 / np.maximum(gal_fwhm**2, 1e-9)
    ellip = np.where(ext, (1.0 - q) * intrinsic, ellip)
    theta = np.where(ext, np.radians(scene.pa_deg[keep]), theta)
    beta = np.where(ext, 2.2, beta)
    table = pd.DataFrame({"source_id": scene.ids[keep], "kind": kind, "x": x[keep],
                          "y": y[keep], "mag": mag, "flux_dn_axis": flux_dn,
                          "fwhm_px": fwhm, "beta": beta, "ellip": ellip, "theta": theta})
    sl = render.SourceList(x[keep], y[keep], flux_dn * gain, fwhm, beta, ellip, theta, ext)
    tdx, tdy = scene.trail_dx[keep], scene.trail_dy[keep]
    # trail across the exposure (pixels; x, y is its midpoint), 0 for fixed sources
    table["trail_dx"], table["trail_dy"] = tdx, tdy
    return _expand_trails(sl, tdx, tdy), table


def _expand_trails(sl: render.SourceList, tdx, tdy):
    length = np.hypot(tdx, tdy)
    moving = length > 1.0
    if not moving.any():
        return sl
    parts = [sl.subset(~moving)]
    for i in np.flatnonzero(moving):
        n = int(np.ceil(length[i] / 0.5)) + 1
        t = np.linspace(-0.5, 0.5, n)
        one = sl.subset(np.full(n, i))
        one.x = one.x + t * tdx[i]
        one.y = one.y + t * tdy[i]
        one.flux_e = one.flux_e / n
        parts.append(one)
    return render.SourceList(*(np.concatenate([getattr(p, f) for p in parts])
                               for f in render.SourceList.__dataclass_fields__))


def simulate_quadrant(scene: QuadrantScene | None, cond: Conditions | None, det: DetectorTruth,
                      amp, geo, shape, imgtype: str, exptime: float, rng, *,
                      flat_illum: np.ndarray | None = None, blank: bool = False,
                      cosmic_rays: bool = True):
    """Render one readout quadrant; returns (data, overscan, bias_rows, source table, cosmic rays).

    Pure function of its inputs (the generator included).
    """
    ny, nx = shape
    electrons = np.zeros(shape, np.float32)
    table = None
    if imgtype == "object" and not blank:
        sky_dn = 10 ** (-0.4 * (cond.sky_mag - cond.zp_axis)) * _PIXSCALE**2
        yy = np.arange(ny, dtype=np.float32)[:, None] - ny / 2
        xx = np.arange(nx, dtype=np.float32)[None, :] - nx / 2
        electrons += np.float32(sky_dn * amp.gain) * (1 + cond.sky_grad_x * xx + cond.sky_grad_y * yy)
        sources, table = _project_scene(scene, cond, geo, shape, amp.gain)
        centre = psf_at(*geo.pixel_to_focal((nx - 1) / 2, (ny - 1) / 2, shape), cond)
        render.render_sources(electrons, sources, tuple(float(np.asarray(v)) for v in centre))
        electrons *= det.pixel_response * det.illumination
    elif imgtype == "flat" and not blank:
        level = _FLAT_LEVEL_DN * amp.gain * rng.uniform(0.97, 1.03)
        electrons += np.float32(level) * flat_illum * det.pixel_response * det.illumination
    if exptime > 0:
        electrons += det.dark_current * np.float32(exptime)
    low = electrons < 20
    noisy = electrons + np.sqrt(np.maximum(electrons, 0)) * rng.standard_normal(shape, dtype=np.float32)
    if low.any():
        noisy[low] = rng.poisson(np.maximum(electrons[low], 0))
    electrons = noisy
    crs = render.add_cosmic_rays(electrons, rng, _CR_RATE, exptime + 10.0, deposit=cosmic_rays)
    full_well = amp.gain * float(np.asarray(render_linear(amp.saturate - amp.bias_level + 300, amp)))
    render.bleed_columns(electrons, full_well)
    bias_rows = _bias_rows(rng, ny, amp.bias_level)
    params = render.ReadoutParams(gain=amp.gain, read_noise_e=amp.read_noise, exptime=exptime,
                                  saturate_adu=amp.saturate, nl_a=amp.nl_a, nl_b=amp.nl_b,
                                  qid=amp.qid)
    data, overscan = render.read_out(electrons, params, bias_rows, det.bias_pattern, rng)
    return data, overscan, bias_rows, table, crs


def render_linear(raw_dn, amp):
    """Linear DN corresponding to a raw (overscan-subtracted) DN for an amplifier."""
    from ..camera import linearize
    return linearize(np.asarray(raw_dn, float), amp.nl_a, amp.nl_b)


def _flat_lamp(geo, shape, rng_seed, night):
    """Dome-lamp illumination: smooth, unlike the sky (a tilt and a radial term)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    ew, ns = geo.pixel_to_focal(xx, yy, shape)
    rng = np.random.default_rng([rng_seed, 31, int(night)])
    tilt = rng.normal(0, 0.004, 2)
    return (1.0 + tilt[0] * ew + tilt[1] * ns + 0.003 * (ew**2 + ns**2)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------------------
def _primary_header(row, ccd, pointing, airmass) -> fits.Header:
    h = fits.Header()
    filt_name, filt_id = FILTERS[row.filter]
    t0 = Time(row.obsjd, format="jd", scale="utc")
    t1 = Time(row.obsjd + row.exptime / 86400.0, format="jd", scale="utc")
    h["ORIGIN"] = "Zwicky Transient Facility"
    h["TELESCOP"] = "Palomar 48-inch"
    h["INSTRUME"] = "ZTF/MOSAIC"
    h["IMGTYPE"] = row.imgtype
    h["EXPID"] = int(row.expid)
    h["OBSJD"] = (float(row.obsjd), "JD (UTC) of shutter open")
    h["OBSMJD"] = float(row.obsjd) - 2400000.5
    h["SHUTOPEN"] = t0.isot
    h["SHUTCLSD"] = t1.isot
    h["EXPTIME"] = (float(row.exptime), "s")
    h["FILTER"] = filt_name
    h["FILTERID"] = filt_id
    h["FIELDID"] = int(row.field_id)
    h["PROGRMID"] = int(row.program_id)
    h["TELRAD"] = (float(pointing[0]), "deg ICRS")
    h["TELDECD"] = (float(pointing[1]), "deg ICRS")
    h["AIRMASS"] = float(airmass)
    h["CCD_ID"] = int(ccd)
    h["PIXSCALE"] = (_PIXSCALE, "arcsec/pixel")
    h["SIMULATE"] = (True, "made by the zsds camera simulator")
    return h


def _header_wcs(camera, ccd, qid, pointing, rotation_deg, shape):
    w = camera.nominal_wcs(ccd, qid, pointing[0], pointing[1], shape)
    a = np.radians(rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    w.wcs.cd = rot @ w.wcs.cd
    return w


def _quadrant_header(amp, w, blank) -> fits.Header:
    h = fits.Header()
    h["EXTNAME"] = f"Q{amp.qid}"
    h["CCD_ID"] = amp.ccd_id
    h["AMP_ID"] = amp.amp_id
    h["GAIN"] = (round(amp.gain, 3), "e-/ADU")
    h["READNOI"] = (round(amp.read_noise, 2), "e-")
    h["DARKCUR"] = (round(amp.dark_current, 3), "e-/s")
    h["SATURATE"] = (float(round(amp.saturate)), "raw ADU incl. bias")
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = float(w.wcs.crval[0]), float(w.wcs.crval[1])
    h["CRPIX1"], h["CRPIX2"] = float(w.wcs.crpix[0]), float(w.wcs.crpix[1])
    cd = w.wcs.cd
    h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    if blank:
        h["SIMBLANK"] = (True, "not rendered: bias and noise only")
    return h


# ---------------------------------------------------------------------------------------
# the survey
# ---------------------------------------------------------------------------------------
class _ParquetSink:
    """Accumulates truth rows and writes a Parquet table."""

    def __init__(self):
        self.frames: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame):
        if len(frame):
            self.frames.append(frame)

    def write(self, path: Path):
        if self.frames:
            df = pd.concat(self.frames, ignore_index=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_parquet(path, index=False)


def _write_detector(path: Path, det: DetectorTruth):
    path.parent.mkdir(parents=True, exist_ok=True)
    hdus = [fits.PrimaryHDU()]
    for name, arr in (("BIAS", det.bias_pattern), ("PIXRESP", det.pixel_response),
                      ("ILLUM", det.illumination), ("DARK", det.dark_current),
                      ("DEFECTS", det.defects)):
        hdus.append(fits.ImageHDU(arr, name=name))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _scene_for(base: dict, var: pd.DataFrame, tr: pd.DataFrame, ast: pd.DataFrame,
               row, cond: Conditions, geo_shape) -> QuadrantScene:
    band = {"zg": "g", "zr": "r", "zi": "i"}[row.filter]
    mag = base[band].copy()
    colour = base["colour_ri"] if row.filter == "zi" else base["colour_gr"]
    if len(var):
        dm = pd.Series(_variable_dmag(var, row.obsjd), index=var["source_id"])
        hit = np.isin(base["ids"], var["source_id"].to_numpy())
        mag[hit] += dm.reindex(base["ids"][hit]).to_numpy()
    n_tr = len(tr)
    tr_mag = _transient_mags(tr, row.obsjd, row.filter)
    n_ast = len(ast)
    ast_mag = (ast["mag_v"].to_numpy() + {"zg": 0.35, "zr": -0.2, "zi": -0.35}[row.filter]) if n_ast else np.zeros(0)
    z = np.zeros
    return QuadrantScene(
        ids=np.concatenate([base["ids"], tr["transient_id"].to_numpy() if n_tr else z(0, np.int64),
                            ast["asteroid_index"].to_numpy() if n_ast else z(0, np.int64)]),
        kind=np.concatenate([base["kind"], np.full(n_tr, "transient"), np.full(n_ast, "asteroid")]),
        ra=np.concatenate([base["ra"], tr["ra"].to_numpy() if n_tr else z(0), ast["ra"].to_numpy() if n_ast else z(0)]),
        dec=np.concatenate([base["dec"], tr["dec"].to_numpy() if n_tr else z(0), ast["dec"].to_numpy() if n_ast else z(0)]),
        mag=np.concatenate([mag, tr_mag, ast_mag]),
        colour=np.concatenate([colour, np.zeros(n_tr), np.full(n_ast, 0.55)]),
        hlr_arcsec=np.concatenate([base["hlr"], z(n_tr), z(n_ast)]),
        axis_ratio=np.concatenate([base["q"], np.ones(n_tr), np.ones(n_ast)]),
        pa_deg=np.concatenate([base["pa"], z(n_tr), z(n_ast)]),
        trail_dx=np.concatenate([z(len(base["ids"])), z(n_tr), ast["trail_dx"].to_numpy() if n_ast else z(0)]),
        trail_dy=np.concatenate([z(len(base["ids"])), z(n_tr), ast["trail_dy"].to_numpy() if n_ast else z(0)]),
    )


def _base_scene(refcat: pd.DataFrame, circle, epoch_jyear: float) -> dict:
    from ..io.refcat import apply_proper_motion
    ra0, dec0, radius = circle
    d = np.hypot(((refcat["ra"] - ra0 + 180) % 360 - 180) * np.cos(np.radians(dec0)),
                 refcat["dec"] - dec0)
    sub = refcat[d < radius + 0.02]
    ra, dec = apply_proper_motion(sub, epoch_jyear)
    # Render the noiseless true magnitudes when the catalogue carries them (our simulated
    # catalogue does); the catalogue values have PS1-like errors and nulls.
    def mags(band):
        name = f"true_{band}" if f"true_{band}" in sub else band
        return sub[name].astype("float64").to_numpy(na_value=np.nan)
    g, r, i = mags("g"), mags("r"), mags("i")
    gr = np.where(np.isfinite(g - r), g - r, 0.6)
    ri = np.where(np.isfinite(r - i), r - i, 0.2)
    r_f = np.where(np.isfinite(r), r, np.where(np.isfinite(g), g - 0.6, i + 0.2))
    g_f = np.where(np.isfinite(g), g, r_f + gr)
    i_f = np.where(np.isfinite(i), i, r_f - ri)
    gal = sub["galaxy"].to_numpy(dtype=bool) if "galaxy" in sub else np.zeros(len(sub), bool)
    def col(name, default):
        return sub[name].astype("float64").fillna(default).to_numpy() if name in sub else np.full(len(sub), default)
    return {"ids": sub["source_id"].to_numpy(np.int64), "kind": np.where(gal, "galaxy", "star"),
            "ra": np.asarray(ra), "dec": np.asarray(dec), "g": g_f, "r": r_f, "i": i_f,
            "colour_gr": gr, "colour_ri": ri, "hlr": np.where(gal, col("gal_hlr_arcsec", 1.0), 0.0),
            "q": np.where(gal, col("gal_axis_ratio", 1.0), 1.0),
            "pa": np.where(gal, col("gal_pa_deg", 0.0), 0.0)}


def _asteroid_pointings(circles, sched: pd.DataFrame) -> list[tuple]:
    """(ra, dec, radius, jd) circles: each quadrant footprint at a mid-night visit of its field.

    Asteroids are placed inside a footprint at a time the footprint is observed, so they
    are seen (main-belt objects drift ~0.25 deg/day, near-Earth objects several deg/day).
    """
    out = []
    obj = sched[sched["imgtype"] == "object"]
    for (f, _ccd, _qid), (ra, dec, radius) in sorted(circles.items()):
        for _night, visits in obj[obj["field_id"] == f].groupby("night"):
            jd = visits["obsjd"].to_numpy()
            out.append((ra, dec, 0.8 * radius, float(jd[len(jd) // 2])))
    return out or [(ra, dec, radius) for ra, dec, radius in circles.values()]


def _asteroid_positions(orbits: pd.DataFrame, sched: pd.DataFrame) -> pd.DataFrame:
    """Ephemerides of all asteroids at mid-exposure of every object exposure."""
    from ..core.ephemeris import ephemerides
    obj = sched[sched["imgtype"] == "object"]
    if obj.empty or orbits.empty:
        return pd.DataFrame()
    jd_mid = (obj["obsjd"] + obj["exptime"] / 172800.0).to_numpy()
    eph = ephemerides(orbits, jd_mid)
    eph = eph.merge(pd.DataFrame({"jd": jd_mid, "expid": obj["expid"].to_numpy()}), on="jd", how="left")
    index = {d: k for k, d in enumerate(orbits["designation"])}
    eph["asteroid_index"] = eph["designation"].map(index).astype(np.int64)
    return eph


def _trails(eph: pd.DataFrame, cond: Conditions, geo, shape, exptime):
    half = exptime / 86400.0 / 2.0
    cosd = np.cos(np.radians(eph["dec"].to_numpy()))
    ra1 = eph["ra"].to_numpy() - eph["dra_cosdec"].to_numpy() * half / cosd
    dec1 = eph["dec"].to_numpy() - eph["ddec"].to_numpy() * half
    ra2 = eph["ra"].to_numpy() + eph["dra_cosdec"].to_numpy() * half / cosd
    dec2 = eph["dec"].to_numpy() + eph["ddec"].to_numpy() * half
    x1, y1 = geo.focal_to_pixel(*sky_to_focal(ra1, dec1, cond), shape)
    x2, y2 = geo.focal_to_pixel(*sky_to_focal(ra2, dec2, cond), shape)
    return x2 - x1, y2 - y1


def simulate(spec: SimulationSpec, progress=None) -> dict:
    """Simulate the survey described by ``spec`` (see the module docstring for the output).

    Parameters
    ----------
    spec : SimulationSpec
    progress : callable, optional
        ``progress(n_done, n_total, message)`` called after each raw file.

    Returns
    -------
    dict
        Counts of what was written (``raw_files``, ``refcat_sources``, ...).
    """
    from ..io.refcat import write_refcat
    from .asteroids import public_orbit_table, simulate_asteroids
    from .refcat import simulate_refcat

    camera = load_camera()
    out = Path(spec.outdir)
    out.mkdir(parents=True, exist_ok=True)
    layout = ArchiveLayout(out)
    truth = out / "truth"
    circles = _footprint(spec, camera)
    refcat = simulate_refcat(list(circles.values()), seed=spec.seed)
    write_refcat(refcat, out / "refcat")
    coords = {f: (camera.field(f).ra, camera.field(f).dec) for f in spec.fields}
    sched = make_schedule(spec.start_night, spec.nights, spec.fields, coords, spec.filters,
                          spec.exposures_per_night, spec.seed, spec.n_bias, spec.n_flat,
                          span_days=spec.span_days, scatter_visits=spec.scatter_visits)
    sched[[c for c in sched.columns if c != "night"]].to_csv(out / "schedule.csv", index=False)
    jd0, jd1 = float(sched["obsjd"].min()), float(sched["obsjd"].max())
    ast = simulate_asteroids(_asteroid_pointings(circles, sched), jd0, jd1, spec.seed,
                             spec.n_mba, spec.n_nea, nea_delta_au=spec.nea_delta_au)
    public_orbit_table(ast).to_csv(out / "asteroids.csv", index=False)
    truth.mkdir(exist_ok=True)
    ast.to_parquet(truth / "asteroids.parquet", index=False)
    variables = _variables(refcat, spec)
    variables.to_parquet(truth / "variables.parquet", index=False)
    quiet_end = None
    if spec.quiet_nights > 0:
        nights = sorted(sched["night"].unique())
        quiet = sched[sched["night"].isin(nights[:spec.quiet_nights])]
        quiet_end = float(quiet["obsjd"].max()) if len(quiet) else None
    transients = _transients(spec, circles, refcat, jd0, jd1, quiet_end)
    transients.to_parquet(truth / "transients.parquet", index=False)
    eph = _asteroid_positions(ast, sched)
    if len(eph):
        eph.to_parquet(truth / "asteroid_ephemerides.parquet", index=False)

    detectors, amps, geos = {}, {}, {}
    for ccd in spec.ccds:
        for qid in (1, 2, 3, 4):
            amp = camera.amplifier(ccd, qid)
            geo = camera.quadrant(ccd, qid)
            amps[(ccd, qid)], geos[(ccd, qid)] = amp, geo
            detectors[(ccd, qid)] = make_detector(spec.seed, ccd, qid, spec.quad_shape, geo,
                                                  amp.read_noise / amp.gain)
            if qid in spec.quads:
                _write_detector(truth / "detector" / f"ccd{ccd:02d}_q{qid}.fits",
                                detectors[(ccd, qid)])
    epoch = float(Time(jd0, format="jd").jyear)
    bases = {key: _base_scene(refcat, c, epoch) for key, c in circles.items()}
    exp_rows, bias_sink, cr_sink = [], _ParquetSink(), _ParquetSink()
    n_total = len(sched) * len(spec.ccds)
    n_done = 0
    lamps = {}
    for row in sched.itertuples(index=False):
        is_obj = row.imgtype == "object"
        pointing = coords[row.field_id] if is_obj else (0.0, 33.36)
        airmass = float(airmass_at(row.obsjd, *pointing)[0]) if is_obj else 1.0
        rng_c = np.random.default_rng([spec.seed, 3, int(row.expid)])
        cloudy = is_obj and rng_c.random() < spec.cloudy_fraction
        cond = draw_conditions(row.expid, row.filter, airmass, pointing, rng_c,
                               spec.seeing_arcsec, spec.sky_mag, cloudy) if is_obj else None
        for ccd in spec.ccds:
            ffd = filefracday_from_jd(row.obsjd)
            fc = "bi" if row.imgtype == "bias" else ("dk" if row.imgtype == "dark" else row.filter)
            name = RawName(ffd[:8], ffd[8:], int(row.field_id), fc, ccd,
                           {"object": "o", "bias": "b", "flat": "f", "dark": "d"}[row.imgtype])
            quads = []
            hdr_rot = cond.header_rotation_deg if cond else 0.0
            for qid in (1, 2, 3, 4):
                key = (ccd, qid)
                amp, geo, det = amps[key], geos[key], detectors[key]
                blank = qid not in spec.quads
                w = _header_wcs(camera, ccd, qid, pointing, hdr_rot, spec.quad_shape)
                if cond and not blank:
                    for _ in range(20):
                        err = worst_header_error_arcsec(cond, w, geo, spec.quad_shape)
                        if err <= 58.0:
                            break
                        hdr_rot *= 0.7
                        w = _header_wcs(camera, ccd, qid, pointing, hdr_rot, spec.quad_shape)
                scene = None
                if is_obj and not blank:
                    circle_key = (row.field_id, ccd, qid)
                    e = eph[eph["expid"] == row.expid] if len(eph) else pd.DataFrame()
                    if len(e):
                        e = e.copy()
                        e["trail_dx"], e["trail_dy"] = _trails(e, cond, geo, spec.quad_shape, row.exptime)
                    scene = _scene_for(bases[circle_key], variables,
                                       transients[transients["field_id"] == row.field_id]
                                       if len(transients) else transients, e, row, cond, None)
                if row.imgtype == "flat" and key not in lamps:
                    lamps[key] = _flat_lamp(geo, spec.quad_shape, spec.seed, row.night)
                rng = np.random.default_rng([spec.seed, int(row.expid), ccd, qid])
                data, over, bias_rows, table, crs = simulate_quadrant(
                    scene, cond, det, amp, geo, spec.quad_shape, row.imgtype, float(row.exptime),
                    rng, flat_illum=lamps.get(key), blank=blank, cosmic_rays=spec.cosmic_rays)
                quads.append(RawQuadrant(data, over, _quadrant_header(amp, w, blank)))
                med_resp = float(np.median(det.pixel_response * det.illumination))
                rec = dict(night=row.night, expid=int(row.expid), obsjd=float(row.obsjd),
                           imgtype=row.imgtype, field_id=int(row.field_id), filter=row.filter,
                           program_id=int(row.program_id), ccd_id=ccd, qid=qid, blank=blank,
                           raw_path=str(layout.raw_path(name).relative_to(out)))
                if cond:
                    rec.update({f"true_{k}": v for k, v in cond.as_dict().items()
                                if k not in ("expid", "filter")})
                    rec["true_header_rotation_deg"] = hdr_rot
                    rec["true_zp_quadrant"] = cond.zp_axis + 2.5 * np.log10(med_resp)
                    rec["true_header_error_arcsec"] = (worst_header_error_arcsec(cond, w, geo, spec.quad_shape)
                                                       if not blank else np.nan)
                    rec["true_sky_dn"] = 10 ** (-0.4 * (cond.sky_mag - cond.zp_axis)) * _PIXSCALE**2 * med_resp
                exp_rows.append(rec)
                if qid in spec.quads:
                    bias_sink.add(pd.DataFrame({"night": [row.night], "expid": [int(row.expid)],
                                                "ccd_id": [ccd], "qid": [qid],
                                                "bias_rows": [np.asarray(bias_rows, np.float32)]}))
                    if len(crs):
                        cr_sink.add(pd.DataFrame(crs, columns=["x0", "y0", "length", "angle", "e_per_px"])
                                    .assign(expid=int(row.expid), ccd_id=ccd, qid=qid))
                if table is not None and spec.source_truth:
                    table = table.assign(flux_dn=table["flux_dn_axis"] * med_resp)
                    p = truth / "sources" / row.night / f"{row.expid}_c{ccd:02d}_q{qid}.parquet"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    table.to_parquet(p, index=False)
            write_raw(layout.raw_path(name), _primary_header(row, ccd, pointing, airmass), quads)
            n_done += 1
            if progress:
                progress(n_done, n_total, name.name)
    pd.DataFrame(exp_rows).to_parquet(truth / "exposures.parquet", index=False)
    bias_sink.write(truth / "floating_bias.parquet")
    cr_sink.write(truth / "cosmic_rays.parquet")
    return {"raw_files": n_done, "refcat_sources": len(refcat), "exposures": len(sched),
            "asteroids": len(ast), "transients": len(transients), "variables": len(variables)}
