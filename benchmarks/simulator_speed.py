"""Time of the camera simulator per full-size readout quadrant (issue 2 target: <= 5 s, one core).

Simulates one CCD (four rendered 3072 x 3080 quadrants) for several object exposures of field
655 and reports, per quadrant: the median and spread of the time to render and write it
(sources, sky, detector effects, readout, RICE compression), and the one-off setup per
quadrant (static detector truth). Run with one thread: OMP_NUM_THREADS=1.

Usage: OMP_NUM_THREADS=1 python benchmarks/simulator_speed.py [--exposures 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from zsds.sim.survey import SimulationSpec, simulate  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exposures", type=int, default=4)
    ap.add_argument("--size", default="3072x3080")
    args = ap.parse_args()
    cols, rows = (int(v) for v in args.size.split("x"))
    stamps = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()

        def progress(done, total, name):
            stamps.append(time.perf_counter())

        simulate(SimulationSpec(outdir=tmp, fields=[655], ccds=[13], quads=[1, 2, 3, 4],
                                quad_shape=(rows, cols), filters=["zr"],
                                exposures_per_night=args.exposures, n_bias=0, n_flat=0,
                                source_truth=False), progress=progress)
        total = time.perf_counter() - t0
    per_file = np.diff([t0] + stamps)
    setup = per_file[0] - np.median(per_file[1:]) if len(per_file) > 1 else float("nan")
    per_quad = per_file[1:] / 4.0
    report = {
        "quadrant_size": args.size,
        "exposures": args.exposures,
        "seconds_per_quadrant_median": float(np.median(per_quad)),
        "seconds_per_quadrant_min": float(per_quad.min()),
        "seconds_per_quadrant_max": float(per_quad.max()),
        "one_off_setup_seconds_per_quadrant": float(setup / 4.0),
        "total_seconds": total,
        "target_seconds_per_quadrant": 5.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
