"""Throughput of the real-time path on full-size readout quadrants (issues 8 and 13).

Prepares (once, in WORKDIR) a simulated field on CCD 13 with quadrants of ``--size`` pixels:
night 1 (``--ref-exposures`` exposures) is processed and co-added into references; night 2
(``--exposures`` exposures) is the measured night. Each quadrant of night 2 then goes through
the whole real-time path -- :func:`zsds.pipeline.night.process_quadrant`: raw read, quadrant
preparation, instrumental calibration with both catalogues and products, alignment of the
reference, ZOGY, candidates with features and real-bogus, cutouts, alert packets -- three ways:

1. serially in one single-threaded worker process pinned to one core, after one warm-up
   quadrant (imports, FFTW plans, JIT: paid once per worker): seconds per quadrant per core
   (wall and CPU) and the worker's peak RSS;
2. the same under cProfile timing CPU (not wall) time, for the time per stage (profiling
   inflates Python-heavy code; the table gives each stage's share, scaled to the unprofiled
   median CPU time);
3. on a LocalCluster with 1 and then 2 worker processes (``--scaling``): quadrants per second
   in steady state (one untimed quadrant per worker first; the jobs mapped twice).

On a shared machine the wall-clock time of the pinned worker includes waiting for the core;
its CPU time (``process_time``) is then the better "seconds on one core", and both are given.
It prints a JSON summary: median and spread of s/quadrant/core, peak memory, per-stage table,
cores needed to keep up with 85 quadrants a minute (ZTF 2017: 390 s per quadrant, 553 cores),
and the 2-worker / 1-worker throughput ratio.

    python benchmarks/throughput.py [WORKDIR] [--size 3072] [--quads 1,2] [--exposures 3]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing as mp
import os
import pstats
import resource
import shutil
import time
from pathlib import Path

import numpy as np

N1, N2 = "20261121", "20261122"
ZTF_2017_S = 390.0
QUADRANTS_PER_MINUTE = 85.0

# Stage -> functions whose cumulative profiled time belongs to it (module, function name).
STAGE_FUNCTIONS = {
    "read raw + calibration frames + refcat": [("zsds/io/raw.py", "read_raw"),
                                               ("zsds/stages/calibrate.py", "load_calibrations"),
                                               ("zsds/stages/calibrate.py", "_refcat_for")],
    "detrend (bias, flat, masks, cosmic rays)": [("zsds/stages/calibrate.py", "_detrend")],
    "background": [("zsds/core/background.py", "background_maps")],
    "source extraction (sexcat)": [("zsds/core/extract.py", "extract_sources")],
    "PSF model + PSF photometry (psfcat)": [("zsds/stages/calibrate.py", "_psf_stage")],
    "astrometry": [("zsds/stages/calibrate.py", "_solve_astrometry")],
    "photometric calibration": [("zsds/stages/calibrate.py", "_photometric_calibration")],
    "QA + catalogue finishing": [("zsds/stages/calibrate.py", "_qa_metrics"),
                                 ("zsds/stages/calibrate.py", "_finish_catalogues")],
    "calibration products + DB": [("zsds/stages/calibrate.py", "_write_products"),
                                  ("zsds/stages/calibrate.py", "_register")],
    "load science + reference": [("zsds/stages/subtract.py", "_load_image")],
    "align reference to science": [("zsds/stages/subtract.py", "_align")],
    "ZOGY": [("zsds/stages/subtract.py", "_run_zogy")],
    "candidates, features, real-bogus": [("zsds/stages/subtract.py", "_extract")],
    "cutouts": [("zsds/stages/subtract.py", "_cutouts")],
    "subtraction products": [("zsds/stages/subtract.py", "_write_products")],
    "candidates to DB + objectIds": [("zsds/stages/subtract.py", "_register")],
    "alert packets": [("zsds/stages/alerts.py", "build_alerts")],
}


def _config(work: Path, workers: int = 1):
    from zsds.config import load_config
    return load_config(environ={"ZSDS__ARCHIVE__ROOT": str(work / "archive"),
                                "ZSDS__REFCAT__PATH": str(work / "sim" / "refcat"),
                                "ZSDS__DASK__N_WORKERS": str(workers),
                                "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"})


def prepare(work: Path, size: int, quads: list[int], n_ref: int, n_sci: int) -> None:
    """Simulate, process night 1, build the references, ingest night 2 (once)."""
    from zsds.pipeline.night import _prepare_night, run_night
    from zsds.sim.survey import SimulationSpec, simulate
    from zsds.stages.refimg import build_references

    done = work / "prepared.json"
    if done.exists():
        return
    shutil.rmtree(work, ignore_errors=True)
    sim = work / "sim"
    simulate(SimulationSpec(outdir=sim, start_night=N1, nights=2, fields=[655], ccds=[13],
                            quads=quads, quad_shape=(size + 8, size), filters=["zr"],
                            exposures_per_night=max(n_ref, n_sci), n_bias=5, n_flat=5,
                            n_transients=40, seed=5, source_truth=False))
    config = _config(work, workers=1)
    run_night(N1, config, incoming=sim / "raw", progress=False, quads=quads)
    refs = build_references(config, min_frames=min(5, n_ref))
    _prepare_night(N2, config, sim / "raw")
    done.write_text(json.dumps({"references": len(refs)}))


def night2_jobs(work: Path, quads: list[int], n_sci: int):
    from zsds.db.ops import object_quadrants
    from zsds.pipeline.night import _engine, _jobs

    jobs = [j for j in _jobs(object_quadrants(_engine(_config(work)), N2)) if j.qid in quads]
    jobs.sort(key=lambda j: (j.obsjd, j.qid))
    return jobs[: n_sci * len(quads)]


def _worker(work: str, jobs, profile_dir: str, n_profile: int, queue) -> None:
    """Child process = one single-threaded worker on one core: a warm-up quadrant (imports,
    FFTW plans, JIT compilation: paid once per worker), then every job timed, then the first
    ``n_profile`` jobs again under cProfile. Reports per-job times and the peak RSS."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from zsds.pipeline.night import process_quadrant
    config = _config(Path(work))
    process_quadrant(config, jobs[0])
    for job in jobs:
        t0, c0 = time.perf_counter(), time.process_time()
        out = process_quadrant(config, job)
        queue.put({"key": job.key, "status": out.status, "message": out.message[:300],
                   "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                   "alerts": len(out.qa.get("alerts", []))})
    for i, job in enumerate(jobs[:n_profile]):
        prof = cProfile.Profile(time.process_time)  # CPU time: immune to other load
        prof.enable()
        process_quadrant(config, job)
        prof.disable()
        prof.dump_stats(str(Path(profile_dir) / f"profile-{i}.pstats"))
    queue.put({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_worker(work: Path, jobs, n_profile: int) -> tuple[list[dict], float, list[Path]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_worker, args=(str(work), jobs, str(work), n_profile, queue))
    p.start()
    runs = []
    while True:
        r = queue.get()
        if "peak_rss_mib" in r:
            break
        runs.append(r)
        print(f"{r['key']}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {r['status']}, "
              f"{r['alerts']} alerts", flush=True)
    p.join()
    return runs, r["peak_rss_mib"], [work / f"profile-{i}.pstats" for i in range(n_profile)]


def stage_table(profile_paths: list[Path]) -> dict[str, float]:
    """Median profiled seconds per stage over the profiled quadrants."""
    per_run = []
    for path in profile_paths:
        stats = pstats.Stats(str(path)).stats
        row = {}
        for stage, funcs in STAGE_FUNCTIONS.items():
            row[stage] = sum(ct for (fname, _, name), (_, _, _, ct, _) in stats.items()
                             if any(fname.endswith(m) and name == f for m, f in funcs))
        total = max(ct for (_, _, name), (_, _, _, ct, _) in stats.items()
                    if name == "process_quadrant")
        row["other (DB bookkeeping, imports, ...)"] = total - sum(row.values())
        row["total (profiled)"] = total
        per_run.append(row)
    return {k: float(np.median([r[k] for r in per_run])) for k in per_run[0]}


def scaling(work: Path, jobs, rounds: int = 2) -> dict:
    """Quadrants per second through process_quadrant on 1 and on 2 LocalCluster workers.

    Steady state, as through a night: every worker first processes one quadrant untimed
    (imports, FFTW plans, numba caches: paid once per worker), then the jobs are mapped
    ``rounds`` times (more quadrants per worker, less imbalance at the end).
    """
    from zsds.pipeline.cluster import open_client
    from zsds.pipeline.night import process_quadrant

    out = {}
    timed = list(jobs) * rounds
    for n in (1, 2):
        config = _config(work, workers=n)
        with open_client(config) as client:
            client.wait_for_workers(n)
            warm = [client.submit(process_quadrant, config, jobs[0], key=f"warm{n}-{i}", pure=False,
                                  workers=[w], allow_other_workers=False)
                    for i, w in enumerate(client.scheduler_info()["workers"])]
            client.gather(warm)
            t0 = time.perf_counter()
            futures = client.map(process_quadrant, [config] * len(timed), timed,
                                 key=[f"scaling{n}-{i}-{j.key}" for i, j in enumerate(timed)], pure=False)
            client.gather(futures)
            out[n] = len(timed) / (time.perf_counter() - t0)
    return {"quadrants_per_s_1_worker": out[1], "quadrants_per_s_2_workers": out[2],
            "ratio_2_over_1": out[2] / out[1], "quadrants_timed": len(timed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("workdir", nargs="?", default="/tmp/zsds-throughput", type=Path)
    ap.add_argument("--size", type=int, default=3072, help="quadrant width, px (height + 8)")
    ap.add_argument("--quads", default="1,2", help="quadrants of CCD 13 to simulate")
    ap.add_argument("--ref-exposures", type=int, default=5)
    ap.add_argument("--exposures", type=int, default=3, help="measured exposures (night 2)")
    ap.add_argument("--profile", type=int, default=2, help="quadrants to profile")
    ap.add_argument("--scaling", action="store_true", help="also measure 1 vs 2 workers")
    args = ap.parse_args()
    quads = [int(q) for q in args.quads.split(",")]
    work = args.workdir
    t = time.perf_counter()
    prepare(work, args.size, quads, args.ref_exposures, args.exposures)
    print(f"prepared in {time.perf_counter() - t:.0f} s", flush=True)
    jobs = night2_jobs(work, quads, args.exposures)
    runs, peak_rss, profiles = run_worker(work, jobs, min(args.profile, len(jobs)))
    wall = np.array([r["wall_s"] for r in runs])
    cpu = np.array([r["cpu_s"] for r in runs])
    table = stage_table(profiles) if profiles else {}
    scale = float(np.median(cpu)) / table["total (profiled)"] if table else 1.0
    summary = {
        "quadrant_shape": [args.size + 8, args.size], "quadrants_measured": len(runs),
        "statuses": sorted({r["status"] for r in runs}),
        "seconds_per_quadrant_per_core": {"median_wall": float(np.median(wall)),
                                          "min_wall": float(wall.min()),
                                          "max_wall": float(wall.max()),
                                          "median_cpu": float(np.median(cpu))},
        "peak_rss_mib_worker": float(peak_rss),
        "cores_to_keep_up_with_85_quadrants_per_minute": {
            "from_median_cpu": float(np.median(cpu)) * QUADRANTS_PER_MINUTE / 60.0,
            "from_median_wall": float(np.median(wall)) * QUADRANTS_PER_MINUTE / 60.0},
        "ztf_2017": {"seconds_per_quadrant": ZTF_2017_S,
                     "cores": ZTF_2017_S * QUADRANTS_PER_MINUTE / 60.0},
        "stage_cpu_seconds_scaled_to_median": {k: round(v * scale, 2) for k, v in table.items()},
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    if args.scaling:
        summary["scaling"] = scaling(work, jobs)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
