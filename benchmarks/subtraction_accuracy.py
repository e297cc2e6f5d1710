"""Subtraction and candidate-extraction accuracy on simulated pipeline images with truth.

Prepare: ``zsds simulate OUT/incoming --nights 2 ... --transients 40 --quiet-nights 1``, run
night 1, ``zsds refimg build --min-frames 5``, run night 2; then::

    python benchmarks/subtraction_accuracy.py OUT [--night 20261122] [--model PATH]

``--quiet-nights 1`` keeps the transients out of night 1, so the reference holds none of
their light, as for fakes injected into science images. Without it every transient is in the
reference at 65-80% of its night-2 flux, and the expected difference is a small difference of
two large numbers: a 0.5% relative calibration error between the science image and the
co-add becomes a 2% error of the difference flux.

For every science image of the night: :func:`zsds.stages.subtract.subtract_images` against
the quadrant's reference, then against the truth (``truth/sources/<night>/<expid>_cCC_qQ``):

* S_corr mean/std over source-free pixels;
* injected transients: expected difference flux = flux in the science image minus the mean
  flux in the reference's input images (night 1, scaled by the zero points; the co-add's
  weights and outlier rejection change it by < 0.3% for these transients), plus the part of
  every other transient's expected flux that a PSF fit at this position picks up (pairs
  closer than the PSF, e.g. two transients in one host, are measured as one source; see
  :func:`_blended`; flux bias and normalised residuals only); true S/N = unblended expected
  flux / the stage's flux error at that position; completeness vs true S/N (a kept candidate
  within 1.5 px), flux bias and normalised residuals (selected on the same true S/N);
* false candidates: kept candidates farther than 2 px from every transient, asteroid and
  variable star (``truth/variables.parquet``: their changes are real detections, counted
  apart as variable-star candidates), before and after the rb threshold that keeps >= 95% of the transients at S/N >= 7; scaled
  to a full-size quadrant (3072 x 3080 px) by area;
* held-out AUC / FPR of the shipped model (stored in the model file by ``zsds rb train``);
* time per quadrant and FFT count.

Seeing ratios science/reference from 0.7 to 2.0 (``--scorr-only``: S_corr statistics and the
ratio for every science image of a night, also those marked bad, no truth needed): simulate
single nights into the same archive with the same seed and a fixed seeing, e.g.
``zsds simulate IN23 --nights 1 --start-night 20261123 --seed 33 --seeing 4.4 --transients 0
...`` (the other options as for the main run), ``zsds run-night 20261123 --incoming IN23``,
then ``python benchmarks/subtraction_accuracy.py OUT --night 20261123 --scorr-only``.
(4.4" is beyond the pipeline's 4" seeing limit, so that image is marked ``BAD_SEEING`` and
not subtracted by run-night; the benchmark subtracts it anyway.)
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from zsds.core import realbogus
from zsds.io.fftwisdom import default_wisdom_path
from zsds.stages.subtract import subtract_images

FULL_AREA = 3072 * 3080


def _ref_inputs(ref_dir: Path) -> list[str]:
    log = next(ref_dir.glob("*refimlog.txt")).read_text().splitlines()
    return [ln.split()[3] for ln in log if ln.startswith("input pid")]


def _truth(sim: Path, night: str, expid: int, ccd: int, qid: int) -> pd.DataFrame:
    return pd.read_parquet(sim / "incoming" / "truth" / "sources" / night / f"{expid}_c{ccd:02d}_q{qid}.parquet")


def _variable_ids(sim: Path) -> set:
    """source_ids of the simulated variable stars (their changes are real detections)."""
    path = sim / "incoming" / "truth" / "variables.parquet"
    return set(pd.read_parquet(path, columns=["source_id"]).source_id) if path.exists() else set()


def _ref_flux(sim: Path, archive: Path, inputs, zp_sci) -> pd.Series:
    """Mean transient flux over the reference inputs, in science DN (by source_id)."""
    parts = []
    for rel in inputs:
        h = fits.getheader(archive / rel)
        night = "".join(rel.split("/")[1:3])
        t = _truth(sim, night, int(h["EXPID"]),
                   int(h["CCD_ID"]), int(h["QID"]))
        t = t[t.kind == "transient"].set_index("source_id")["flux_dn"]
        parts.append(t * 10 ** (0.4 * (zp_sci - float(h["MAGZP"]))))
    return pd.concat(parts, axis=1).fillna(0.0).mean(axis=1)


def _psf_sigma(P_D) -> float:
    """Gaussian sigma (px) of the difference image's PSF from its half-maximum area."""
    p = np.asarray(P_D, np.float64)
    return float(2 * np.sqrt(np.sum(p > p.max() / 2) / np.pi)) / 2.3548


def _blended(expected, x, y, sigma: float) -> np.ndarray:
    """Expected PSF-fit flux at each transient's position, blends included.

    A PSF fit at position ``r_j`` responds to a point source of flux ``f_k`` at ``r_k`` with
    ``f_k sum P(r - r_j) P(r - r_k) / sum P^2``, ``exp(-d^2 / (4 sigma^2))`` for a Gaussian PSF
    of ``sigma`` at separation ``d``; summed over all transients (the term ``k = j`` is 1).
    """
    x, y, f = (np.asarray(a, np.float64) for a in (x, y, expected))
    d2 = (x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
    return np.exp(-d2 / (4 * sigma ** 2)) @ f


def _match(cx, cy, tx, ty, radius):
    if len(cx) == 0 or len(tx) == 0:
        return np.full(len(tx), -1), np.zeros(len(cx), bool)
    d = np.hypot(np.asarray(cx)[None] - np.asarray(tx)[:, None], np.asarray(cy)[None] - np.asarray(ty)[:, None])
    best = np.where(d.min(1) <= radius, d.argmin(1), -1)
    near = d.min(0) <= radius
    return best, near


def evaluate_image(sim: Path, archive: Path, sci_path: Path, ref_path: Path, inputs, model) -> dict:
    t0 = time.perf_counter()
    r = subtract_images(sci_path, ref_path, model_path=model,
                        fft_wisdom=default_wisdom_path())  # measured plans, as run-night
    seconds = time.perf_counter() - t0
    h = fits.getheader(sci_path)
    night = sci_path.parts[-4] + sci_path.parts[-3]
    truth = _truth(sim, night, int(h["EXPID"]), int(h["CCD_ID"]), int(h["QID"]))
    tr = truth[truth.kind == "transient"].set_index("source_id")
    ref_f = _ref_flux(sim, archive, inputs, float(h["MAGZP"])).reindex(tr.index).fillna(0.0)
    expected = tr["flux_dn"] - ref_f
    z, c = r.zogy, r.candidates
    blended = _blended(expected, tr["x"], tr["y"], _psf_sigma(z.P_D))
    yi = np.clip(np.rint(tr["y"]).astype(int), 0, z.S.shape[0] - 1)
    xi = np.clip(np.rint(tr["x"]).astype(int), 0, z.S.shape[1] - 1)
    err = np.sqrt(np.asarray(z.S_var)[yi, xi]) * z.s_to_flux
    inside = r.footprint[yi, xi] & (xi > 12) & (yi > 12) & (xi < z.S.shape[1] - 13) & (yi < z.S.shape[0] - 13)
    kept = c[np.asarray(c["index"]) >= 0]
    best, _ = _match(kept["xpos"], kept["ypos"], tr["x"], tr["y"], 1.5)
    ast = truth[truth.kind == "asteroid"]
    var = truth[truth.source_id.isin(_variable_ids(sim))]
    allx, ally = np.r_[tr["x"], ast["x"]], np.r_[tr["y"], ast["y"]]
    _, near_real = _match(kept["xpos"], kept["ypos"], allx, ally, 2.0)
    _, near_var = _match(kept["xpos"], kept["ypos"], var["x"], var["y"], 2.0)
    on_variable = near_var & ~near_real  # a variable star's change: real, not bogus
    near_real = near_real | near_var
    meas = np.where(best >= 0, np.asarray(kept["flux"])[np.clip(best, 0, None)] *
                    np.where(np.asarray(kept["isdiffpos"])[np.clip(best, 0, None)] == "t", 1, -1), np.nan)
    merr = np.where(best >= 0, np.asarray(kept["flux_err"])[np.clip(best, 0, None)], np.nan)
    rb = np.where(best >= 0, np.asarray(kept["rb"])[np.clip(best, 0, None)], np.nan)
    return {"seconds": seconds, "shape": list(z.S.shape), "n_fft": r.qa["n_fft"],
            "scorr_mean": r.qa["scorr_mean"],
            "scorr_std": r.qa["scorr_std"], "area": float(r.footprint.sum()),
            "snr": (np.abs(expected) / err)[inside].to_numpy(), "found": (best >= 0)[inside],
            "true_flux": blended[inside.to_numpy()], "flux": meas[inside], "flux_err": merr[inside],
            "rb_real": rb[inside], "rb_false": np.asarray(kept["rb"])[~near_real],
            "n_false": int((~near_real).sum()), "n_variable": int(on_variable.sum()),
            "rb_variable": np.asarray(kept["rb"])[on_variable], "qa": r.qa}


def summarise(rows: list[dict], model_meta: dict) -> dict:
    cat = {k: np.concatenate([r[k] for r in rows]) for k in ("snr", "found", "true_flux", "flux",
                                                              "flux_err", "rb_real", "rb_false")}
    snr, found = cat["snr"], cat["found"].astype(bool)
    bins = [(3, 5), (5, 6), (6, 7), (7, 10), (10, 20), (20, 1e9)]
    comp = {f"{a}-{b:g}": [int(found[(snr >= a) & (snr < b)].sum()), int(((snr >= a) & (snr < b)).sum())]
            for a, b in bins}
    good = found & (snr >= 10)
    rel = (cat["flux"][good] - cat["true_flux"][good]) / np.abs(cat["true_flux"][good])
    norm = (cat["flux"][found & (snr >= 5)] - cat["true_flux"][found & (snr >= 5)]) / cat["flux_err"][found & (snr >= 5)]
    sel7 = found & (snr >= 7)
    thr = float(np.quantile(cat["rb_real"][sel7], 0.05, method="lower")) if sel7.any() else 0.0
    area = sum(r["area"] for r in rows)
    n_false = sum(r["n_false"] for r in rows)
    n_false_rb = int((cat["rb_false"] >= thr).sum())
    return {"images": len(rows), "completeness_by_true_snr": comp,
            "completeness_snr_ge_7": float(found[snr >= 7].mean()),
            "completeness_snr_5_7": float(found[(snr >= 5) & (snr < 7)].mean()),
            "flux_bias_median_snr_ge_10": float(np.median(rel)), "n_flux": int(good.sum()),
            "norm_resid_std_robust": float(1.4826 * np.median(np.abs(norm - np.median(norm)))),
            "norm_resid_std": float(np.std(norm)), "norm_resid_mean": float(np.mean(norm)),
            "rb_threshold_95": thr,
            "rb_kept_fraction_snr_ge_7": float(np.mean(cat["rb_real"][sel7] >= thr)),
            "false_per_full_quadrant_before_rb": n_false * FULL_AREA / area,
            "false_per_full_quadrant_after_rb": n_false_rb * FULL_AREA / area,
            "variable_star_candidates_per_full_quadrant_after_rb":
                int(sum((r["rb_variable"] >= thr).sum() for r in rows)) * FULL_AREA / area,
            "scorr_mean": [round(r["scorr_mean"], 3) for r in rows],
            "scorr_std": [round(r["scorr_std"], 3) for r in rows],
            "seconds_per_image": float(np.median([r["seconds"] for r in rows])),
            "image_shape": rows[0]["shape"],
            "n_fft": rows[0]["n_fft"], "heldout_synthetic": model_meta.get("heldout")}


def scorr_only(archive: Path, night: str, refs: dict) -> None:
    """S_corr mean/std over source-free pixels and the seeing ratio science/reference."""
    out = []
    for p in sorted((archive / "sci" / night[:4] / night[4:]).glob("*/*sciimg.fits")):
        h = fits.getheader(p)
        ref_path = refs.get((int(h["CCD_ID"]), int(h["QID"])))
        if ref_path is None or "MAGZP" not in h:
            continue
        r = subtract_images(p, ref_path, fft_wisdom=default_wisdom_path())
        out.append({"image": p.name, "seeing_ratio": float(h["SEEING"]) / float(fits.getheader(ref_path)["SEEING"]),
                    "scorr_mean": r.qa["scorr_mean"], "scorr_std": r.qa["scorr_std"],
                    "scorr_npix": r.qa.get("scorr_npix")})
    print(json.dumps(out, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sim", type=Path)
    ap.add_argument("--night", default="20261122")
    ap.add_argument("--model", default=None)
    ap.add_argument("--scorr-only", action="store_true",
                    help="only S_corr statistics and seeing ratios, for every science image of "
                         "the night, also those the pipeline marked bad (e.g. BAD_SEEING); no truth")
    args = ap.parse_args(argv)
    archive = args.sim / "archive"
    refs = {}  # (ccd, qid) -> reference of that readout quadrant (one field)
    for path in glob.glob(str(archive / "ref/*/*/*/*/*/*refimg.fits")):
        h = fits.getheader(path)
        refs[(int(h["CCD_ID"]), int(h["QID"]))] = Path(path)
    if args.scorr_only:
        return scorr_only(archive, args.night, refs)
    rows = []
    for p in sorted((archive / "sci" / args.night[:4] / args.night[4:]).glob("*/*sciimg.fits")):
        h = fits.getheader(p)
        ref_path = refs.get((int(h["CCD_ID"]), int(h["QID"])))
        if ref_path is None or "MAGZP" not in h or int(h.get("STATUS", 1)) != 1:
            continue  # a bad image or no reference: the pipeline does not subtract it either
        rows.append(evaluate_image(args.sim, archive, p, ref_path, _ref_inputs(ref_path.parent),
                                   args.model))
    default = Path(realbogus.__file__).parent.parent / "data" / realbogus.DEFAULT_MODEL
    meta = json.loads(Path(args.model or default).read_text())
    print(json.dumps(summarise(rows, meta), indent=1))


if __name__ == "__main__":
    main()
