"""Issue 4 acceptance on a full-size simulated quadrant: extraction, PSF model, PSF photometry.

Simulates field 655, CCD 13, quadrant 3 (3072 x 3080) unless OUTDIR already holds it,
detrends it with the truth (flat = PIXRESP * ILLUM / median, in which truth ``flux_dn``
applies), masks saturated pixels and cosmic rays as the pipeline does
(:func:`zsds.core.detrend.cosmic_ray_mask`; without it a cosmic ray on a star, which the
pipeline never fits, made the normalised residuals' std ~4), and reports:

* time of each step (background, extraction, PSF model, PSF photometry), one core;
* PSF-fit flux bias: median of measured / true flux of isolated (no other source within
  12 px brighter than 1%), unsaturated stars with S/N > 20; "total" flux = within 30 px;
* honesty of the errors: std (and robust std) of (measured - true) / error, all S/N;
* PSF model FWHM at the quadrant centre against the truth of the nearest star;
* fraction of bright (S/N > 50) isolated stars with class_star > 0.5.

Usage: python benchmarks/psf_photometry.py [OUTDIR] [--size COLSxROWS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_extract import isolated_truth, load_truth_quadrant  # noqa: E402

from zsds.core.background import background_maps  # noqa: E402
from zsds.core.detrend import cosmic_ray_mask  # noqa: E402
from zsds.core.extract import FLAGS, extract_sources  # noqa: E402
from zsds.core.psf import fit_psf_model  # noqa: E402
from zsds.core.psfphot import psf_photometry  # noqa: E402


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", nargs="?", default="/tmp/zsds-psfphot")
    ap.add_argument("--size", default="3072x3080")
    args = ap.parse_args()
    out = Path(args.outdir)
    if not (out / "truth" / "exposures.parquet").exists():
        subprocess.run([sys.executable, "-m", "zsds.cli", "simulate", str(out), "--fields", "655",
                        "--ccds", "13", "--quads", "3", "--quad-size", args.size,
                        "--exposures-per-night", "1", "--filters", "zr", "--n-bias", "0",
                        "--n-flat", "0", "--seed", "1"], check=True)
    img, var, sat, gain, truth = load_truth_quadrant(out)
    bad = sat | cosmic_ray_mask(img, var, sat, saturated=sat)
    fwhm = float(truth.loc[truth.kind == "star", "fwhm_px"].median())
    bg, t_bg = _timed(background_maps, img, bad)
    cat, t_ex = _timed(extract_sources, img, bg.sky, bg.rms, None, gain=gain, psf_fwhm=fwhm, saturated=sat)
    sub = img - bg.sky
    psf, t_psf = _timed(fit_psf_model, sub, bg.rms, cat, bad, gain=gain)
    phot, t_ph = _timed(psf_photometry, sub, var, psf, cat["x"], cat["y"], mask=bad, sky_variance=bg.rms**2)

    tr = truth[truth.kind != "asteroid"].reset_index(drop=True)
    d, j = cKDTree(np.c_[tr.x, tr.y]).query(np.c_[phot["x"], phot["y"]])
    ny, nx = img.shape
    inside = (phot["x"] > 16) & (phot["x"] < nx - 17) & (phot["y"] > 16) & (phot["y"] < ny - 17)
    star = (d < 1) & (tr.kind.to_numpy()[j] == "star") & isolated_truth(tr)[j] & inside
    star &= ((cat["flags"] & (FLAGS["SATURATED"] | FLAGS["NEAR_BAD"])) == 0) & (cat["peak"] < 25000)
    ftrue = tr.flux_dn.to_numpy()[j]
    s20 = star & (phot["snr"] > 20)
    z = (phot["flux"][star] - ftrue[star]) / phot["flux_err"][star]
    stars = truth[truth.kind == "star"]
    k = np.argmin(np.hypot(stars.x - nx / 2, stars.y - ny / 2))
    snr_ap = cat["flux_aper"][:, 5] / cat["flux_aper_err"][:, 5]
    bright = (d < 1) & (tr.kind.to_numpy()[j] == "star") & isolated_truth(tr)[j] & (snr_ap > 50) & (
        (cat["flags"] & FLAGS["SATURATED"]) == 0)
    bins = {f"{lo}-{hi}": float(np.median(phot["flux"][star & (phot["snr"] > lo) & (phot["snr"] < hi)]
                                          / ftrue[star & (phot["snr"] > lo) & (phot["snr"] < hi)]))
            for lo, hi in ((5, 20), (20, 100), (100, 1000), (1000, 1e9))
            if (star & (phot["snr"] > lo) & (phot["snr"] < hi)).sum()}
    report = {
        "shape": list(img.shape), "n_detections": len(cat), "n_psf_stars": psf.meta["n_stars"],
        "psf_degree": psf.degree, "apcorr": psf.apcorr,
        "time_s": {"background": round(t_bg, 2), "extraction": round(t_ex, 2),
                   "psf_model": round(t_psf, 2), "psf_photometry": round(t_ph, 2)},
        "flux_bias_snr_gt_20": float(np.median(phot["flux"][s20] / ftrue[s20])), "n_bias_stars": int(s20.sum()),
        "flux_ratio_by_snr": bins,
        "norm_resid_std": float(np.std(z)), "norm_resid_robust_std": float(1.4826 * np.median(np.abs(z - np.median(z)))),
        "n_resid_stars": int(star.sum()),
        "fwhm_centre_model": psf.meta["fwhm_centre"], "fwhm_centre_true": float(stars.fwhm_px.to_numpy()[k]),
        "class_star_fraction_bright_isolated": float(np.mean(cat["class_star"][bright] > 0.5)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
