"""Lightcurve acceptance: repeatability, period recovery, cone-search files, ID stability.

Usage::

    python benchmarks/lightcurve_accuracy.py [WORKDIR] [--nights 3] [--exposures 12] [--seed 7]
        [--span-days 0] [--scatter-visits] [--quad-size 512x520]

Simulates (if ``WORKDIR/incoming`` is missing) field 655, CCD 13, quadrant 3 (512x520 px by
default), processes every night, builds the reference (``--min-frames 3``), then builds the lightcurves
incrementally (first night, then the rest) and from scratch, and measures:

* repeatability: median over constant stars (truth variables excluded, >= 20 good epochs;
  "bright": brighter than 16 mag, unsaturated as saturated detections are flagged; and a
  fainter 16-18.5 mag band) of the RMS of the good magnitudes about their mean, before
  (``mag_raw``) and after (``mag``) the refinement; for the bright stars also a decomposition
  with the per-epoch truth fluxes (:func:`repeatability_truth`);
* period recovery of truth variables with amplitude >= 0.1 mag and >= 30 good epochs, also
  restricted to periods shorter than half the baseline (longer ones cannot be measured to 1 %),
  and split by light-curve shape (sine, sawtooth);
* files opened by 5" cone searches at 200 object positions, over all Parquet data files;
* ID stability: the incremental store and the from-scratch store give every truth star the
  same object ID, and a re-run changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FIRST_NIGHT = "20261121"


def _nights(work: Path) -> list[str]:
    """The simulated nights (YYYYMMDD), from the simulator's exposure truth."""
    exp = pd.read_parquet(work / "incoming" / "truth" / "exposures.parquet", columns=["night"])
    return sorted(str(n) for n in exp["night"].unique())


def _env(work: Path) -> dict:
    return {**os.environ, "ZSDS__ARCHIVE__ROOT": str(work / "archive"),
            "ZSDS__REFCAT__PATH": str(work / "incoming" / "refcat")}


def prepare(work: Path, nights: int, exposures: int, seed: int, span_days: int = 0,
            scatter_visits: bool = False, quad_size: str = "512x520") -> None:
    """Simulate and process the data set once (kept in ``work``; marker ``prepared.ok``)."""
    if (work / "prepared.ok").exists():
        return
    shutil.rmtree(work / "incoming", ignore_errors=True)
    shutil.rmtree(work / "archive", ignore_errors=True)
    run = lambda *a: subprocess.run(["zsds", *a], check=True, env=_env(work),  # noqa: E731
                                    stdout=subprocess.DEVNULL)
    run("simulate", str(work / "incoming"), "--fields", "655", "--ccds", "13", "--quads", "3",
        "--quad-size", quad_size, "--nights", str(nights), "--exposures-per-night", str(exposures),
        "--filters", "zr", "--n-bias", "5", "--n-flat", "5", "--seed", str(seed),
        "--span-days", str(span_days), *(["--scatter-visits"] if scatter_visits else []))
    for night in _nights(work):
        done = subprocess.run(["zsds", "run-night", night, "--incoming", str(work / "incoming" / "raw"),
                               "--no-progress", "--quads", "3"], env=_env(work), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:  # e.g. a full disk: never measure on a silently partial season
            raise SystemExit(f"run-night {night} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    subprocess.run(["zsds", "refimg", "build", "--min-frames", "3", "--serial"], env=_env(work),
                   stdout=subprocess.DEVNULL)
    (work / "prepared.ok").write_text("ok")


def _config(work: Path):
    from zsds.config import load_config
    return load_config(overrides={"archive": {"root": str(work / "archive")},
                                  "refcat": {"path": str(work / "incoming" / "refcat")}})


def _read_store(root: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(root / t / "dataset") for t in ("objects", "detections")}


def _truth_ids(work: Path, objects: pd.DataFrame) -> pd.DataFrame:
    """Truth ``source_id`` -> ``oid``: nearest object within 1" of each point source (no galaxies)."""
    from zsds.core.lcmatch import match_epoch
    ref = pd.read_parquet(work / "incoming" / "refcat")
    ref = ref[~ref["galaxy"].astype(bool)]
    idx, _ = match_epoch(objects["ra"], objects["dec"], ref["ra"], ref["dec"], 1.0)
    ok = idx >= 0
    return pd.DataFrame({"source_id": ref["source_id"].to_numpy()[ok],
                         "oid": objects["oid"].to_numpy()[idx[ok]],
                         "true_r": ref["true_r"].to_numpy()[ok]})


def repeatability(objects, dets, variables, matched) -> dict:
    """RMS of the good magnitudes of constant (non-truth-variable) stars, before/after refinement.

    "bright": brighter than 16 mag (photon noise below ~5 mmag at this depth; the quoted
    errors include the PSF model's error, ~0.8%, so they no longer select them); "16-18.5": a
    fainter band. Saturated detections are flagged, so not among the good ones.
    """
    good = dets[dets["catflags"] == 0]
    var_oids = set(matched.loc[matched["source_id"].isin(variables["source_id"]), "oid"])
    stats = good.groupby("oid").agg(n=("mag", "size"), rms=("mag", "std"), rms_raw=("mag_raw", "std"),
                                    mag=("mag", "median"))
    err = good.groupby("oid")["mag_err"].median()
    base = (stats["n"] >= 20) & stats.index.isin(matched["oid"]) & ~stats.index.isin(var_oids)
    out = {}
    for label, sel in (("bright", base & (stats["mag"] < 16.0)),
                       ("16-18.5", base & (stats["mag"] > 16.0) & (stats["mag"] < 18.5))):
        s = stats[sel]
        out[label] = {"n_stars": int(len(s)), "rms_before_mmag": 1e3 * float(np.median(s["rms_raw"])),
                      "rms_after_mmag": 1e3 * float(np.median(s["rms"])),
                      "median_err_mmag": 1e3 * float(np.median(err.reindex(s.index)))}
    return out


def _truth_fluxes(work: Path) -> pd.DataFrame:
    """Per-epoch true fluxes (``source_id, expid, flux_dn``) of quadrant 3 from the simulator truth."""
    rows = []
    for f in sorted((work / "incoming" / "truth" / "sources").glob("*/*_q3.parquet")):
        t = pd.read_parquet(f, columns=["source_id", "flux_dn"])
        rows.append(t.assign(expid=int(f.name.split("_")[0])))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["source_id", "flux_dn", "expid"])


def repeatability_truth(dets, variables, matched, truth_flux, max_mag: float = 16.0) -> dict:
    """Where the scatter of the bright constant stars comes from, measured against the truth.

    For every good detection ``d = -2.5 log10(flux / flux_dn)`` (measured PSF-fit flux against
    the simulated flux), relative to the star's mean. ``epoch_zp_rms_mmag``: RMS over epochs of
    the median of ``d`` (the zero-point part the refinement can remove); ``psf_fit_rms_mmag``:
    median over stars of the RMS of ``d`` minus its epoch median (the per-detection part no
    per-epoch correction can remove); ``ideal_zp_rms_mmag``: median RMS of the refined ``mag``
    after subtracting the per-epoch median residual of the same stars (a perfect per-epoch zero
    point); ``quoted_err_mmag``: median ``mag_err``.
    """
    good = dets[dets["catflags"] == 0].merge(matched[["oid", "source_id"]], on="oid")
    good = good[~good["source_id"].isin(variables["source_id"])]
    good = good.merge(truth_flux, on=["source_id", "expid"])
    grp = good.groupby("oid")
    sel = (grp["mag"].transform("median") < max_mag) & (grp["mag"].transform("size") >= 20)
    b = good[sel].copy()
    if not len(b):
        return {"n_stars": 0}
    b["d"] = -2.5 * np.log10(b["flux"] / b["flux_dn"])
    b["d"] -= b.groupby("oid")["d"].transform("mean")
    ep = b.groupby("pid")["d"].median()
    b["d_ep"] = b["d"] - b["pid"].map(ep)
    b["r"] = b["mag"] - b.groupby("oid")["mag"].transform("mean")
    b["r_ep"] = b["r"] - b["pid"].map(b.groupby("pid")["r"].median())
    return {"n_stars": int(b["oid"].nunique()), "epoch_zp_rms_mmag": 1e3 * float(ep.std()),
            "psf_fit_rms_mmag": 1e3 * float(b.groupby("oid")["d_ep"].std().median()),
            "ideal_zp_rms_mmag": 1e3 * float(b.groupby("oid")["r_ep"].std().median()),
            "quoted_err_mmag": 1e3 * float(b.groupby("oid")["mag_err"].median().median())}


def period_recovery(objects, variables, matched, baseline_d: float, min_epochs: int = 30) -> dict:
    v = variables.merge(matched, on="source_id").merge(objects[["oid", "ngoodobs", "ls_period_1"]], on="oid")
    v = v[(v["amplitude_mag"] >= 0.1) & (v["ngoodobs"] >= min_epochs)]
    ok = np.abs(v["ls_period_1"] / v["period_d"] - 1) <= 0.01
    short = v["period_d"] <= baseline_d / 2
    return {"n_variables": int(len(v)), "recovered": int(ok.sum()),
            "fraction": float(ok.mean()) if len(v) else float("nan"),
            "n_short_period": int(short.sum()), "recovered_short": int((ok & short).sum()),
            "fraction_short": float(ok[short].mean()) if short.any() else float("nan"),
            "baseline_d": baseline_d,
            "by_shape_short": {k: [int((ok & short & (v["shape"] == k)).sum()), int((short & (v["shape"] == k)).sum())]
                               for k in ("sine", "sawtooth")},
            "each": v[["source_id", "period_d", "amplitude_mag", "shape", "ngoodobs", "ls_period_1"]].to_dict("records")}


def injected_periods(objects, dets, baseline_d: float, n: int = 300, seed: int = 2,
                     max_mag: float = 19.0) -> dict:
    """Period recovery of truth-like variables injected into real samplings.

    The simulator's variables (stars brighter than r = 19; log-uniform periods 0.2-20 d,
    amplitudes 0.1-0.8 mag, sine or sawtooth) are too few in one small quadrant for a
    fraction, so the same population is injected into the time sampling and errors of
    observed constant stars brighter than ``max_mag`` with >= 30 good epochs, and the ``ls_*``
    metrics are run on it.
    """
    from zsds.core.lcmetrics import lomb_scargle
    rng = np.random.default_rng(seed)
    good = dets[dets["catflags"] == 0]
    median_mag = good.groupby("oid")["mag"].median()
    oids = objects.loc[objects["ngoodobs"] >= 30, "oid"]
    oids = oids[oids.map(median_mag).to_numpy() < max_mag].to_numpy()
    if not len(oids):
        return {"n": 0, "host_stars": 0, "note": "no star with >= 30 good epochs"}
    groups = {o: g for o, g in good[good["oid"].isin(oids)].groupby("oid")}
    rec = []
    for _ in range(n):
        g = groups[oids[rng.integers(len(oids))]]
        t, e = g["mjd"].to_numpy(), g["mag_err"].to_numpy()
        period, amp = np.exp(rng.uniform(np.log(0.2), np.log(20.0))), rng.uniform(0.1, 0.8)
        phase = (t / period + rng.uniform()) % 1.0
        saw = rng.uniform() >= 0.5
        shape = 2 * (phase - 0.5) if saw else np.sin(2 * np.pi * phase)
        m = 17.0 + 0.5 * amp * shape + rng.normal(0, e)
        found = lomb_scargle(t, m, e)["ls_period_1"]
        rec.append((period, abs(found / period - 1) <= 0.01, saw))
    rec = np.array(rec)
    short = rec[:, 0] <= baseline_d / 2
    saw = rec[:, 2] > 0
    frac = lambda s: float(rec[s, 1].mean()) if s.any() else float("nan")  # noqa: E731
    return {"n": n, "host_stars": int(len(oids)), "host_max_mag": max_mag,
            "fraction": float(rec[:, 1].mean()), "n_short_period": int(short.sum()),
            "fraction_short": frac(short), "fraction_short_sine": frac(short & ~saw),
            "fraction_short_sawtooth": frac(short & saw),
            "fraction_under_tenth_baseline": frac(rec[:, 0] <= baseline_d / 10),
            "baseline_d": baseline_d}


def cone_files(store_root: Path, objects: pd.DataFrame, n: int = 200) -> dict:
    from zsds.io.lcstore import FileOpenCounter, LightcurveStore, cone_search
    store = LightcurveStore(store_root)
    total = sum(1 for t in ("objects", "detections")
                for p in (store_root / t / "dataset").rglob("*.parquet"))
    rng = np.random.default_rng(1)
    rows = objects.iloc[rng.choice(len(objects), size=min(n, len(objects)), replace=False)]
    fractions, found = [], 0
    for ra, dec, oid in rows[["ra", "dec", "oid"]].itertuples(index=False):
        counter = FileOpenCounter()
        res = cone_search(store, ra, dec, 5.0, detections=True, counter=counter)
        found += int(oid in set(res.objects["oid"]))
        fractions.append(counter.count / total)
    return {"total_files": total, "mean_fraction": float(np.mean(fractions)),
            "max_fraction": float(np.max(fractions)), "found_self": found, "n_cones": len(rows)}


def id_stability(work: Path, nights: list[str]) -> dict:
    """Incremental (first night, then the rest) vs from-scratch vs re-run stores."""
    from zsds.stages.lightcurves import build_lightcurves

    cfg = _config(work)
    lc = work / "archive" / "lightcurves"
    shutil.rmtree(lc, ignore_errors=True)
    build_lightcurves(cfg, start_night=nights[0], end_night=nights[0])
    first = _read_store(lc)["objects"][["oid", "ra", "dec"]]
    build_lightcurves(cfg, start_night=nights[0], end_night=nights[-1])
    incr = _read_store(lc)
    rerun = build_lightcurves(cfg, start_night=nights[0], end_night=nights[-1])
    after_rerun = _read_store(lc)["objects"]
    kept = set(first["oid"]) <= set(incr["objects"]["oid"])
    shutil.copytree(lc, work / "lc_incremental", dirs_exist_ok=True)
    shutil.rmtree(lc)
    build_lightcurves(cfg, start_night=nights[0], end_night=nights[-1])
    scratch = _read_store(lc)
    ref_inc = incr["objects"][incr["objects"]["ref_source_id"] > 0]
    ref_scr = scratch["objects"][scratch["objects"]["ref_source_id"] > 0]
    same_ref = ref_inc[["oid", "ref_source_id"]].merge(ref_scr[["oid", "ref_source_id"]], on="ref_source_id")
    return {"first_night_ids_kept": bool(kept),
            "rerun_statuses": sorted({p["status"] for p in rerun.partitions}),
            "rerun_ids_equal": bool(set(after_rerun["oid"]) == set(incr["objects"]["oid"])),
            "reference_ids_equal_incremental_vs_scratch": bool((same_ref["oid_x"] == same_ref["oid_y"]).all()
                                                               and len(same_ref) == len(ref_inc)),
            "n_objects_incremental": int(len(incr["objects"])), "n_objects_scratch": int(len(scratch["objects"])),
            "n_reference_objects": int(len(ref_inc)), "store": scratch, "incremental": incr}


def main(argv=None) -> dict:
    from zsds.core.lcmetrics import METRICS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", nargs="?", default="/tmp/zsds-lcbench")
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--exposures", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--span-days", type=int, default=0,
                    help="spread the nights at random over this many days (0: consecutive)")
    ap.add_argument("--scatter-visits", action="store_true",
                    help="exposures at random times in each night (default: evenly spaced)")
    ap.add_argument("--quad-size", default="512x520", help="simulated quadrant COLSxROWS")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.nights, args.exposures, args.seed, args.span_days, args.scatter_visits,
            args.quad_size)
    nights = _nights(work)
    ids = id_stability(work, nights)
    store = ids.pop("store")
    ids.pop("incremental")
    objects, dets = store["objects"], store["detections"]
    variables = pd.read_parquet(work / "incoming" / "truth" / "variables.parquet")
    matched = _truth_ids(work, objects)
    baseline = float(dets["mjd"].max() - dets["mjd"].min())
    rep = repeatability(objects, dets, variables, matched)
    rep["bright_truth"] = repeatability_truth(dets, variables, matched, _truth_fluxes(work))
    out = {"repeatability": rep,
           "periods": period_recovery(objects, variables, matched, baseline),
           "periods_injected": injected_periods(objects, dets, baseline),
           "periods_injected_all_hosts": injected_periods(objects, dets, baseline, max_mag=99.0),
           "cone": cone_files(work / "archive" / "lightcurves", objects),
           "ids": ids,
           "n_metrics": len(METRICS),
           "metrics_columns_present": bool(set(m[0] for m in METRICS) <= set(objects.columns))}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
