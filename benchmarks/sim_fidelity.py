"""Simulator fidelity and realism on a full-size quadrant (issue 2 acceptance figures).

Simulates ZTF field 655, CCD 13, quadrant 3, r band, at 2.6 px FWHM seeing (as the real
reference image of 2020-09-24), then measures, on the same quadrant:

* background noise against sqrt(sky*gain + rn^2)/gain (truth-detrended image);
* PSF FWHM of isolated stars against the truth;
* detected sources brighter than the 10-sigma limit against the catalogue truth;
* realism: sky, robust RMS, sources above 5 sigma and counts brighter than 15..19 mag
  (8 px apertures) after overscan subtraction, against the real ZTF quadrant.

Usage: python benchmarks/sim_fidelity.py [OUTDIR] [--size COLSxROWS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from zsds.sim import checks

REAL = {"sky": 157.0, "rms": 5.9, "n5sigma": 7500, "counts": [685, 1332, 2510, 4183, 6320]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", nargs="?", default="/tmp/zsds-fidelity")
    ap.add_argument("--size", default="3072x3080")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.outdir)
    if not (out / "truth" / "exposures.parquet").exists():
        subprocess.run([sys.executable, "-m", "zsds.cli", "simulate", str(out), "--fields", "655",
                        "--ccds", "13", "--quads", "3", "--quad-size", args.size, "--filters", "zr",
                        "--exposures-per-night", "1", "--n-bias", "0", "--n-flat", "0",
                        "--seeing", "2.63", "--seed", str(args.seed)], check=True)
    row, quad, img, truth = checks.load_truth_quadrant(out, 13, 3)
    noise = checks.background_noise(img, quad.header["GAIN"], quad.header["READNOI"])
    fw = checks.isolated_star_fwhm(img, truth, noise.rms)
    fwhm_ratio = float(np.median(fw.fwhm_fit / fw.fwhm_true))
    nea = checks.noise_equivalent_area(float(np.median(fw.fwhm_true)), float(row.true_beta))
    n_det, n_true, limit = checks.detections_above_limit(img, truth, noise.rms,
                                                         float(np.median(fw.fwhm_true)), nea_px=nea)
    # realism: overscan-subtracted raw quadrant, measured like the real one
    os_level = np.median(quad.overscan[:, 2:-2].astype(np.float32), axis=1)
    raw_sub = quad.data.astype(np.float32) - os_level[:, None]
    n5, counts, sky, rms = checks.source_counts_by_mag(raw_sub, float(row.true_zp_quadrant))
    area_scale = (quad.data.size / (3072 * 3080))
    real_counts = [c * area_scale for c in REAL["counts"]]
    report = {
        "quadrant_shape": list(quad.data.shape),
        "noise_rms_dn": noise.rms, "noise_expected_dn": noise.expected_rms,
        "noise_ratio": noise.ratio,
        "fwhm_stars": len(fw), "fwhm_median_ratio_fit_over_truth": fwhm_ratio,
        "detected_above_10sigma": n_det, "catalogue_above_10sigma": n_true,
        "detected_over_catalogue": n_det / max(n_true, 1), "limit_flux_dn": limit,
        "realism": {
            "sky_dn": sky, "real_sky_dn": REAL["sky"],
            "robust_rms_dn": rms, "real_rms_dn": REAL["rms"],
            "noise_to_sky": rms / np.sqrt(sky), "real_noise_to_sky": REAL["rms"] / np.sqrt(REAL["sky"]),
            "noise_to_sky_ratio": (rms / np.sqrt(sky)) / (REAL["rms"] / np.sqrt(REAL["sky"])),
            "sources_5sigma": n5, "real_sources_5sigma": REAL["n5sigma"] * area_scale,
            "counts_lt_15_19": counts, "real_counts_lt_15_19": real_counts,
            "count_ratios": [c / r for c, r in zip(counts, real_counts)],
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
