"""Issue 6/13 benchmark: alignment and ZOGY on a full-size synthetic quadrant pair, one core.

* alignment: the reference (image, variance, int mask) resampled onto the science grid through
  two TAN-SIP WCSs (0.37 / -0.21 px shift, 0.01 deg rotation, different ~2 px distortions);
* ZOGY: ``zogy_subtract`` with variance maps and astrometric noise (the full 12-FFT path) on a
  registered pair (reference FWHM 2.0 px, science 2.6 px, ~15k common stars, 50 transients at
  S/N 5-50 in the difference, half positive, half negative);
* times: the first call (FFTW planning, numba compilation) apart, then the median of 3 (wall
  clock, and process CPU time, which is less sensitive to other processes on a shared machine);
* FFT count, peak traced memory of one call (tracemalloc) and the process's max RSS;
* S_corr mean / std over source-free pixels, transients found (S_corr >= 5 with the right
  sign within 2 px), false detections (S_corr peaks >= 5 in magnitude, >= 5 px from any transient).

Usage: python benchmarks/zogy_speed.py [--shape NY NX] [--stars N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from alignfactory import sip_wcs  # noqa: E402
from zogyfactory import make_pair, source_free  # noqa: E402

from zsds.core.align import resample_to_grid  # noqa: E402
from zsds.core.fft import get_plans, padded_shape  # noqa: E402
from zsds.core.zogy import zogy_subtract  # noqa: E402


def _times(fn, n=3):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    runs, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, first, float(np.median(runs)), runs + [round(float(np.median(cpu)), 3)]


def _peak_mb(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _detections(res, pair):
    peaks = (np.abs(res.S_corr) >= 5) & ~res.mask
    peaks &= np.abs(res.S_corr) == ndimage.maximum_filter(np.abs(res.S_corr), size=5)
    py, px = np.nonzero(peaks)
    signed = np.sign(pair.tr_flux_new)
    found = 0
    near_any = np.zeros(len(py), bool)
    for x, y, s in zip(pair.tr_x, pair.tr_y, signed):
        win = res.S_corr[y - 2:y + 3, x - 2:x + 3] * s
        found += bool(win.max() >= 5)
        near_any |= (px - x) ** 2 + (py - y) ** 2 < 25
    return found, int((~near_any).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(3080, 3072), metavar=("NY", "NX"))
    ap.add_argument("--stars", type=int, default=15000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    shape = tuple(args.shape)

    t0 = time.perf_counter()
    pair = make_pair(shape, n_stars=args.stars, fwhm_ref=2.0, fwhm_new=2.6, n_transients=50,
                     snr=(5.0, 50.0), seed=13, half=8)
    t_sim = time.perf_counter() - t0

    ws = sip_wcs(shape)
    wr = sip_wcs(shape, rot_deg=0.01, shift=(0.37, -0.21), sip_scale=0.9)
    mask = np.zeros(shape, np.int32)
    mask[::97, ::89] = 2
    align = lambda: resample_to_grid(pair.ref, wr, ws, shape, variance=pair.var_ref,  # noqa: E731
                                     mask=mask)
    rs, a_first, a_med, a_runs = _times(align)

    t0 = time.perf_counter()
    plans = get_plans(padded_shape(shape), threads=args.threads)
    t_plan = time.perf_counter() - t0
    zogy = lambda: zogy_subtract(pair.new, pair.ref, pair.psf_new, pair.psf_ref,  # noqa: E731
                                 sigma_new=pair.sigma_new, sigma_ref=pair.sigma_ref,
                                 flux_zp_ref=pair.flux_zp_ref, var_new=pair.var_new,
                                 var_ref=pair.var_ref, astrometric_sigma=(0.02, 0.02), fft=plans)
    res, z_first, z_med, z_runs = _times(zogy)
    z_peak = _peak_mb(zogy)
    a_peak = _peak_mb(align)

    free = source_free(pair, 12) & ~res.mask
    found, false = _detections(res, pair)
    report = {
        "shape": shape, "padded_shape": plans.shape, "stars": args.stars,
        "fft_threads": args.threads, "simulation_s": round(t_sim, 2),
        "align": {"first_s": round(a_first, 3), "median_s": round(a_med, 3),
                  "runs_s": [round(t, 3) for t in a_runs[:-1]], "cpu_median_s": a_runs[-1], "peak_traced_mb": round(a_peak),
                  "max_map_error_px": rs.max_map_error,
                  "footprint_fraction": float(rs.footprint.mean())},
        "zogy": {"planning_s": round(t_plan, 2), "first_call_s": round(z_first, 3),
                 "median_s": round(z_med, 3), "runs_s": [round(t, 3) for t in z_runs[:-1]], "cpu_median_s": z_runs[-1],
                 "n_fft": res.n_fft, "peak_traced_mb": round(z_peak),
                 "S_corr_free_mean": float(res.S_corr[free].mean()),
                 "S_corr_free_std": float(res.S_corr[free].std()),
                 "D_free_std": float(res.D[free].std()),
                 "transients_found": f"{found}/{len(pair.tr_x)}",
                 "false_detections": false},
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
