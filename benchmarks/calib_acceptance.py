"""Acceptance numbers of issue 3 on a simulated night (``zsds simulate OUTDIR ...``).

Usage::

    python benchmarks/calib_acceptance.py OUTDIR [--archive DIR] [--max-rows-files N]

Ingests ``OUTDIR/raw`` into an archive (default ``OUTDIR/acceptance-archive``, SQLite), runs
``make_bias`` and ``make_flat`` for every night with biases and flats, and measures against
``OUTDIR/truth``:

1. overscan-corrected bias level error per row (ADU RMS) vs ``floating_bias.parquet``
   (limit 0.5);
2. master-bias residual RMS vs the ``BIAS`` truth, in units of readnoise/sqrt(N) (limit 1.2);
3. hi-freq flat RMS vs the ``PIXRESP`` truth (limit 0.5%);
4. bad-pixel mask: fraction of ``DEFECTS`` pixels flagged (>= 99%) and of good pixels
   flagged (<= 0.01%).

Prints one line per quadrant and a summary; exits 1 if a limit is missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from zsds.config import load_config
from zsds.core.overscan import overscan_level
from zsds.db import ops
from zsds.stages.calib import make_bias, make_flat
from zsds.stages.ingest import ingest


def _truth(outdir: Path, ccd: int, qid: int) -> dict:
    with fits.open(outdir / "truth" / "detector" / f"ccd{ccd:02d}_q{qid}.fits") as h:
        return {k: h[k].data.astype(np.float64 if k != "DEFECTS" else np.uint8)
                for k in ("BIAS", "PIXRESP", "ILLUM", "DEFECTS")}


def bias_row_errors(outdir: Path, archive: Path, eng, max_files: int) -> list[float]:
    table = pd.read_parquet(outdir / "truth" / "floating_bias.parquet")
    out = []
    with eng.connect() as conn:
        for row in table.head(max_files).itertuples():
            f = conn.exec_driver_sql(
                "SELECT path FROM raw_files WHERE expid = ? AND ccd_id = ?"
                if eng.dialect.name == "sqlite" else
                "SELECT path FROM raw_files WHERE expid = %s AND ccd_id = %s",
                (int(row.expid), int(row.ccd_id))).first()
            if f is None:
                continue
            with fits.open(archive / f[0]) as h:
                ov = np.asarray(h[int(row.qid) + 4].data)
            lvl = overscan_level(ov, int(row.qid)).level
            out.append(float(np.sqrt(np.mean((lvl - np.asarray(row.bias_rows)) ** 2))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--archive", type=Path)
    ap.add_argument("--max-rows-files", type=int, default=200)
    a = ap.parse_args(argv)
    archive = a.archive or a.outdir / "acceptance-archive"
    config = load_config(overrides={"archive": {"root": str(archive)}})
    eng = ops.engine_from_config(config)
    print(ingest([a.outdir / "raw"], config, engine=eng).summary())
    ok = True
    rows = bias_row_errors(a.outdir, archive, eng, a.max_rows_files)
    if rows:
        print(f"bias rows: {len(rows)} quadrant reads, RMS error median {np.median(rows):.3f} "
              f"max {np.max(rows):.3f} ADU (limit 0.5)")
        ok &= max(rows) <= 0.5
    with eng.connect() as conn:
        nights = [r[0] for r in conn.exec_driver_sql(
            "SELECT DISTINCT night FROM raw_files WHERE imgtype = 'bias' ORDER BY night")]
    for night in nights:
        make_bias(night, config, engine=eng)
        make_flat(night, config, engine=eng)
        with eng.connect() as conn:
            cals = [dict(r) for r in conn.execute(
                ops.s.calibrations.select().where(ops.s.calibrations.c.night == night)
            ).mappings()]
        biases = {(c["ccd_id"], c["qid"]): c for c in cals if c["caltype"] == "bias"}
        for c in (c for c in cals if c["caltype"] == "hifreqflat"):
            key = (c["ccd_id"], c["qid"])
            t = _truth(a.outdir, *key)
            good = t["DEFECTS"] == 0
            b = biases[key]
            hdr = fits.getheader(archive / b["path"])
            mb = fits.getdata(archive / b["path"]).astype(np.float64)
            rn = hdr["READNOI"] / hdr["GAIN"]
            bias_ratio = np.sqrt(np.mean((mb - t["BIAS"])[good] ** 2)) / (
                rn / np.sqrt(b["n_frames"]))
            flat = fits.getdata(archive / c["path"]).astype(np.float64)
            truth = t["PIXRESP"] / np.median(t["PIXRESP"][good])
            flat_rms = np.sqrt(np.mean((flat[good] / np.median(flat[good]) - truth[good]) ** 2))
            mask_row = ops.find_calibration(eng, "badpix", key[0], key[1], c["filter_code"],
                                            night)
            mask = fits.getdata(archive / mask_row["path"])
            found = float((mask[~good] != 0).mean()) if (~good).any() else 1.0
            false = float((mask[good] != 0).mean())
            print(f"{night} c{key[0]:02d} q{key[1]} {c['filter_code']}: bias "
                  f"{bias_ratio:.3f} x rn/sqrt(N) (<=1.2), flat {100 * flat_rms:.3f}% (<=0.5), "
                  f"mask found {100 * found:.2f}% (>=99) false {100 * false:.4f}% (<=0.01)")
            ok &= bias_ratio <= 1.2 and flat_rms <= 0.005 and found >= 0.99 and false <= 1e-4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
