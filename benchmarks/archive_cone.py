"""Cone-search latency of the archive API over a lightcurve store of >= 1 million objects (issue 11).

Builds (once, kept in WORKDIR) a synthetic archive: a lightcurve store written with
:mod:`zsds.io.lcstore` at HEALPix order 10 (the order of full ZTF quadrants) holding
``--parts`` build partitions (quadrants of 0.87 x 0.87 deg) of ``--objects / --parts`` objects
each, every object with all its metric columns and ``--epochs`` detections, and an operations
database with the epochs' science images (program 1). Then times ``--queries`` requests at
random object positions through the ASGI app in-process (``fastapi.testclient``, the whole
FastAPI stack: token check, access rule, store, VOTable/JSON serialisation):

* ``GET /scs/objects?RA=&DEC=&SR=5"`` (Simple Cone Search, VOTable), the acceptance target:
  p95 <= 100 ms;
* ``GET /lightcurves/objects`` (JSON, all metrics);
* ``GET /cgi-bin/ZTF/nph_light_curves?POS=CIRCLE ra dec 5"&FORMAT=csv`` (detections joined to
  their images, heliocentric times).

Prints p50/p95/max per endpoint, the store size and the command.

Usage: python benchmarks/archive_cone.py [WORKDIR] [--objects 1000000] [--parts 16]
       [--epochs 2] [--queries 300]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from zsds.core import lcmatch, lcmetrics
from zsds.io.lcstore import LightcurveStore, healpix29, part_key
from zsds.stages.lightcurves import OBJECT_COLUMNS, detection_schema, object_schema

ORDER = 10
SIDE_DEG = 0.87
J0 = 2461000.7
RADIUS_ARCSEC = 5.0


def _part_geometry(i: int) -> tuple[int, int, int, float, float]:
    """(field, ccd, qid, ra0, dec0) of build partition i (a grid of quadrants near dec 20)."""
    field, ccd, qid = 600 + i // 64, (i // 4) % 16 + 1, i % 4 + 1
    return field, ccd, qid, 150.0 + (i % 8) * SIDE_DEG, 16.0 + (i // 8) * SIDE_DEG


def _pid(i: int, epoch: int) -> int:
    return 10**11 + i * 100 + epoch


def _write_part(store: LightcurveStore, i: int, n: int, epochs: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + i)
    field, ccd, qid, ra0, dec0 = _part_geometry(i)
    ra = ra0 + rng.uniform(0, SIDE_DEG, n)
    dec = dec0 + rng.uniform(0, SIDE_DEG, n)
    objects = pd.DataFrame({"oid": lcmatch.make_oid(field, ccd, qid, "zr", np.arange(1, n + 1)),
                            "ra": ra, "dec": dec, "_healpix_29": healpix29(ra, dec)})
    extra = {name: 0 for name, *_ in OBJECT_COLUMNS[4:]}
    extra.update(field_id=field, ccd_id=ccd, qid=qid, rcid=(ccd - 1) * 4 + qid - 1, filter_code="zr",
                 filterid=2, ref_mag=18.0)
    extra.update({m: rng.normal(size=n) for m in lcmetrics.metric_names()})
    objects = pd.concat([objects, pd.DataFrame(extra, index=objects.index)], axis=1)
    k = epochs
    dets = pd.DataFrame({f.name: np.zeros(k * n, dtype=f.type.to_pandas_dtype()) for f in detection_schema()})
    dets["oid"] = np.repeat(objects["oid"].to_numpy(), k)
    dets["_healpix_29"] = np.repeat(objects["_healpix_29"].to_numpy(), k)
    dets["pid"] = np.tile([_pid(i, e) for e in range(k)], n)
    dets["mjd"] = np.tile([J0 + e - 2400000.5 for e in range(k)], n)
    dets["night"] = "20251123"
    dets["mag"] = 18 + rng.normal(0, 0.05, k * n)
    dets["mag_err"] = 0.05
    dets["ra"], dets["dec"] = np.repeat(ra, k), np.repeat(dec, k)
    schemas = {"objects": object_schema(), "detections": detection_schema()}
    return store.write_part(part_key(field, "zr", ccd, qid), objects, dets, pd.DataFrame({"pid": [1]}), schemas)


def _register_images(config, parts: int, epochs: int) -> None:
    from zsds.db import schema as s
    from zsds.db.ops import engine_from_config

    engine = engine_from_config(config)
    with engine.begin() as conn:
        for i in range(parts):
            field, ccd, qid, ra0, dec0 = _part_geometry(i)
            for e in range(epochs):
                conn.execute(s.exposures.insert().values(
                    expid=i * 100 + e + 1, night="20251123", filefracday="20251123200000", obsjd=J0 + e,
                    imgtype="object", filter_code="zr", filterid=2, field_id=field, programid=1,
                    exptime=30.0, airmass=1.2))
                conn.execute(s.science_images.insert().values(
                    expid=i * 100 + e + 1, ccd_id=ccd, qid=qid, rcid=(ccd - 1) * 4 + qid - 1,
                    pid=_pid(i, e), night="20251123", filefracday="20251123200000", obsjd=J0 + e,
                    field_id=field, filter_code="zr", programid=1, path=f"sci/x/{i}_{e}.fits", status=1,
                    infobits=0, maglim=20.5, magzp=26.0, ra=ra0 + SIDE_DEG / 2, dec=dec0 + SIDE_DEG / 2,
                    radius_deg=SIDE_DEG * 0.71))
    engine.dispose()


def build(work: Path, n_objects: int, parts: int, epochs: int, seed: int = 1) -> None:
    """Write the store and database once (marker ``built.ok`` records the parameters)."""
    marker = work / "built.ok"
    key = f"{n_objects} {parts} {epochs}"
    if marker.exists() and marker.read_text() == key:
        return
    shutil.rmtree(work / "archive", ignore_errors=True)
    store = LightcurveStore(work / "archive" / "lightcurves")
    store.create(ORDER)
    per = n_objects // parts
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        rows = [r for part in pool.map(lambda i: _write_part(store, i, per, epochs, seed), range(parts))
                for r in part]
    keys = []
    for i in range(parts):
        field, ccd, qid, _, _ = _part_geometry(i)
        keys.append(part_key(field, "zr", ccd, qid))
    store.finalize(rows, keys, {"objects": object_schema(), "detections": detection_schema()})
    _register_images(_config(work), parts, epochs)
    print(f"built {per * parts} objects in {parts} partitions ({len(rows)} files) in "
          f"{time.perf_counter() - t0:.0f} s")
    marker.write_text(key)


def _config(work: Path):
    from zsds.config import load_config

    return load_config(overrides={"archive": {"root": str(work / "archive")}})


def _targets(n: int, parts: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i = int(rng.integers(parts))
        _, _, _, ra0, dec0 = _part_geometry(i)
        out.append((ra0 + rng.uniform(0.01, SIDE_DEG - 0.01), dec0 + rng.uniform(0.01, SIDE_DEG - 0.01)))
    return out


def _time(client, urls: list[str]) -> np.ndarray:
    out = []
    for url in urls:
        t0 = time.perf_counter()
        r = client.get(url)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")
    return np.array(out) * 1000.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", nargs="?", type=Path, default=None)
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.gettempdir()) / "zsds-archive-cone"
    work.mkdir(parents=True, exist_ok=True)
    build(work, args.objects, args.parts, args.epochs)

    warnings.filterwarnings("ignore", message=".*httpx.*")  # starlette's TestClient notice
    from fastapi.testclient import TestClient

    from zsds.api.app import create_app

    client = TestClient(create_app(_config(work)))
    targets = _targets(args.queries, args.parts, args.seed)
    r = RADIUS_ARCSEC
    endpoints = {
        "SCS /scs/objects (VOTable)": [f"/scs/objects?RA={a}&DEC={d}&SR={r / 3600}" for a, d in targets],
        "/lightcurves/objects (JSON)": [f"/lightcurves/objects?ra={a}&dec={d}&radius_arcsec={r}" for a, d in targets],
        "/cgi-bin/ZTF/nph_light_curves (CSV)": [
            f"/cgi-bin/ZTF/nph_light_curves?POS=CIRCLE {a} {d} {r / 3600}&FORMAT=csv" for a, d in targets],
    }
    _time(client, [u[0] for u in endpoints.values()])  # warm-up (imports, ephemeris)
    n_found = sum(len(client.get(u).text.splitlines()) - 1 for u in endpoints["/cgi-bin/ZTF/nph_light_curves (CSV)"][:20])
    results = {}
    print(f"store: {args.objects // args.parts * args.parts} objects, {args.parts} partitions, HEALPix order "
          f"{ORDER}; {args.queries} cones of {r}\" at random positions ({n_found} epochs in the first 20)")
    for name, urls in endpoints.items():
        ms = _time(client, urls)
        results[name] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                         "max_ms": float(ms.max())}
        print(f"{name:38s} p50 {results[name]['p50_ms']:6.1f} ms   p95 {results[name]['p95_ms']:6.1f} ms   "
              f"max {results[name]['max_ms']:6.1f} ms")
    ok = results["SCS /scs/objects (VOTable)"]["p95_ms"] <= 100.0
    print(f"target: SCS cone p95 <= 100 ms: {'met' if ok else 'NOT met'}")
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    return results


if __name__ == "__main__":
    main()
