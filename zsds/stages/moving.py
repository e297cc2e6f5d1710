"""Moving objects: known-object tagging, tracklets, linking, orbit fits and MPC export.

Public entry point :func:`link_moving_objects`. The steps:

1. candidates and streaks of the requested nights (``YYYYMMDD``, UTC date as ZTF labels
   nights): a given table, or the operations database (:func:`load_detections`) ...... here
2. known objects: predicted positions at every exposure, tagging within 5 arcsec;
   tagged candidates take no part in the linking ................ ``core.known_objects``
3. per night, one Dask task: stationary sources removed, intra-night tracklets ......
   ``core.tracklets``
4. HelioLinC-style linking across the nights ................... ``core.linking``
5. orbit fits, track QA, conflicts, free detections and streaks joined ... ``core.linking``
   / ``core.orbitfit``
6. ``moving/<last night>/tracks.parquet`` and ``tracks_mpc.txt`` under the archive root
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.time import Time

from ..core import known_objects, linking, orbitfit, tracklets as trk
from ..errors import InputDataError, NoWorkFound
from ..io import mpc

__all__ = ["link_moving_objects", "night_labels", "tracks_table", "tracks_dir",
           "load_detections", "on_streaks"]

log = logging.getLogger(__name__)

#: Prefix of the temporary designations of linked tracks (7 characters with the number).
TEMP_PREFIX = "ZM"


def night_labels(jd) -> np.ndarray:
    """``YYYYMMDD`` UTC date of each JD (ZTF's night label, ``io.paths.night_of_jd``)."""
    jd = np.asarray(jd, dtype=float)
    if jd.size == 0:
        return np.array([], dtype=object)
    iso = Time(jd, format="jd", scale="utc").to_value("iso", subfmt="date")
    return np.char.replace(np.asarray(iso, dtype=str), "-", "").astype(object)


def tracks_dir(root, last_night: str) -> Path:
    """``<archive root>/moving/<last night>``."""
    return Path(root) / "moving" / str(last_night)


def _exposures_from_candidates(cands: pd.DataFrame) -> pd.DataFrame:
    """Exposure circles (centre, radius) spanned by each exposure's candidates."""
    rows = []
    for jd, g in cands.groupby("jd"):
        ra0, dec0 = float(np.median(g["ra"])), float(np.median(g["dec"]))
        sep = known_objects.angular_separation(ra0, dec0, g["ra"], g["dec"])
        rows.append({"expid": int(g["pid"].iloc[0]) if "pid" in g else len(rows), "jd": jd,
                     "ra": ra0, "dec": dec0, "radius_deg": float(np.max(sep)) + 0.05})
    return pd.DataFrame(rows, columns=list(known_objects.EXPOSURE_COLUMNS))


def _tag_known(cands, orbits, exposures) -> pd.DataFrame:
    if orbits is None or len(cands) == 0:
        return pd.DataFrame({"ssdistnr": np.float32(np.nan), "ssmagnr": np.float32(np.nan),
                             "ssnamenr": None}, index=cands.index)
    exp = exposures if exposures is not None else _exposures_from_candidates(cands)
    pred = known_objects.predict_positions(orbits, exp)
    return known_objects.tag_candidates(cands, pred)


def _night_tracklets(cands: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Tracklets of one night (``rows`` relative to `cands`) and the stationary flags."""
    stationary = trk.flag_stationary(cands)
    return trk.build_tracklets(cands, stationary=stationary), stationary


def _all_tracklets(cands: pd.DataFrame, client) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-night tracklets (one Dask task per night when `client` is given), global rows."""
    labels = cands["night"].to_numpy()
    groups = [np.flatnonzero(labels == n) for n in np.unique(labels)]
    parts = [cands.iloc[g].reset_index(drop=True) for g in groups]
    if client is not None:
        results = client.gather([client.submit(_night_tracklets, p, pure=False) for p in parts])
    else:
        results = [_night_tracklets(p) for p in parts]
    stationary = np.zeros(len(cands), dtype=bool)
    tables = []
    for g, (table, flags) in zip(groups, results):
        stationary[g] = flags
        table = table.copy()
        table["rows"] = [g[r] for r in table["rows"]]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else trk.build_tracklets(cands.iloc[:0])
    out["tracklet_id"] = np.arange(len(out), dtype=np.int64)
    return out, stationary


def tracks_table(tracks: list[dict], cands: pd.DataFrame, first_id: int = 1) -> pd.DataFrame:
    """One row per track: members, orbit (state and elements), residuals and QA numbers."""
    rows = []
    streak = cands["length"].notna().to_numpy() if "length" in cands else np.zeros(len(cands),
                                                                                     bool)
    for k, t in enumerate(tracks):
        fit, r = t["fit"], t["rows"]
        jd = cands["jd"].to_numpy()[r]
        rows.append({
            "track_id": first_id + k, "designation": f"{TEMP_PREFIX}{first_id + k:05d}",
            "n_obs": int(r.size), "n_nights": int(np.unique(cands["night"].to_numpy()[r]).size),
            "n_streaks": int(streak[r].sum()),
            "candids": cands["candid"].to_numpy()[r].astype(np.int64).tolist(),
            "jd_first": float(jd.min()), "jd_last": float(jd.max()),
            "epoch_mjd": fit.epoch_mjd, **{k2: fit.elements[k2] for k2 in
                                           ("a", "e", "i", "node", "peri", "M")},
            **dict(zip(("x", "y", "z", "vx", "vy", "vz"), map(float, fit.state))),
            "rms_arcsec": fit.rms_arcsec, "max_resid_arcsec": fit.max_resid_arcsec,
            "resid_ra": fit.resid_ra.tolist(), "resid_dec": fit.resid_dec.tolist(),
            "hyp_r": float(t["r"]), "hyp_rdot": float(t["rdot"])})
    return pd.DataFrame(rows)


def _read_table(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise InputDataError(str(path), "file not found")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write(table: pd.DataFrame, cands: pd.DataFrame, root, last_night: str) -> None:
    out = tracks_dir(root, last_night)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "tracks.parquet", index=False)
    by_candid = cands.set_index("candid")
    obs = []
    for t in table.itertuples(index=False):
        o = by_candid.loc[list(t.candids), ["jd", "ra", "dec"] +
                          [c for c in ("magpsf", "fid") if c in cands]].reset_index()
        o["designation"] = t.designation
        obs.append(o)
    mpc.write_observations(pd.concat(obs, ignore_index=True) if obs else
                           pd.DataFrame(columns=["designation", "jd", "ra", "dec"]),
                           out / "tracks_mpc.txt")
    log.info("wrote %d tracks to %s", len(table), out)


# ---------------------------------------------------------------------------------------
# detections from the operations database
# ---------------------------------------------------------------------------------------
def _night_jd_range(nights) -> tuple[float, float]:
    """JD (UTC) from the start of the first night's date to the end of the last one's."""
    dates = sorted(f"{n[:4]}-{n[4:6]}-{n[6:]}" for n in nights)
    t = Time([dates[0], dates[-1]], format="iso", scale="utc").jd
    return float(t[0]) - 0.01, float(t[1]) + 1.01


def _query(engine, stmt) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _db_candidates(engine, jd0, jd1) -> pd.DataFrame:
    from sqlalchemy import select

    from ..db import schema as s

    c, e = s.candidates.c, s.exposures.c
    stmt = (select(c.candid, c.pid, c.expid, c.ccd_id, c.qid, c.jd.label("obsjd"), c.ra, c.dec,
                   c.magpsf, c.sigmapsf, c.rb, c.fid, c.programid, c.isdiffpos,
                   e.exptime, e.field_id.label("field"))
            .join(s.exposures, e.expid == c.expid)
            .where(c.jd >= jd0, c.jd < jd1, c.isdiffpos.is_(True)))
    df = _query(engine, stmt)
    df["source"] = "candidate"
    return df


def _db_streaks(engine, jd0, jd1) -> pd.DataFrame:
    from sqlalchemy import select

    from ..db import schema as s

    c, e = s.streaks.c, s.exposures.c
    stmt = (select(c.streakid.label("candid"), c.pid, c.expid, c.ccd_id, c.qid,
                   c.jd.label("obsjd"), c.ra, c.dec, c.mag.label("magpsf"),
                   c.sigmag.label("sigmapsf"), c.fid, c.programid, c.isdiffpos, c.ra1, c.dec1,
                   c.ra2, c.dec2, c.length_arcsec.label("length"), c.pa_deg.label("pa"),
                   e.exptime, c.field)
            .join(s.exposures, e.expid == c.expid)
            .where(c.jd >= jd0, c.jd < jd1, c.isdiffpos.is_(True)))
    df = _query(engine, stmt)
    df["rb"] = np.nan
    df["source"] = "streak"
    return df


def on_streaks(points: pd.DataFrame, streaks: pd.DataFrame,
               tol_arcsec: float = 3.0) -> np.ndarray:
    """True for point detections lying on a streak of the same quadrant image (``pid``).

    A trail is also found, in pieces, by the point-source detection; those pieces would
    make false tracklets beside the streak. A point is on a streak when its distance to
    the segment ``(ra1, dec1)``-``(ra2, dec2)`` is at most `tol_arcsec`.

    Parameters
    ----------
    points : pandas.DataFrame
        ``pid``, ``ra``, ``dec`` (deg).
    streaks : pandas.DataFrame
        ``pid``, ``ra``, ``dec`` (centre), ``ra1``, ``dec1``, ``ra2``, ``dec2``.
    tol_arcsec : float

    Returns
    -------
    ndarray of bool, one per point.
    """
    out = np.zeros(len(points), dtype=bool)
    if len(points) == 0 or len(streaks) == 0:
        return out
    pid = points["pid"].to_numpy()
    for spid, group in streaks.groupby("pid"):
        rows = np.flatnonzero(pid == spid)
        if rows.size == 0:
            continue
        for st in group.itertuples(index=False):
            x, y = trk.tangent_plane(points["ra"].to_numpy()[rows],
                                     points["dec"].to_numpy()[rows], st.ra, st.dec)
            x1, y1 = trk.tangent_plane(st.ra1, st.dec1, st.ra, st.dec)
            x2, y2 = trk.tangent_plane(st.ra2, st.dec2, st.ra, st.dec)
            dx, dy = x2 - x1, y2 - y1
            t = np.clip(((x - x1) * dx + (y - y1) * dy) / max(dx * dx + dy * dy, 1e-18), 0, 1)
            d = np.hypot(x - (x1 + t * dx), y - (y1 + t * dy)) * 3600.0
            out[rows] |= d <= tol_arcsec
    return out


def load_detections(config, nights) -> pd.DataFrame:
    """Positive candidates and streaks of the nights from the operations database.

    Parameters
    ----------
    config : ZsdsConfig
    nights : sequence of str
        ``YYYYMMDD``.

    Returns
    -------
    pandas.DataFrame
        One row per detection: ``candid`` (the streak's ``streakid`` for streaks), ``jd``
        (mid-exposure, JD UTC: the database's exposure start plus half the exposure time),
        ``obsjd`` (exposure start), ``ra``, ``dec``, ``magpsf``, ``sigmapsf``, ``fid``,
        ``field``, ``rcid``, ``pid``, ``expid``, ``isdiffpos`` ('t'), ``rb`` (NaN for
        streaks), ``source`` ('candidate' or 'streak'); streak columns ``ra1``, ``dec1``,
        ``ra2``, ``dec2``, ``length`` (arcsec), ``pa`` (deg E of N), NaN for points.
        Negative detections (``isdiffpos`` 'f': flux gone from the reference) are left
        out, and so are point candidates lying on a streak (:func:`on_streaks`).
    """
    from ..db.ops import engine_from_config

    engine = engine_from_config(config)
    jd0, jd1 = _night_jd_range([str(n) for n in nights])
    cands, streaks = _db_candidates(engine, jd0, jd1), _db_streaks(engine, jd0, jd1)
    cands = cands.loc[~on_streaks(cands, streaks)]
    out = pd.concat([d for d in (cands, streaks) if len(d)], ignore_index=True) \
        if len(cands) or len(streaks) else cands
    for col in ("ra1", "dec1", "ra2", "dec2", "length", "pa"):
        if col not in out:
            out[col] = np.nan
    out["jd"] = out["obsjd"].astype(float) + out["exptime"].astype(float) / 172800.0
    out["rcid"] = 4 * (out["ccd_id"].astype(int) - 1) + out["qid"].astype(int) - 1
    out["isdiffpos"] = "t"
    out["candid"] = out["candid"].astype(np.int64)
    return out.sort_values(["jd", "candid"], ignore_index=True)


def _db_exposures(config, detections: pd.DataFrame) -> pd.DataFrame | None:
    """Quadrant circles of the detections' images (``science_images``), for the ephemerides."""
    from sqlalchemy import select

    from ..db import schema as s
    from ..db.ops import engine_from_config

    if detections.empty:
        return None
    c, e = s.science_images.c, s.exposures.c
    expids = sorted({int(v) for v in detections["expid"]})
    stmt = (select(c.pid.label("expid"), c.obsjd, c.ra, c.dec, c.radius_deg, e.exptime)
            .join(s.exposures, e.expid == c.expid).where(c.expid.in_(expids)))
    df = _query(engine_from_config(config), stmt).dropna(subset=["ra", "dec", "radius_deg"])
    if df.empty:
        return None
    df["jd"] = df["obsjd"].astype(float) + df["exptime"].astype(float) / 172800.0
    df["radius_deg"] = df["radius_deg"].astype(float) + 0.01
    return df.loc[:, list(known_objects.EXPOSURE_COLUMNS)]


def link_moving_objects(config_or_tables, nights, client=None, *, candidates=None,
                        orbits=None, exposures=None,
                        params: linking.LinkParams = linking.LinkParams(),
                        hypotheses=None, write: bool = True) -> pd.DataFrame:
    """Tag known objects, then link unknown moving objects over the given nights.

    Parameters
    ----------
    config_or_tables : ZsdsConfig or pandas.DataFrame
        A configuration (outputs under ``archive.root``) or directly the candidate table
        (nothing is written).
    nights : sequence of str
        Night labels ``YYYYMMDD`` (UTC date), e.g. three consecutive nights.
    client : distributed.Client, optional
        Per-night tracklet building runs as one task per night on it.
    candidates : pandas.DataFrame or path, optional
        Candidate table (``candid``, ``jd`` (mid-exposure), ``ra``, ``dec``, ``magpsf``,
        ``fid``, ``field``, ``pid``; streak columns ``ra1``, ``dec1``, ``ra2``, ``dec2``,
        ``length``, ``pa`` optional). With a configuration and no table, the candidates
        and streaks of the nights are read from the operations database
        (:func:`load_detections`).
    orbits : pandas.DataFrame or path, optional
        Known-asteroid orbit file; tagged candidates are not linked. Default with a
        configuration: ``moving.orbits_path`` (no tagging when that is empty).
    exposures : pandas.DataFrame, optional
        Exposure circles for :func:`zsds.core.known_objects.predict_positions`; default:
        the quadrant footprints of the database (detections read from it), else circles
        derived from the candidates.
    params : zsds.core.linking.LinkParams
    hypotheses : ndarray, optional
        (r, rdot) grid (:func:`zsds.core.linking.default_hypotheses`).
    write : bool
        Write the products (with a configuration only).

    Returns
    -------
    pandas.DataFrame
        The tracks (:func:`tracks_table`); ``attrs["candidates"]`` holds the selected
        candidates with ``night``, ``ssdistnr``, ``ssmagnr``, ``ssnamenr``, ``stationary``
        and ``track_id`` (0 when unlinked).
    """
    config = None if isinstance(config_or_tables, pd.DataFrame) else config_or_tables
    source = config_or_tables if config is None else candidates
    nights = [str(n) for n in nights]
    if source is None:
        source = load_detections(config, nights)
        if exposures is None:
            exposures = _db_exposures(config, source)
    if orbits is None and config is not None:
        orbits = config.moving.orbits_path
    cands = _read_table(source)
    cands = cands.assign(night=night_labels(cands["jd"].to_numpy()))
    cands = cands.loc[cands["night"].isin(nights)].sort_values("jd", ignore_index=True)
    if cands.empty:
        raise NoWorkFound(f"no candidates on nights {', '.join(nights)}")
    orb = None if orbits is None else _read_table(orbits)
    cands = cands.join(_tag_known(cands, orb, exposures))
    free_mask = cands["ssnamenr"].isna().to_numpy()
    unknown = cands.loc[free_mask].reset_index(drop=True)
    tracks = _link_unknown(unknown, client, params, hypotheses)
    table = tracks_table(tracks, unknown)
    cands["track_id"] = 0
    for t, rec in zip(tracks, table.itertuples(index=False)):
        cands.loc[np.flatnonzero(free_mask)[t["rows"]], "track_id"] = rec.track_id
    cands["stationary"] = False
    cands.loc[free_mask, "stationary"] = unknown["stationary"].to_numpy()
    log.info("nights %s: %d candidates, %d tagged known, %d tracks", ",".join(nights),
             len(cands), int((~free_mask).sum()), len(table))
    if config is not None and write:
        _write(table, unknown, config.archive.root, max(nights))
    table.attrs["candidates"] = cands
    return table


def _link_unknown(unknown: pd.DataFrame, client, params, hypotheses) -> list[dict]:
    """Tracklets, linking and orbit fits of the untagged candidates (adds ``stationary``)."""
    tracklet_table, stationary = _all_tracklets(unknown, client)
    unknown["stationary"] = stationary
    tracklet_table["night"] = tracklet_table["night"].astype(np.int64)
    if tracklet_table.empty:
        return []
    geo_t = orbitfit.observation_geometry(tracklet_table["jd"].to_numpy())
    links = linking.link_tracklets(tracklet_table, geo_t, hypotheses=hypotheses, params=params)
    log.info("%d tracklets, %d candidate links", len(tracklet_table), len(links))
    ujd, geo_index = np.unique(unknown["jd"].to_numpy(), return_inverse=True)
    geo = orbitfit.observation_geometry(ujd)
    return linking.fit_tracks(links, tracklet_table, unknown, geo, geo_index,
                              free=np.flatnonzero(~stationary), params=params)
