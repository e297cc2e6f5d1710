"""Cosmic-ray flagging against the simulator's truth: zsds's PSF-sharpness test and L.A.Cosmic.

Uses the calibrated science images of an archive prepared by ``benchmarks/throughput.py
WORKDIR`` (full-size quadrants with ``WORKDIR/sim/truth/cosmic_rays.parquet``). For each
image it re-flags cosmic rays on ``sciimg.fits`` with the mask's bad pixels (dead, hot, NaN,
bad columns) and saturation, and counts, per method:

* hits found: simulated tracks with a flagged component within 3 px of the track;
* false components: flagged 8-connected components farther than 3 px from every track, and
  how many of them sit on a catalogued star (``psfcat`` position within 2 px);
* CPU seconds per quadrant.

The variance is the Poisson + read-noise model of the image itself (flat response 1).

    python benchmarks/cosmic_rays.py [WORKDIR] [--images 6] [--no-lacosmic]

L.A.Cosmic comes from astroscrappy: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import glob
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from zsds.core.detrend import cosmic_ray_mask
from zsds.flags import MASK


def lacosmic(image, variance, bad, saturated, gain, read_noise):
    """What zsds ran before: astroscrappy, one iteration, sigclip 5, objlim 5."""
    import astroscrappy
    return astroscrappy.detect_cosmics(image, inmask=bad | saturated, gain=gain,
                                       readnoise=read_noise, sigclip=5.0, objlim=5.0,
                                       satlevel=5e4, niter=1, sepmed=True,
                                       cleantype="meanmask", fsmode="median")[0]


def zsds_method(image, variance, bad, saturated, gain, read_noise):
    return cosmic_ray_mask(image, variance, bad, saturated=saturated)


def _distance_to_tracks(px, py, tracks: pd.DataFrame) -> np.ndarray:
    x0, y0, length = tracks.x0.values, tracks.y0.values, tracks.length.values
    angle = tracks.angle.values
    angle = np.deg2rad(angle) if np.abs(angle).max(initial=0) > 2 * np.pi else angle
    dx, dy = length * np.cos(angle), length * np.sin(angle)
    u = np.clip(((px[:, None] - x0) * dx + (py[:, None] - y0) * dy)
                / np.maximum(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(x0 + u * dx - px[:, None], y0 + u * dy - py[:, None])


def score(flagged, tracks, stars_xy) -> dict:
    lab, n = ndimage.label(flagged, structure=np.ones((3, 3)))
    com = np.array(ndimage.center_of_mass(flagged, lab, np.arange(1, n + 1))).reshape(-1, 2)
    d = _distance_to_tracks(com[:, 1], com[:, 0], tracks) if len(tracks) else np.zeros((n, 0))
    near = d < 3
    false = ~near.any(axis=1)
    on_star = int((cKDTree(stars_xy).query(com[false][:, ::-1])[0] < 2).sum()) if false.any() else 0
    return {"hits": len(tracks), "found": int(near.any(axis=0).sum()), "false": int(false.sum()),
            "false_on_stars": on_star}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("workdir", nargs="?", default="/tmp/zsds-throughput", type=Path)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--no-lacosmic", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    truth = pd.read_parquet(args.workdir / "sim" / "truth" / "cosmic_rays.parquet")
    files = sorted(glob.glob(str(args.workdir / "archive" / "sci" / "*/*/*/*_sciimg.fits")))
    if not files:
        raise SystemExit(f"no sciimg.fits under {args.workdir}/archive: run benchmarks/throughput.py first")
    methods = {"zsds": zsds_method} if args.no_lacosmic else {"zsds": zsds_method, "L.A.Cosmic": lacosmic}
    totals = {m: {"hits": 0, "found": 0, "false": 0, "false_on_stars": 0, "cpu": []} for m in methods}
    for f in files[: args.images]:
        h = fits.getheader(f)
        ccd, qid = int(h["CCD_ID"]), int(h["QID"])
        tracks = truth[(truth.expid == h["EXPID"]) & (truth.ccd_id == ccd) & (truth.qid == qid)]
        image = fits.getdata(f).astype(np.float32)
        mask = fits.getdata(f.replace("_sciimg.fits", "_mskimg.fits"))
        bad = (mask & (MASK["NAN"] | MASK["HOT"] | MASK["DEAD"] | MASK["BADCOL"])) > 0
        saturated = (mask & MASK["SATURATED"]) > 0
        gain, rn = float(h["GAIN"]), float(h["READNOI"])
        variance = (np.maximum(image, 0) / gain + (rn / gain) ** 2).astype(np.float32)
        cat = Table.read(f.replace("_sciimg.fits", "_psfcat.fits"), hdu=1)
        stars = np.c_[np.asarray(cat["x"]) - 1, np.asarray(cat["y"]) - 1]  # FITS 1-based on disk
        line = [Path(f).name[:38]]
        for name, method in methods.items():
            c0 = time.process_time()
            flagged = method(image, variance, bad, saturated, gain, rn)
            totals[name]["cpu"].append(time.process_time() - c0)
            s = score(flagged, tracks, stars)
            for k, v in s.items():
                totals[name][k] += v
            line.append(f"{name}: {s['found']}/{s['hits']} hits, {s['false']} false "
                        f"({s['false_on_stars']} on stars), {totals[name]['cpu'][-1]:.2f} s")
        print("  ".join(line))
    for name, t in totals.items():
        print(f"{name}: found {t['found']} of {t['hits']} hits ({100 * t['found'] / max(t['hits'], 1):.1f}%); "
              f"{t['false']} false components in {len(t['cpu'])} quadrants "
              f"({t['false'] / max(len(t['cpu']), 1):.1f} per quadrant, {t['false_on_stars']} on stars); "
              f"median {np.median(t['cpu']):.2f} CPU s per quadrant")


if __name__ == "__main__":
    main()
