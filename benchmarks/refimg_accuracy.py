"""Acceptance numbers of the reference co-adds (issue 5).

Accuracy (on a simulated, calibrated archive; see the issue for the commands)::

    python benchmarks/refimg_accuracy.py accuracy --archive OUT/archive --incoming OUT/incoming \
        --field 655 --filter zr --ccd 13 --qid 3 --min-frames 5

prints: depth gain (single-epoch PSF-flux noise / co-add PSF-flux noise) against sqrt(N) and
against the optimal expectation for the actual inputs; the co-add's zero point fitted against
the refcat's noiseless true magnitudes (should be the common ZP); the astrometric RMS of co-add
stars against their true positions; the significance, in the co-add, at the positions of
asteroids and cosmic rays present in one input only (static sources within 6 px excluded).

With ``--twin-archive TWIN/archive`` also the residual at every such position against the
co-add of a twin survey, simulated with the same seed and ``--n-mba 0 --n-nea 0
--no-cosmic-rays`` and processed the same way (stars and galaxies cancel exactly)::

    zsds simulate A/incoming ... --seed S --n-mba 300
    zsds simulate B/incoming ... --seed S --n-mba 0 --n-nea 0 --no-cosmic-rays
    (zsds run-night on each)
    python benchmarks/refimg_accuracy.py accuracy --archive A/archive --incoming A/incoming \
        --twin-archive B/archive

Memory (synthetic full-size or smaller inputs, fresh process)::

    python benchmarks/refimg_accuracy.py memory --n 20 --size 1024x1030
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from zsds.config import load_config  # noqa: E402
from zsds.core import astrometry, background, coadd, photcal  # noqa: E402
from zsds.core.psf import PSFModel  # noqa: E402
from zsds.db import ops  # noqa: E402
from zsds.io.paths import ArchiveLayout  # noqa: E402
from zsds.io.products import read_table  # noqa: E402
from zsds.io.refcat import apply_proper_motion, read_refcat  # noqa: E402
from zsds.stages.refimg import ReferenceParams, build_reference, select_inputs  # noqa: E402


def _single_noise(layout, row, zp):
    p = layout.root / row["path"]
    img = fits.getdata(p).astype(np.float32)
    bad = (fits.getdata(str(p).replace("sciimg", "mskimg")) & 0xFFFF) > 0
    with fits.open(str(p).replace("sciimg.fits", "sciimgpsf.fits")) as h:
        stamp = PSFModel.from_fits(h).centre_stamp()
    sub = img - background.background_maps(img, mask=bad).sky
    return coadd.point_source_noise(sub, stamp, bad) * coadd.zero_point_scale(row["magzp"], zp)


def _significance_map(image, stamp, noise):
    p = stamp / stamp.sum()
    filt = signal.fftconvolve(np.nan_to_num(image), p[::-1, ::-1], mode="same") / np.sum(p ** 2)
    return filt / noise


def _injected(incoming, rows, layout, grid, shape):
    truth = Path(incoming) / "truth"
    expids = {int(r["expid"]) for r in rows}
    pos = []
    if (truth / "asteroid_ephemerides.parquet").exists():
        eph = pd.read_parquet(truth / "asteroid_ephemerides.parquet")
        eph = eph[eph.expid.isin(expids)]
        x, y = grid.world_to_pixel_values(eph.ra.to_numpy(), eph.dec.to_numpy())
        pos += [("asteroid", a, b) for a, b in zip(x, y)]
    crs = pd.read_parquet(truth / "cosmic_rays.parquet") if (truth / "cosmic_rays.parquet").exists() \
        else pd.DataFrame(columns=["expid", "ccd_id", "qid", "x0", "y0"])
    for r in rows:
        c = crs[(crs.expid == r["expid"]) & (crs.ccd_id == r["ccd_id"]) & (crs.qid == r["qid"])]
        if len(c):
            w = WCS(fits.getheader(layout.root / r["path"]))
            ra, dec = w.pixel_to_world_values(c.x0.to_numpy(), c.y0.to_numpy())
            x, y = grid.world_to_pixel_values(ra, dec)
            pos += [("cosmic_ray", a, b) for a, b in zip(x, y)]
    ny, nx = shape
    return [(k, a, b) for k, a, b in pos if 3 <= a < nx - 3 and 3 <= b < ny - 3]


def accuracy(args):
    config = load_config(environ={}, overrides={"archive": {"root": args.archive},
                                                "refcat": {"path": str(Path(args.incoming) / "refcat")}})
    engine = ops.init_db(ops.engine_from_config(config))
    layout = ArchiveLayout(config.archive.root)
    key = (args.field, args.filter, args.ccd, args.qid)
    params = ReferenceParams(min_frames=args.min_frames)
    out = build_reference(config, *key, params=params, engine=engine)
    rows = select_inputs(engine, *key, params)
    n = len(rows)
    img = fits.getdata(layout.ref_path(*key, "refimg.fits"))
    header = fits.getheader(layout.ref_path(*key, "refimg.fits"))
    grid = WCS(header)
    qa = json.loads(_ref_row(engine, key, out["version"])["qa"])
    singles = np.array([_single_noise(layout, r, params.zp) for r in rows])
    gain = float(np.median(singles) / qa["flux_noise_dn"])
    optimal = float(np.sqrt(np.sum((np.median(singles) / singles) ** 2)))
    pcat = read_table(layout.ref_path(*key, "refpsfcat.fits"))
    ny, nx = img.shape
    ra0, dec0 = grid.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    cols = ["source_id", "ra", "dec", "ref_epoch", "pmra", "pmdec", "r", "galaxy", "true_g", "true_r"]
    refcat = read_refcat(config.refcat_path, float(ra0), float(dec0), 0.35, columns=cols)
    jd = float(np.mean([r["obsjd"] for r in rows]))
    ra, dec = apply_proper_motion(refcat, Time(jd, format="jd").jyear)
    xr_, yr_ = grid.world_to_pixel_values(np.asarray(ra), np.asarray(dec))
    i_s, i_r, dist = astrometry.match_catalogs(np.asarray(pcat["x"]), np.asarray(pcat["y"]), xr_, yr_, 1.5)
    flux = np.asarray(pcat["flux"], float)[i_s]
    ferr = np.asarray(pcat["flux_err"], float)[i_s]
    star = (~refcat["galaxy"].to_numpy(bool))[i_r] & (flux > 0)
    snr = np.where(flux > 0, flux / ferr, 0)
    tr, tg = refcat["true_r"].to_numpy(float)[i_r], refcat["true_g"].to_numpy(float)[i_r]
    cal = star & (snr > 30) & (snr < 1000)
    zp = photcal.fit_zero_point(-2.5 * np.log10(flux[cal]), 1.0857 / snr[cal], tr[cal],
                                np.zeros(cal.sum()), (tg - tr)[cal])
    dra = ((np.asarray(pcat["ra"])[i_s] - np.asarray(ra)[i_r] + 180) % 360 - 180) * np.cos(np.radians(dec0))
    ddec = np.asarray(pcat["dec"])[i_s] - np.asarray(dec)[i_r]
    ast = star & (snr > 30)
    rms_mas = float(np.sqrt(np.mean(dra[ast] ** 2 + ddec[ast] ** 2) / 2) * 3.6e6)
    clean = ast & (np.asarray(pcat["flags"])[i_s] == 0)
    # isolated as in the issue-4 benchmark: no catalogue source within 8 px brighter than
    # 1% of the star (blends 1-3 px apart are a deblending question, not the co-add's WCS)
    from scipy.spatial import cKDTree
    allr = np.nan_to_num(refcat["r"].to_numpy(float), nan=99.0)
    near = cKDTree(np.c_[xr_, yr_]).query_ball_point(np.c_[xr_[i_r], yr_[i_r]], 8.0)
    isolated = np.array([all(j == k or allr[j] > allr[k] + 5.0 for j in js)
                         for js, k in zip(near, i_r)])
    iso = clean & isolated
    iso_mas = float(np.sqrt(np.mean(dra[iso] ** 2 + ddec[iso] ** 2) / 2) * 3.6e6)
    mad = lambda v: 1.4826 * np.median(np.abs(v - np.median(v)))  # noqa: E731
    split = (f"mean offset (RA cos dec, Dec) {np.mean(dra[ast]) * 3.6e6:+.1f}, "
             f"{np.mean(ddec[ast]) * 3.6e6:+.1f} mas; robust sigma {mad(dra[ast]) * 3.6e6:.1f}, "
             f"{mad(ddec[ast]) * 3.6e6:.1f} mas; RMS of the {clean.sum()} with flags == 0: "
             f"{np.sqrt(np.mean(dra[clean] ** 2 + ddec[clean] ** 2) / 2) * 3.6e6:.1f} mas")
    with fits.open(layout.ref_path(*key, "refpsf.fits")) as h:
        stamp = PSFModel.from_fits(h).centre_stamp()
    sig = _significance_map(img, stamp, qa["flux_noise_dn"])
    bright = np.nan_to_num(refcat["true_r"].to_numpy(float), nan=0.0) < 22.5
    resid = []
    for kind, x, y in _injected(args.incoming, rows, layout, grid, img.shape):
        if np.min(np.hypot(xr_[bright] - x, yr_[bright] - y), initial=99) < 6:
            continue
        xi, yi = int(round(x)), int(round(y))
        resid.append((kind, float(np.max(np.abs(sig[yi - 1:yi + 2, xi - 1:xi + 2])))))
        if resid[-1][1] > 5 and args.verbose:
            d = np.hypot(xr_ - x, yr_ - y)
            print(kind, round(x, 1), round(y, 1), round(resid[-1][1], 1), "nearest refcat", round(d.min(), 1),
                  refcat["true_r"].to_numpy()[np.argmin(d)])
    print(f"reference {key} v{out['version']} ({out['status']}), N = {n} inputs")
    print(f"depth gain (median single / co-add PSF-flux noise): {gain:.3f}; sqrt(N) = {np.sqrt(n):.3f} "
          f"(ratio {gain / np.sqrt(n):.3f}); optimal for these inputs {optimal:.3f} (ratio {gain / optimal:.3f})")
    print(f"co-add maglim {qa['maglim']:.3f}; input maglims {[round(r['maglim'], 2) for r in rows]}")
    magzp = float(header["MAGZP"])
    print(f"zero point vs noiseless truth: {zp.zp:.4f} (unc {zp.zp_unc:.4f}, {zp.n_used} stars, clrcoeff "
          f"{zp.clrcoeff:.3f}); co-add MAGZP {magzp:.4f}: error {magzp - zp.zp:+.4f} mag "
          f"(the common ZP {params.zp} of its pixels: {params.zp - zp.zp:+.4f})")
    print(f"astrometric RMS per axis of {ast.sum()} co-add stars (S/N > 30) vs truth: {rms_mas:.1f} mas")
    print(f"  {split}")
    print(f"  isolated (no source within 8 px above 1% of its flux), flags == 0: {iso.sum()} stars, "
          f"RMS per axis {iso_mas:.1f} mas")
    for kind in ("asteroid", "cosmic_ray"):
        v = [s for k, s in resid if k == kind]
        if v:
            print(f"{kind}: {len(v)} isolated positions, max |co-add significance| {max(v):.2f}, "
                  f"> 5 sigma: {sum(s > 5 for s in v)}")
    print(f"outlier pixels rejected: {qa['n_rejected_total']}; co-add seeing {qa['seeing_arcsec']:.2f}\"")
    if args.twin_archive:
        _twin_residuals(args, key, params, img, stamp, qa, rows, layout, grid)


def _twin_residuals(args, key, params, img, stamp, qa, rows, layout, grid):
    """Residual significance at every injected position against the twin survey's co-add.

    The twin is the same survey simulated without asteroids and cosmic rays (same seed,
    ``--n-mba 0 --n-nea 0 --no-cosmic-rays``: every other pixel and noise value identical) and
    processed the same way, so ``co-add - twin co-add`` is the outlier light the rejection let
    through, stars and galaxies cancelled: no exclusion zone around them is needed.
    """
    twin_cfg = load_config(environ={}, overrides={"archive": {"root": args.twin_archive},
                                                  "refcat": {"path": str(Path(args.incoming) / "refcat")}})
    twin_engine = ops.init_db(ops.engine_from_config(twin_cfg))
    build_reference(twin_cfg, *key, params=params, engine=twin_engine)
    twin = fits.getdata(ArchiveLayout(twin_cfg.archive.root).ref_path(*key, "refimg.fits"))
    sig = _significance_map(img - twin, stamp, qa["flux_noise_dn"])
    blank = sig[np.isfinite(sig)]
    print(f"twin co-add residual: robust sigma of the PSF-filtered (co-add - twin) map "
          f"{1.4826 * np.median(np.abs(blank - np.median(blank))):.3f} (co-add flux-noise units)")
    twin_sig = np.abs(_significance_map(twin, stamp, qa["flux_noise_dn"]))
    for kind in ("asteroid", "cosmic_ray"):
        v, on_source = [], []
        for k, x, y in _injected(args.incoming, rows, layout, grid, img.shape):
            if k == kind:
                xi, yi = int(round(x)), int(round(y))
                v.append(float(np.nanmax(np.abs(sig[yi - 1:yi + 2, xi - 1:xi + 2]))))
                on_source.append(bool(np.nanmax(twin_sig[max(yi - 2, 0):yi + 3, max(xi - 2, 0):xi + 3]) >= 5))
        if v:
            v, on_source = np.array(v), np.array(on_source)
            print(f"{kind}: {len(v)} positions (none excluded), max |residual significance| "
                  f"{v.max():.2f}, > 5 sigma: {int((v > 5).sum())}")
            for label, sel in (("on blank sky", ~on_source), ("on a star or galaxy (twin > 5 sigma "
                                                              "within 2 px)", on_source)):
                if sel.any():
                    print(f"  {label}: {int(sel.sum())} positions, > 5 sigma: {int((v[sel] > 5).sum())}, "
                          f"max {v[sel].max():.2f}")


def _ref_row(engine, key, version):
    from sqlalchemy import select

    from zsds.db import schema as s
    c = s.reference_images.c
    with engine.connect() as conn:
        return dict(conn.execute(select(s.reference_images).where(
            (c.field_id == key[0]) & (c.filter_code == key[1]) & (c.ccd_id == key[2])
            & (c.qid == key[3]) & (c.version == version))).first()._mapping)


def memory(args):
    from refimgfactory import make_epochal_archive

    nx, ny = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        config = load_config(environ={}, overrides={"archive": {"root": tmp},
                                                    "refcat": {"path": str(Path(tmp) / "none")}})
        engine = ops.init_db(ops.engine_from_config(config))
        make_epochal_archive(tmp, engine, args.n, shape=(ny, nx), n_stars=int(2.5e-3 * nx * ny),
                             outliers=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        out = build_reference(config, 655, "zr", 13, 3, min_frames=args.n, engine=engine)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.n} inputs of {nx}x{ny}: build {time.perf_counter() - t0:.1f} s, peak RSS "
          f"{peak:.0f} MiB (after making the inputs: {base:.0f} MiB), status {out['status']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--archive", required=True)
    a.add_argument("--incoming", required=True)
    a.add_argument("--field", type=int, default=655)
    a.add_argument("--filter", default="zr")
    a.add_argument("--ccd", type=int, default=13)
    a.add_argument("--qid", type=int, default=3)
    a.add_argument("--min-frames", type=int, default=5)
    a.add_argument("--verbose", action="store_true")
    a.add_argument("--twin-archive", help="archive of the twin survey without asteroids and cosmic "
                   "rays (see _twin_residuals)")
    m = sub.add_parser("memory")
    m.add_argument("--n", type=int, default=20)
    m.add_argument("--size", default="1024x1030", help="columns x rows")
    m.add_argument("--tmp", default=None)
    args = ap.parse_args()
    accuracy(args) if args.cmd == "accuracy" else memory(args)


if __name__ == "__main__":
    main()
