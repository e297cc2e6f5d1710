"""Astrometric calibration accuracy on a full-size simulated quadrant (issue 4 acceptance).

Simulates ZTF field 655, CCD 13, quadrant 3, r band (2 exposures), detects sources with sep
(windowed centroids) on the truth-detrended image, solves the astrometry from the raw header WCS
and measures, against the simulator truth:

* WCS RMS per axis: for truth stars with S/N >= 10 inside the quadrant, the solution's sky
  position of the TRUE pixel position against the star's true sky position (reference catalogue
  + proper motion) - the WCS error alone;
* the same for the detected centroids (WCS + centroid noise);
* the RMS in the 3x3-grid corner cell farthest from the optical axis against the centre cell,
  for the WCS alone and with the centroid noise;
* the same after perturbing the header WCS by 60 arcsec and +/-0.1 deg;
* the solve time.

Acceptance: WCS RMS per axis <= 45 mas; corner <= 1.3 x centre with the centroid noise, and for
the WCS alone unless its corner RMS is below 4.5 mas (then the ratio compares noise).

Usage: python benchmarks/astrometry_accuracy.py [OUTDIR] [--size COLSxROWS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sep
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from zsds.camera import load_camera
from zsds.core.astrometry import solve_astrometry
from zsds.core.prepare import prepare_quadrant
from zsds.io.raw import read_raw
from zsds.io.refcat import apply_proper_motion, read_refcat

CCD, QID = 13, 3
LIMIT_MAS = 45.0
CORNER_RATIO = 1.3
#: WCS-only errors below this (mas, 10% of the limit) make the corner ratio moot.
NEGLIGIBLE_MAS = 4.5


def simulate(out: Path, size: str, seed: int, n_exp: int = 2):
    """Run the simulator unless ``out`` already holds its truth."""
    if (out / "truth" / "exposures.parquet").exists():
        return
    subprocess.run([sys.executable, "-m", "zsds.cli", "simulate", str(out), "--fields", "655",
                    "--ccds", str(CCD), "--quads", str(QID), "--quad-size", size,
                    "--exposures-per-night", str(n_exp), "--filters", "zr", "--n-bias", "0",
                    "--n-flat", "0", "--seed", str(seed)], check=True)


def load_quadrant(out: Path, row):
    """Detrended image (DN), saturation mask, header WCS, gain, epoch (Julian year)."""
    raw = read_raw(out / row.raw_path)
    q = raw.quadrants[QID - 1]
    a, b = load_camera().nonlinearity(CCD, QID - 1)
    with fits.open(out / "truth" / "detector" / f"ccd{CCD:02d}_q{QID}.fits") as det:
        bias = det["BIAS"].data.astype(np.float32)
        flat = (det["PIXRESP"].data * det["ILLUM"].data).astype(np.float32)
    prep = prepare_quadrant(q.data, q.overscan, QID, q.header["GAIN"], q.header["SATURATE"],
                            a, b, master_bias=bias)
    wcs = WCS(q.header)
    epoch = Time(row.obsjd, format="jd").jyear
    return prep.image / flat, prep.saturated, wcs, float(q.header["GAIN"]), epoch


def detect(image, saturated, thresh=5.0):
    """sep detections with windowed centroids: DataFrame x, y, flux, snr, err (pixels).

    Sources touching saturated pixels are dropped.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    bkg = sep.Background(img, mask=saturated, bw=128, bh=128)
    sub = img - bkg.back()
    obj = sep.extract(sub, thresh, err=bkg.globalrms, minarea=5, mask=saturated)
    obj = obj[(obj["flag"] & sep.OBJ_TRUNC) == 0]
    flux, ferr, _ = sep.sum_circle(sub, obj["x"], obj["y"], 4.0, err=bkg.globalrms)
    rad, _ = sep.flux_radius(sub, obj["x"], obj["y"], 6.0 * obj["a"], 0.5, normflux=flux, subpix=5)
    sig = 2.0 / 2.35 * np.clip(2 * rad, 1.0, 10.0)
    xw, yw, flag = sep.winpos(sub, obj["x"], obj["y"], sig)
    bad = saturated[np.clip(np.round(yw).astype(int), 0, img.shape[0] - 1),
                    np.clip(np.round(xw).astype(int), 0, img.shape[1] - 1)]
    snr = flux / np.maximum(ferr, 1e-6)
    df = pd.DataFrame({"x": xw, "y": yw, "flux": flux, "snr": snr,
                       "err": 0.6 * np.clip(2 * rad, 1.0, 10.0) / np.maximum(snr, 1e-3)})
    keep = (flag == 0) & ~bad & (obj["flag"] == 0) & (snr > 0) & np.isfinite(xw)
    return df[keep].reset_index(drop=True)


def references(out: Path, wcs: WCS, shape, epoch):
    """Reference catalogue around the quadrant, propagated to the epoch: (table, ra, dec)."""
    ny, nx = shape
    ra0, dec0 = wcs.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
    radius = 1.2 * np.hypot(nx, ny) / 2 * 1.02 / 3600 + 0.05
    ref = read_refcat(out / "refcat", float(ra0), float(dec0), radius)
    ra, dec = apply_proper_motion(ref, epoch)
    return ref, ra, dec


def truth_stars(out: Path, row, ref, ra, dec, gain, fwhm_px, shape):
    """Truth stars inside the quadrant with S/N >= 10: x, y (true), ra, dec (true at epoch)."""
    name = f"{row.expid}_c{CCD:02d}_q{QID}.parquet"
    src = pd.read_parquet(out / "truth" / "sources" / str(row.night) / name)
    src = src[src.kind == "star"]
    nea = 2.27 * fwhm_px**2 * 1.5  # noise-equivalent area of a Moffat, pixels
    snr = src.flux_dn / np.sqrt(src.flux_dn / gain + nea * row.true_sky_dn / gain)
    ny, nx = shape
    inside = (src.x > 2) & (src.x < nx - 3) & (src.y > 2) & (src.y < ny - 3)
    src = src[(snr >= 10) & inside]
    pos = pd.DataFrame({"ra": ra, "dec": dec}, index=ref.source_id.to_numpy())
    src = src[src.source_id.isin(pos.index)]
    return src.x.to_numpy(), src.y.to_numpy(), pos.loc[src.source_id, "ra"].to_numpy(), \
        pos.loc[src.source_id, "dec"].to_numpy(), src.source_id.to_numpy()


def sky_error_mas(sol, x, y, ra, dec):
    """(n, 2) error of the solution at pixels (x, y): (dRA cos Dec, dDec), mas."""
    ra_s, dec_s = sol.pixel_to_sky(x, y)
    dra = ((ra_s - ra + 180) % 360 - 180) * np.cos(np.radians(dec))
    return np.column_stack([dra, dec_s - dec]) * 3.6e6


def rms(err):
    return np.sqrt(np.mean(err**2, axis=0))


def corner_vs_centre(err, x, y, shape, axis_xy):
    """Per-axis RMS in the 3x3-grid cell farthest from the optical axis and in the centre cell."""
    ny, nx = shape
    cx, cy = np.minimum((x * 3 // nx).astype(int), 2), np.minimum((y * 3 // ny).astype(int), 2)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    far = max(corners, key=lambda c: np.hypot((c[0] + 0.5) * nx / 3 - axis_xy[0],
                                              (c[1] + 0.5) * ny / 3 - axis_xy[1]))
    in_far = (cx == far[0]) & (cy == far[1])
    in_mid = (cx == 1) & (cy == 1)
    return rms(err[in_far]), rms(err[in_mid]), far


def perturb(wcs: WCS, shift_arcsec: float, rot_deg: float) -> WCS:
    """Copy of a TAN header WCS with CRVAL moved north by ``shift_arcsec`` and CD rotated."""
    w = wcs.deepcopy()
    w.wcs.crval = [w.wcs.crval[0], w.wcs.crval[1] + shift_arcsec / 3600]
    a = np.radians(rot_deg)
    w.wcs.cd = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ w.wcs.cd
    w.wcs.set()
    return w


def measure(out: Path, row, header_wcs=None):
    """All acceptance numbers of one exposure (dict)."""
    image, sat, wcs, gain, epoch = load_quadrant(out, row)
    header_wcs = wcs if header_wcs is None else header_wcs(wcs)
    det = detect(image, sat)
    ref, ra, dec = references(out, wcs, image.shape, epoch)
    t0 = time.perf_counter()
    sol = solve_astrometry(det.x, det.y, det.flux, header_wcs, ra, dec, ref.r.to_numpy(float),
                           image.shape, centroid_err=det.err)
    t_solve = time.perf_counter() - t0
    fwhm = row.true_seeing_arcsec / 1.012
    xt, yt, rat, dect, ids = truth_stars(out, row, ref, ra, dec, gain, fwhm, image.shape)
    err = sky_error_mas(sol, xt, yt, rat, dect)
    axis = wcs.wcs.crpix - 1.0
    far, mid, cell = corner_vs_centre(err, xt, yt, image.shape, axis)
    i_d, i_r = sol.matched
    good = det.snr.to_numpy()[i_d] >= 10
    xd, yd = det.x.to_numpy()[i_d][good], det.y.to_numpy()[i_d][good]
    cerr = sky_error_mas(sol, xd, yd, ra[i_r][good], dec[i_r][good])
    cfar, cmid, _ = corner_vs_centre(cerr, xd, yd, image.shape, axis)
    return {"expid": int(row.expid), "n_detections": len(det), "n_refs": len(ref),
            "n_matches": sol.n_matches, "solve_s": round(t_solve, 3),
            "fit_rms_arcsec": [round(sol.rms_ra_arcsec, 4), round(sol.rms_dec_arcsec, 4)],
            "n_truth_snr10": len(xt), "wcs_rms_mas": np.round(rms(err), 1).tolist(),
            "corner_cell": list(cell), "corner_rms_mas": np.round(far, 1).tolist(),
            "centre_rms_mas": np.round(mid, 1).tolist(),
            "corner_ratio": np.round(far / mid, 2).tolist(),
            "centroid_rms_mas_snr10": np.round(rms(cerr), 1).tolist(),
            "centroid_corner_rms_mas": np.round(cfar, 1).tolist(),
            "centroid_centre_rms_mas": np.round(cmid, 1).tolist(),
            "centroid_corner_ratio": np.round(cfar / cmid, 2).tolist(),
            "header_offset_arcsec": round(sol.offset_arcsec, 2),
            "header_rotation_deg": round(sol.rotation_deg, 4),
            "true_header_rotation_deg": round(float(row.true_header_rotation_deg), 4),
            "true_header_error_arcsec": round(float(row.true_header_error_arcsec), 2),
            "inverse_error_px": float(f"{sol.inverse_error_px:.2g}")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", nargs="?", default="/tmp/zsds-astrometry")
    ap.add_argument("--size", default="3072x3080")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.outdir)
    simulate(out, args.size, args.seed)
    truth = pd.read_parquet(out / "truth" / "exposures.parquet")
    rows = truth[(truth.ccd_id == CCD) & (truth.qid == QID) & ~truth.blank]
    results = []
    for row in rows.itertuples():
        results.append(measure(out, row))
        for sign in (1, -1):
            r = measure(out, row, lambda w, s=sign: perturb(w, 60.0, 0.1 * s))
            r["perturbed"] = f"+60 arcsec, {0.1 * sign:+.1f} deg"
            results.append(r)
    for r in results:
        print(json.dumps(r))
    worst = max(max(r["wcs_rms_mas"]) for r in results)
    worst_corner = max(max(r["corner_rms_mas"]) for r in results)
    ratio = max(max(r["corner_ratio"]) for r in results)
    total_ratio = max(max(r["centroid_corner_ratio"]) for r in results)
    # The WCS-only corner/centre ratio is a ratio of noise when both are ~1 mas; it counts only
    # when the corner error is a noticeable part of the budget (> NEGLIGIBLE_MAS).
    corner_ok = ratio <= CORNER_RATIO or worst_corner <= NEGLIGIBLE_MAS
    ok = worst <= LIMIT_MAS and corner_ok and total_ratio <= CORNER_RATIO
    print(f"worst WCS RMS per axis {worst:.1f} mas (limit {LIMIT_MAS}); corner WCS RMS "
          f"{worst_corner:.1f} mas, corner/centre {ratio:.2f} (limit {CORNER_RATIO} unless the "
          f"corner is below {NEGLIGIBLE_MAS} mas); corner/centre with centroid noise "
          f"{total_ratio:.2f} (limit {CORNER_RATIO}); slowest solve "
          f"{max(r['solve_s'] for r in results):.2f} s -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
