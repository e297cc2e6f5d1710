"""Lightcurve-store queries with the access rule applied (used by the lightcurve and SCS endpoints).

Detections carry the ``pid`` of their science image but no program: they are joined to
``science_images`` (``pid -> programid, obsjd`` and the epoch metadata of the public
lightcurve service); a detection without a registered image is withheld. An object is
withheld when it has detections and none is visible to the principal; when only some are,
its identity columns are kept and every metric (computed over all epochs) is withheld
(NaN, ``metrics_complete = false``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import select

from ..alerts.sky import cone_clause, separation_deg
from ..core.lcmatch import split_oid
from ..db import schema as s
from ..io.lcstore import HEALPIX29, LightcurveStore, cone_search, part_key, pixel_of
from ..stages.lightcurves import OBJECT_COLUMNS, detection_schema, object_schema
from .access import Principal, visible_sql
from .common import MAX_FOOTPRINT_DEG, Visibility, bad_request, not_found
from .context import ApiContext

__all__ = ["LcResult", "store_of", "cone", "by_ids", "epoch_metadata", "hidden_images_near",
           "IDENTITY_COLUMNS"]

#: Object columns that do not depend on the photometry of epochs.
IDENTITY_COLUMNS = tuple(n for n, *_ in OBJECT_COLUMNS if n != "ref_mag")
_FILTER_OF_ID = {1: "zg", 2: "zr", 3: "zi"}
_CHUNK = 500


@dataclass(frozen=True)
class LcResult:
    """Objects (``sep_arcsec``, ``metrics_complete``) and their visible detections joined to
    epoch metadata (``programid, obsjd, filefracday, field_id, ccd_id, qid, maglim, magzp,
    magzprms, clrcoeff, clrcounc, airmass, exptime``); ``detections`` None if not asked."""

    objects: pd.DataFrame
    detections: pd.DataFrame | None


def store_of(ctx: ApiContext) -> LightcurveStore:
    """The lightcurve store, or a 404 if none has been built."""
    store = ctx.lcstore
    if store is None:  # built after the server started
        candidate = LightcurveStore(ctx.layout.lightcurves_dir)
        store = ctx.lcstore = candidate if candidate.exists() else None
    if store is None or not store.exists():
        raise not_found("this archive has no lightcurve store (run zsds lightcurves build)")
    return store


def hidden_images_near(ctx: ApiContext, principal: Principal, ra: float, dec: float,
                       radius_deg: float) -> pd.DataFrame:
    """Science images the principal may not see whose footprint may reach the cone.

    Returns
    -------
    pandas.DataFrame
        ``pid, field_id, filter_code, ccd_id, qid``.
    """
    c = s.science_images.c
    reach = radius_deg + MAX_FOOTPRINT_DEG
    visible = visible_sql(principal, c.programid, c.obsjd, ctx.now_jd(), ctx.proprietary_days)
    stmt = (select(c.pid, c.field_id, c.filter_code, c.ccd_id, c.qid, c.ra, c.dec, c.radius_deg)
            .where(cone_clause(c.ra, c.dec, ra, dec, reach), ~visible))
    with ctx.engine.connect() as conn:
        rows = pd.DataFrame([dict(r._mapping) for r in conn.execute(stmt)],
                            columns=["pid", "field_id", "filter_code", "ccd_id", "qid", "ra", "dec",
                                     "radius_deg"])
    if len(rows):
        sep = separation_deg(ra, dec, rows["ra"], rows["dec"])
        rows = rows[sep <= radius_deg + rows["radius_deg"].fillna(MAX_FOOTPRINT_DEG)]
    return rows[["pid", "field_id", "filter_code", "ccd_id", "qid"]]


_EPOCH_COLUMNS = ("pid", "programid", "obsjd", "filefracday", "field_id", "ccd_id", "qid",
                  "filter_code", "maglim", "magzp", "magzprms", "clrcoeff", "clrcounc", "airmass")


def epoch_metadata(ctx: ApiContext, pids) -> pd.DataFrame:
    """Epoch metadata of science images by pid (with the exposure time), one row per pid."""
    c, e = s.science_images.c, s.exposures.c
    pids = sorted({int(p) for p in pids})
    frames = []
    with ctx.engine.connect() as conn:
        for i in range(0, len(pids), _CHUNK):
            stmt = (select(*[getattr(c, k) for k in _EPOCH_COLUMNS], e.exptime)
                    .outerjoin(s.exposures, s.exposures.c.expid == c.expid)
                    .where(c.pid.in_(pids[i:i + _CHUNK])))
            frames.append(pd.DataFrame([dict(r._mapping) for r in conn.execute(stmt)]))
    cols = [*_EPOCH_COLUMNS, "exptime"]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _visible_detections(ctx: ApiContext, principal: Principal, dets: pd.DataFrame) -> pd.DataFrame:
    """Detections joined to their epoch metadata; rows the principal may not see dropped."""
    if not len(dets):
        dets = detection_schema().empty_table().to_pandas()
    meta = epoch_metadata(ctx, dets["pid"])
    clash = {c: f"img_{c}" for c in meta.columns if c in dets.columns and c != "pid"}
    meta = meta.rename(columns=clash)
    joined = dets.merge(meta, on="pid", how="left")
    if not len(joined):
        return joined.assign(visible=pd.Series(dtype=bool))
    vis = Visibility(ctx, principal)
    prog = joined["programid"].astype(object).where(joined["programid"].notna(), None)
    joined["visible"] = vis.mask(prog.tolist(), joined["obsjd"].tolist())
    return joined


def _apply_object_rules(objects: pd.DataFrame, dets_all: pd.DataFrame) -> pd.DataFrame:
    """Drop objects whose detections are all hidden; withhold metrics of partly hidden ones."""
    if not len(dets_all):
        return objects.assign(metrics_complete=True)
    g = dets_all.groupby("oid")["visible"]
    n_vis, n_all = g.sum(), g.size()
    n_vis = objects["oid"].map(n_vis).fillna(0).astype(int)
    n_all = objects["oid"].map(n_all).fillna(0).astype(int)
    keep = (n_all == 0) | (n_vis > 0)
    complete = (n_vis == n_all)
    out = objects[keep].copy()
    out["metrics_complete"] = complete[keep].to_numpy()
    metric_cols = [c for c in out.columns if c not in IDENTITY_COLUMNS
                   and c not in ("sep_arcsec", "metrics_complete", "Norder", "Dir", "Npix")]
    partial = ~out["metrics_complete"].to_numpy()
    if partial.any() and metric_cols:
        out.loc[partial, metric_cols] = np.nan
    return out


def _finish(ctx, principal, objects, dets, want_dets: bool, check_objects: bool) -> LcResult:
    dets_all = _visible_detections(ctx, principal, dets) if dets is not None else None
    if check_objects and dets_all is not None:
        objects = _apply_object_rules(objects, dets_all)
    else:
        objects = objects.assign(metrics_complete=True)
    if not want_dets:
        return LcResult(objects.reset_index(drop=True), None)
    visible = None
    if dets_all is not None:
        visible = dets_all[dets_all["visible"]].drop(columns="visible")
    if visible is not None:
        visible = visible[visible["oid"].isin(objects["oid"])]
    return LcResult(objects.reset_index(drop=True), visible.reset_index(drop=True))


def cone(ctx: ApiContext, principal: Principal, ra: float, dec: float, radius_arcsec: float, *,
         detections: bool = False, columns: list[str] | None = None) -> LcResult:
    """Objects within ``radius_arcsec`` of (ra, dec) (and their visible detections).

    Detections are read only when asked or when a hidden image may cover the cone (so a
    search over public data opens only the object files).
    """
    store = store_of(ctx)
    if not radius_arcsec > 0:
        raise bad_request(f"the cone radius must be positive, not {radius_arcsec} arcsec")
    hidden = hidden_images_near(ctx, principal, ra, dec, radius_arcsec / 3600.0)
    columns = columns if columns is not None else object_schema().names  # typed even when empty
    res = cone_search(store, ra, dec, radius_arcsec, columns=columns,
                      detections=detections or len(hidden) > 0)
    return _finish(ctx, principal, res.objects, res.detections, detections, len(hidden) > 0)


def _read(paths, oids, columns=None) -> pd.DataFrame:
    frames = [pq.read_table(p, columns=columns, filters=[("oid", "in", oids)]).to_pandas()
              for p in paths if p.exists()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


_OID_CACHE_SIZE = 64


def _oid_pixels(ctx: ApiContext, store: LightcurveStore, part: str) -> pd.Series:
    """``oid -> pixel`` of the objects of a build partition (cached per partition and index).

    The first lookup reads the ``oid`` and ``_healpix_29`` columns of the partition's object
    files; later ones of the same partition read nothing until the store index changes.
    """
    cache = ctx.extras.setdefault("oid_pixels", {})
    stamp = store.index_path.stat().st_mtime_ns if store.index_path.exists() else 0
    key = (str(store.root), part)
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    files = store.files_of_part(part)
    paths = [store.root / p for p in files.loc[files["table"] == "objects", "path"]]
    frames = [pq.read_table(p, columns=["oid", HEALPIX29]).to_pandas() for p in paths if p.exists()]
    if frames:
        df = pd.concat(frames, ignore_index=True)
    else:
        df = pd.DataFrame({"oid": [], HEALPIX29: []})
    series = pd.Series(pixel_of(df[HEALPIX29].to_numpy(np.int64), store.order),
                       index=df["oid"].to_numpy(np.int64))
    if len(cache) >= _OID_CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = (stamp, series)
    return series


def _pixel_files(store: LightcurveStore, table: str, pixels) -> list:
    out = []
    for npix in sorted(set(int(p) for p in pixels)):
        d = store.pixel_dir(table, store.order, npix)
        if d.is_dir():
            out += sorted(p for p in d.iterdir()
                          if p.suffix == ".parquet" and not p.name.startswith("."))
    return out


def by_ids(ctx: ApiContext, principal: Principal, oids, *, detections: bool = True) -> LcResult:
    """Objects by ``oid`` (and their visible detections); unknown ids are skipped.

    The oid encodes the build partition (field, readout channel, filter); the partition's
    ``oid -> HEALPix pixel`` map (cached) gives the one directory holding the object and
    its detections.
    """
    store = store_of(ctx)
    oids = sorted({int(o) for o in oids})
    parts = split_oid(np.asarray(oids, np.int64))
    pixels = {}
    for oid, field_id, rcid, filterid in zip(oids, parts["field_id"], parts["rcid"],
                                             parts["filterid"]):
        if int(filterid) not in _FILTER_OF_ID:
            continue
        ccd_id, qid = int(rcid) // 4 + 1, int(rcid) % 4 + 1
        part = part_key(int(field_id), _FILTER_OF_ID[int(filterid)], ccd_id, qid)
        where = _oid_pixels(ctx, store, part)
        if oid in where.index:
            pixels[oid] = int(where.loc[oid])
    ids = sorted(pixels)
    objects = _read(_pixel_files(store, "objects", pixels.values()), ids) if ids else pd.DataFrame()
    dets = _read(_pixel_files(store, "detections", pixels.values()), ids) if ids else pd.DataFrame()
    if not len(objects):
        objects = pd.DataFrame(columns=["oid", "ra", "dec"])
    if not len(dets):
        dets = pd.DataFrame(columns=["oid", "pid"])
    return _finish(ctx, principal, objects, dets, detections, True)
