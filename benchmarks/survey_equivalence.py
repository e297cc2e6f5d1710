"""A simulated two-night survey through ``run-night`` on a LocalCluster and on SLURM (issue 8).

Simulates two nights of one field on CCDs 13 and 14 (4 small quadrants each, ``--exposures``
a night), then, once with ``dask.cluster = local`` and once with ``dask.cluster = slurm``
(dask-jobqueue's SLURMCluster on the local SLURM, ``cluster/start-local-slurm.sh``), runs:
night 1 (ingest, calibration images, instrumental calibration), the reference images, and
night 2 (calibration, ZOGY subtraction, candidates, alerts). It then compares the sha256 of
every catalogue (``psfcat``, ``sexcat``, ``diffimcands``) and every alert-archive file of the
two archives, and the candidates and objects tables, and prints the verdict and timings.

    python benchmarks/survey_equivalence.py [WORKDIR] [--exposures 40] [--size 384]

``--run local`` / ``--run slurm`` process one archive only (two processes can run side by
side); ``--run none`` only compares two finished archives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from zsds.config import load_config
from zsds.pipeline.night import run_night
from zsds.sim.survey import SimulationSpec, simulate
from zsds.stages.refimg import build_references

N1, N2 = "20261121", "20261122"
CATALOGUES = ("psfcat.fits", "sexcat.fits", "diffimcands.fits")


def checksums(archive: Path) -> dict[str, str]:
    """sha256 of the catalogues and alert-archive files, by path relative to the archive."""
    files = [p for p in (archive / "sci").rglob("*") if p.name.endswith(CATALOGUES)]
    files += list((archive / "alerts").rglob("*.avro"))
    return {p.relative_to(archive).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


def table(config, sql: str) -> pd.DataFrame:
    engine = sa.create_engine(config.database.url or
                              f"sqlite:///{Path(config.archive.root) / 'zsds.sqlite'}")
    with engine.connect() as conn:
        return pd.read_sql(sql, conn)


def _config(root: Path, sim: Path, cluster: str, workers: int):
    return load_config(environ={"ZSDS__ARCHIVE__ROOT": str(root),
                                "ZSDS__REFCAT__PATH": str(sim / "refcat"),
                                "ZSDS__DASK__CLUSTER": cluster,
                                "ZSDS__DASK__N_WORKERS": str(workers),
                                "ZSDS__DASK__DASHBOARD_ADDRESS": ":0"})


def run_survey(work: Path, sim: Path, cluster: str, workers: int) -> None:
    """Process both nights into ``work/<cluster>``; timings to ``work/<cluster>.json``."""
    root = work / cluster
    shutil.rmtree(root, ignore_errors=True)
    (work / f"{cluster}.json").unlink(missing_ok=True)
    config = _config(root, sim, cluster, workers)
    t0 = time.perf_counter()
    first = run_night(N1, config, incoming=sim / "raw", progress=False)
    t1 = time.perf_counter()
    refs = build_references(config, min_frames=5)
    t2 = time.perf_counter()
    second = run_night(N2, config, incoming=sim / "raw", progress=False)
    t3 = time.perf_counter()
    (work / f"{cluster}.json").write_text(json.dumps({
        "quadrants": len(first.outcomes) + len(second.outcomes),
        "failed": first.count("failed") + second.count("failed"),
        "references": sum(r.get("status") != "failed" for r in refs),
        "seconds": {"night1": t1 - t0, "references": t2 - t1, "night2": t3 - t2}}))


def summary(work: Path, sim: Path, cluster: str) -> dict:
    root = work / cluster
    config = _config(root, sim, cluster, 1)
    return {**json.loads((work / f"{cluster}.json").read_text()), "sums": checksums(root),
            "candidates": table(config, "select candid, object_id, pid, ra, dec, magpsf, rb "
                                        "from candidates order by candid"),
            "objects": table(config, "select object_id, ra, dec, ndet from objects "
                                     "order by object_id")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("workdir", nargs="?", default="/tmp/zsds-equivalence", type=Path)
    ap.add_argument("--exposures", type=int, default=40, help="object exposures a night")
    ap.add_argument("--size", type=int, default=384, help="quadrant width (height + 4)")
    ap.add_argument("--workers", type=int, default=1, help="LocalCluster workers")
    ap.add_argument("--run", choices=["both", "local", "slurm", "none"], default="both")
    args = ap.parse_args()
    if args.run in ("both", "slurm") and (shutil.which("sinfo") is None or subprocess.run(
            ["sinfo"], capture_output=True).returncode):
        raise SystemExit("SLURM is not running: bash cluster/start-local-slurm.sh")
    sim = args.workdir / "sim"
    if not (sim / "truth" / "exposures.parquet").exists():
        simulate(SimulationSpec(outdir=sim, start_night=N1, nights=2, fields=[655],
                                ccds=[13, 14], quads=[1, 2, 3, 4],
                                quad_shape=(args.size + 4, args.size), filters=["zr"],
                                exposures_per_night=args.exposures, n_bias=5, n_flat=5,
                                n_transients=10, seed=11, source_truth=False))
    for c in {"both": ("local", "slurm"), "none": ()}.get(args.run, (args.run,)):
        run_survey(args.workdir, sim, c, args.workers)
    if args.run not in ("both", "none"):
        return
    runs = {c: summary(args.workdir, sim, c) for c in ("local", "slurm")}
    a, b = runs["local"], runs["slurm"]
    differ = sorted(k for k in set(a["sums"]) | set(b["sums"])
                    if a["sums"].get(k) != b["sums"].get(k))
    n_alert_files = sum(k.startswith("alerts/") for k in a["sums"])
    print(json.dumps({
        "survey": f"2 nights x {args.exposures} exposures x 2 CCDs x 4 quadrants of "
                  f"{args.size}x{args.size + 4}",
        "quadrants_processed": {c: r["quadrants"] for c, r in runs.items()},
        "failed": {c: r["failed"] for c, r in runs.items()},
        "references": {c: r["references"] for c, r in runs.items()},
        "candidates": {c: len(r["candidates"]) for c, r in runs.items()},
        "objects": {c: len(r["objects"]) for c, r in runs.items()},
        "files_compared": len(a["sums"]), "alert_files_compared": n_alert_files,
        "files_differing": len(differ), "first_differences": differ[:10],
        "candidates_identical": a["candidates"].equals(b["candidates"]),
        "objects_identical": a["objects"].equals(b["objects"]),
        "seconds": {c: {k: round(v, 1) for k, v in r["seconds"].items()} for c, r in runs.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
