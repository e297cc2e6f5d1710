"""Lightcurves: match epochal PSF-fit catalogues to objects, refine zero points, compute metrics.

One build partition = one field, CCD, quadrant and filter = one Dask task:

1. objects: the existing objects of the partition in the store (their IDs are kept for ever);
   if none, the PSF-fit catalogue of the latest reference image (``refpsfcat``), with IDs
   from its row order (:func:`zsds.core.lcmatch.make_oid`); without a reference image, none;
2. new epochs: calibrated quadrants (``science_images``) of the night range whose ``pid`` is
   not yet in the store; their ``psfcat`` rows are matched one-to-one to the objects within
   ``match_radius_arcsec``; unmatched detections of all new epochs are grouped
   (friends-of-friends) into new epochal-only objects with IDs above
   :data:`~zsds.core.lcmatch.EPOCHAL_OFFSET`;
3. relative photometric refinement of all epochs (:mod:`zsds.core.lcrefine`), applied to
   every detection; the refined zero points are written to ``zeropoints/<part>.parquet``;
4. metrics of every object (:mod:`zsds.core.lcmetrics`);
5. the partition's files are rewritten (:class:`zsds.io.lcstore.LightcurveStore`).

Detections keep ``mag_raw`` (pipeline calibration) and ``mag`` (refined). ``catflags`` carries
the ``psfcat`` ``flags`` bits plus :data:`CATFLAG_BAD_IMAGE` (32768, as ZTF) for images with
STATUS 0. Re-running a range already in the store leaves the partitions unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import select

from ..archive.verify import forget_missing, record_checksums
from ..config import ZsdsConfig
from ..core import lcmatch, lcmetrics, lcrefine
from ..db import schema as s
from ..db.ops import engine_from_config
from ..io.lcstore import HEALPIX29, LightcurveStore, choose_order, healpix29, part_key
from ..io.paths import ArchiveLayout
from ..io.products import read_table

__all__ = ["LightcurveParams", "BuildResult", "build_lightcurves", "build_partition",
           "OBJECT_COLUMNS", "DETECTION_COLUMNS", "CATFLAG_BAD_IMAGE", "object_schema",
           "detection_schema"]

log = logging.getLogger(__name__)

#: ``catflags`` bit of detections on images judged bad (STATUS 0).
CATFLAG_BAD_IMAGE = 32768

#: (name, arrow type, unit, description) of the objects table, before the metrics.
OBJECT_COLUMNS = [
    ("oid", pa.int64(), "", "object ID, field*1e12 + rcid*1e10 + filterid*1e9 + running"),
    ("ra", pa.float64(), "deg", "reference-catalogue position, or mean of the detections"),
    ("dec", pa.float64(), "deg", "as ra"),
    (HEALPIX29, pa.int64(), "", "nested HEALPix pixel of order 29 of (ra, dec)"),
    ("field_id", pa.int32(), "", "field"), ("ccd_id", pa.int32(), "", "CCD 1-16"),
    ("qid", pa.int32(), "", "quadrant 1-4"), ("rcid", pa.int32(), "", "readout channel 0-63"),
    ("filter_code", pa.string(), "", "zg, zr, zi"), ("filterid", pa.int32(), "", "1 g, 2 r, 3 i"),
    ("ref_source_id", pa.int64(), "", "row (source_id) in the refpsfcat; 0 for epochal-only objects"),
    ("ref_mag", pa.float64(), "mag", "magnitude in the reference-image catalogue (NaN if none)"),
    ("refzp_version", pa.int32(), "", "reference-image version the object came from (0 none)"),
]

#: (name, arrow type, unit, description) of the detections table.
DETECTION_COLUMNS = [
    ("oid", pa.int64(), "", "object ID"),
    (HEALPIX29, pa.int64(), "", "the object's _healpix_29 (detections live with their object)"),
    ("pid", pa.int64(), "", "processed-image ID (science_images.pid)"),
    ("expid", pa.int64(), "", "exposure ID"),
    ("mjd", pa.float64(), "d", "MJD (UTC) of the start of the exposure"),
    ("night", pa.string(), "", "UTC date YYYYMMDD"),
    ("mag", pa.float64(), "mag", "refined PSF-fit magnitude, mag_raw - zp_corr"),
    ("mag_err", pa.float64(), "mag", "1-sigma error of mag"),
    ("mag_raw", pa.float64(), "mag", "magnitude with the pipeline zero point (MAGZP)"),
    ("zp_corr", pa.float64(), "mag", "zero-point correction of the epoch from the refinement"),
    ("flux", pa.float64(), "DN", "PSF-fit flux"), ("flux_err", pa.float64(), "DN", "its error"),
    ("catflags", pa.int32(), "", "psfcat flags | 32768 for a bad image"),
    ("ra", pa.float64(), "deg", "detection position"), ("dec", pa.float64(), "deg", ""),
    ("x", pa.float64(), "pix", "0-based"), ("y", pa.float64(), "pix", "0-based"),
    ("chi2", pa.float64(), "", "reduced chi-square of the PSF fit"),
    ("sharpness", pa.float64(), "", "psfcat sharpness"),
    ("sep_arcsec", pa.float64(), "arcsec", "distance to the object position at matching"),
]


def object_schema() -> pa.Schema:
    """Arrow schema of the objects table (identity columns, then every metric, float64)."""
    fields = [pa.field(n, t) for n, t, _, _ in OBJECT_COLUMNS]
    return pa.schema(fields + [pa.field(n, pa.float64()) for n in lcmetrics.metric_names()])


def detection_schema() -> pa.Schema:
    """Arrow schema of the detections table."""
    return pa.schema([pa.field(n, t) for n, t, _, _ in DETECTION_COLUMNS])


@dataclass(frozen=True)
class LightcurveParams:
    """Settings of the lightcurve build."""

    match_radius_arcsec: float = 1.5          #: detection-to-object match radius
    orphan_radius_arcsec: float = 1.5         #: friends-of-friends radius of epochal-only sources
    pixels_per_partition: int = 200           #: HEALPix order choice, see lcstore.choose_order
    refine: lcrefine.RefineParams = field(default_factory=lcrefine.RefineParams)


@dataclass(frozen=True)
class BuildResult:
    """Outcome of :func:`build_lightcurves`."""

    store: LightcurveStore
    order: int
    partitions: list[dict]          #: one outcome per partition: part, status, counts, error

    @property
    def n_failed(self) -> int:
        return sum(p["status"] == "failed" for p in self.partitions)


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _science_rows(engine, start_night: str, end_night: str) -> pd.DataFrame:
    c = s.science_images.c
    stmt = (select(c.pid, c.expid, c.ccd_id, c.qid, c.night, c.obsjd, c.field_id, c.filter_code,
                   c.path, c.status, c.infobits, c.magzp, c.radius_deg)
            .where(c.night >= start_night, c.night <= end_night))
    with engine.connect() as conn:
        return pd.DataFrame([dict(r._mapping) for r in conn.execute(stmt)])


def _reference_rows(engine) -> dict[tuple, dict]:
    c = s.reference_images.c
    stmt = select(s.reference_images).where(c.status == "valid").order_by(c.version)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return {(r["field_id"], r["filter_code"], r["ccd_id"], r["qid"]): r for r in rows}


def _epoch_catalogue(root, row: dict) -> pd.DataFrame | None:
    path = root / str(row["path"]).replace("sciimg.fits", "psfcat.fits")
    if not path.exists():
        return None
    t = read_table(path)
    if not {"ra", "dec", "mag"} <= set(t.colnames) or len(t) == 0:
        return None
    cols = ["ra", "dec", "mag", "mag_err", "flux", "flux_err", "flags", "x", "y", "chi2", "sharpness"]
    df = t[cols].to_pandas()
    bad = 0 if int(row["status"]) == 1 else CATFLAG_BAD_IMAGE
    df["catflags"] = df.pop("flags").astype(np.int32) | bad
    df["pid"], df["expid"] = int(row["pid"]), int(row["expid"])
    df["mjd"], df["night"] = float(row["obsjd"]) - 2400000.5, str(row["night"])
    return df.rename(columns={"mag": "mag_raw"})


# ---------------------------------------------------------------------------------------
# the partition task
# ---------------------------------------------------------------------------------------
def _initial_objects(root, key, ref: dict | None) -> pd.DataFrame:
    cols = [n for n, *_ in OBJECT_COLUMNS]
    if ref is None:
        return pd.DataFrame(columns=cols)
    path = root / str(ref["path"]).replace("refimg.fits", "refpsfcat.fits")
    t = read_table(path)
    ok = np.isfinite(np.asarray(t["ra"], float)) & np.isfinite(np.asarray(t["dec"], float))
    running = np.asarray(t["source_id"], np.int64)[ok]
    field_id, fc, ccd, qid = key
    return pd.DataFrame({
        "oid": lcmatch.make_oid(field_id, ccd, qid, fc, running),
        "ra": np.asarray(t["ra"], float)[ok], "dec": np.asarray(t["dec"], float)[ok],
        "ref_source_id": running, "ref_mag": np.asarray(t["mag"], float)[ok],
        "refzp_version": int(ref["version"])})


def _match_new(objects: pd.DataFrame, epochs: list[pd.DataFrame], key, p: LightcurveParams):
    """Assign ``oid`` to every new detection; returns (objects with new ones, detections)."""
    matched, orphans = [], []
    ora, odec, oids = objects["ra"].to_numpy(float), objects["dec"].to_numpy(float), objects["oid"].to_numpy()
    for det in epochs:
        idx, sep = lcmatch.match_epoch(ora, odec, det["ra"].to_numpy(), det["dec"].to_numpy(),
                                       p.match_radius_arcsec)
        hit = idx >= 0
        matched.append(det[hit].assign(oid=oids[idx[hit]], sep_arcsec=sep[hit]))
        orphans.append(det[~hit])
    orph = pd.concat(orphans, ignore_index=True) if orphans else pd.DataFrame()
    if len(orph):
        group, gra, gdec = lcmatch.group_orphans(orph["ra"].to_numpy(), orph["dec"].to_numpy(),
                                                 p.orphan_radius_arcsec)
        running = objects["oid"].to_numpy(np.int64) % 10**9
        start = max(int(running.max()) if len(running) else 0, lcmatch.EPOCHAL_OFFSET)
        new_oid = lcmatch.make_oid(key[0], key[2], key[3], key[1], start + 1 + np.arange(len(gra)))
        objects = pd.concat([objects, pd.DataFrame({
            "oid": new_oid, "ra": gra, "dec": gdec, "ref_source_id": 0, "ref_mag": np.nan,
            "refzp_version": 0})], ignore_index=True)
        sep = _sep_arcsec(orph["ra"], orph["dec"], gra[group], gdec[group])
        matched.append(orph.assign(oid=new_oid[group], sep_arcsec=sep))
    dets = pd.concat(matched, ignore_index=True) if matched else pd.DataFrame()
    return objects, dets


def _sep_arcsec(ra1, dec1, ra2, dec2):
    a, b = lcmatch.unit_vectors(ra1, dec1), lcmatch.unit_vectors(ra2, dec2)
    return 2 * np.degrees(np.arcsin(np.clip(0.5 * np.linalg.norm(a - b, axis=1), 0, 1))) * 3600


def _refine(dets: pd.DataFrame, epoch_info: pd.DataFrame, p: LightcurveParams):
    oid_codes, oid_uniq = pd.factorize(dets["oid"], sort=True)
    pid_codes, pid_uniq = pd.factorize(dets["pid"], sort=True)
    usable = (dets["catflags"].to_numpy() == 0)
    res = lcrefine.refine_zero_points(oid_codes, pid_codes, dets["mag_raw"].to_numpy(float),
                                      dets["mag_err"].to_numpy(float), usable, len(oid_uniq),
                                      len(pid_uniq), p.refine)
    dets = dets.assign(zp_corr=res.dz[pid_codes], mag=dets["mag_raw"].to_numpy(float) - res.dz[pid_codes])
    zp = pd.DataFrame({"pid": np.asarray(pid_uniq, np.int64), "zp_corr": res.dz, "zp_corr_err": res.dz_err,
                       "n_ref_stars": res.n_stars, "ref_rms": res.rms})
    zp = zp.merge(epoch_info, on="pid", how="left")
    zp["magzp_refined"] = zp["magzp"] - zp["zp_corr"]
    return dets, zp


def _object_metrics(objects: pd.DataFrame, dets: pd.DataFrame, params) -> pd.DataFrame:
    names = lcmetrics.metric_names()
    rows = {}
    for oid, g in dets.groupby("oid", sort=False):
        rows[oid] = lcmetrics.compute_metrics(g["mjd"].to_numpy(), g["mag"].to_numpy(),
                                              g["mag_err"].to_numpy(), g["catflags"].to_numpy() == 0,
                                              ra=g["ra"].to_numpy(), dec=g["dec"].to_numpy(),
                                              params=params)
    empty = lcmetrics.compute_metrics([], [], [], [])
    table = pd.DataFrame([rows.get(o, empty) for o in objects["oid"]], columns=names)
    return pd.concat([objects.reset_index(drop=True), table], axis=1)


def _finish_objects(objects, dets, key) -> pd.DataFrame:
    field_id, fc, ccd, qid = key
    epochal = objects["ref_source_id"].to_numpy() == 0
    if epochal.any() and len(dets):
        mean = dets.groupby("oid")[["ra", "dec"]].mean()
        idx = objects.loc[epochal, "oid"]
        has = idx.isin(mean.index).to_numpy()
        rows = objects.index[epochal][has]
        objects.loc[rows, ["ra", "dec"]] = mean.loc[idx[has], ["ra", "dec"]].to_numpy()
    return objects.assign(field_id=field_id, ccd_id=ccd, qid=qid, rcid=lcmatch.rcid_of(ccd, qid),
                          filter_code=fc, filterid=lcmatch.FILTER_IDS[fc],
                          **{HEALPIX29: healpix29(objects["ra"], objects["dec"])})


def build_partition(root, key: tuple, epoch_rows: list[dict], ref: dict | None,
                    params: LightcurveParams = LightcurveParams()) -> dict:
    """Build or update one partition (field, filter, CCD, quadrant) of the store at ``root/lightcurves``.

    Returns an outcome dict: ``part, status ('built', 'updated', 'unchanged', 'empty': no
    usable catalogue), n_objects,
    n_new_objects, n_detections, n_new_epochs, seconds``.
    """
    t0 = time.perf_counter()
    layout = ArchiveLayout(root)
    store = LightcurveStore(layout.lightcurves_dir)
    part = part_key(key[0], key[1], key[2], key[3])
    old = store.read_part(part)
    objects = old["objects"][[n for n, *_ in OBJECT_COLUMNS]] if len(old["objects"]) else _initial_objects(layout.root, key, ref)
    n_before = len(objects)
    old_dets = old["detections"]
    done = set(old_dets["pid"].tolist()) if len(old_dets) else set()
    new_rows = sorted((r for r in epoch_rows if int(r["pid"]) not in done), key=lambda r: (r["obsjd"], r["pid"]))
    epochs = [c for c in (_epoch_catalogue(layout.root, r) for r in new_rows) if c is not None]
    out = {"part": part, "n_new_epochs": len(epochs)}
    if not epochs and len(old["objects"]):
        return {**out, "status": "unchanged", "n_objects": n_before, "n_new_objects": 0,
                "n_detections": len(old_dets), "seconds": time.perf_counter() - t0, "rows": None}
    if not epochs and not len(old_dets):
        return {**out, "status": "empty", "n_objects": 0, "n_new_objects": 0, "n_detections": 0,
                "seconds": time.perf_counter() - t0, "rows": None}
    objects, new_dets = _match_new(objects, epochs, key, params)
    dets = pd.concat([d for d in (old_dets, new_dets) if len(d)], ignore_index=True) if len(new_dets) or len(old_dets) else new_dets
    epoch_info = _epoch_info(old_dets, new_rows, store, part)
    dets, zp = _refine(dets, epoch_info, params)
    objects = _finish_objects(objects, dets, key)
    dets = dets.drop(columns=[HEALPIX29], errors="ignore").merge(objects[["oid", HEALPIX29]], on="oid")
    objects = _object_metrics(objects, dets, lcmetrics.MetricsParams())
    rows = store.write_part(part, objects, dets[[n for n, *_ in DETECTION_COLUMNS]], zp,
                            {"objects": object_schema(), "detections": detection_schema()})
    status = "updated" if len(old["objects"]) else "built"
    return {**out, "status": status, "n_objects": len(objects), "n_new_objects": len(objects) - n_before,
            "n_detections": len(dets), "seconds": time.perf_counter() - t0, "rows": rows}


def _epoch_info(old_dets, new_rows, store, part) -> pd.DataFrame:
    new = pd.DataFrame([{"pid": int(r["pid"]), "expid": int(r["expid"]), "night": str(r["night"]),
                         "mjd": float(r["obsjd"]) - 2400000.5, "magzp": r["magzp"],
                         "status": int(r["status"])} for r in new_rows],
                       columns=["pid", "expid", "night", "mjd", "magzp", "status"])
    path = store.zeropoints_path(part)
    if path.exists():
        old = pd.read_parquet(path)[["pid", "expid", "night", "mjd", "magzp", "status"]]
        new = pd.concat([old[~old["pid"].isin(new["pid"])], new], ignore_index=True)
    return new


def _safe_partition(root, key, rows, ref, params) -> dict:
    try:
        return build_partition(root, key, rows, ref, params)
    except Exception as exc:  # a structured failure, so one bad partition never stops the build
        log.exception("lightcurve partition %s failed", key)
        return {"part": part_key(*key), "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "rows": None}


def _record_checksums(engine, root, store: LightcurveStore, written: list[dict]) -> None:
    """Checksums of the files a build wrote (``product_checksums``); stale ones forgotten."""
    files = [store.root / row["path"] for o in written for row in o["rows"]]
    files += [store.zeropoints_path(o["part"]) for o in written]
    files += [store.properties_path, store.index_path]
    for table in ("objects", "detections"):
        files += [store.root / table / "hats.properties", store.root / table / "partition_info.csv",
                  store.dataset_dir(table) / "_metadata", store.dataset_dir(table) / "_common_metadata"]
    record_checksums(engine, root, files)
    forget_missing(engine, root, store.root.relative_to(root).as_posix())


# ---------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------
def build_lightcurves(config: ZsdsConfig, *, start_night: str, end_night: str, client=None,
                      params: LightcurveParams | None = None, order: int | None = None) -> BuildResult:
    """Build or incrementally update the lightcurve store from the nights ``start..end``.

    Parameters
    ----------
    config : ZsdsConfig
    start_night, end_night : str
        ``YYYYMMDD``, inclusive.
    client : distributed.Client, optional
        One task per partition (key ``lightcurves-<part>``); serial without it.
    params : LightcurveParams, optional
    order : int, optional
        HEALPix order of a new store (default: :func:`~zsds.io.lcstore.choose_order` of the
        median quadrant area); an existing store keeps its order.

    Returns
    -------
    BuildResult
    """
    for name, night in (("start_night", start_night), ("end_night", end_night)):
        if not (len(night) == 8 and night.isdigit()):
            raise ValueError(f"{name} must be YYYYMMDD, not {night!r}")
    params = params or LightcurveParams()
    engine = engine_from_config(config)
    sci = _science_rows(engine, start_night, end_night)
    store = LightcurveStore(ArchiveLayout(config.archive.root).lightcurves_dir)
    if not len(sci):
        return BuildResult(store, store.order if store.exists() else -1, [])
    if not store.exists():
        area = 2.0 * float(np.nanmedian(sci["radius_deg"].astype(float))) ** 2
        store.create(order if order is not None else choose_order(area, params.pixels_per_partition))
    refs = _reference_rows(engine)
    tasks = []
    for key, g in sci.groupby(["field_id", "filter_code", "ccd_id", "qid"], sort=True):
        key = (int(key[0]), str(key[1]), int(key[2]), int(key[3]))
        tasks.append((key, g.to_dict("records"), refs.get(key)))
    root = config.archive.root
    if client is None:
        outcomes = [_safe_partition(root, k, r, ref, params) for k, r, ref in tasks]
    else:
        futures = [client.submit(_safe_partition, root, k, r, ref, params, pure=False,
                                 key=f"lightcurves-{part_key(*k)}-{time.time_ns()}") for k, r, ref in tasks]
        outcomes = client.gather(futures)
    written = [o for o in outcomes if o.get("rows") is not None]
    if written:
        store.finalize([row for o in written for row in o["rows"]], [o["part"] for o in written],
                       {"objects": object_schema(), "detections": detection_schema()})
        _record_checksums(engine, config.archive.root, store, written)
    return BuildResult(store, store.order, [{k: v for k, v in o.items() if k != "rows"} for o in outcomes])
