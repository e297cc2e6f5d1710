"""Moving objects: known-object tagging, tracklets, linking, orbit fits and MPC export.

Public entry point :func:`link_moving_objects`. The steps:

1. candidates of the requested nights (``YYYYMMDD``, UTC date as ZTF labels nights) ..... here
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

__all__ = ["link_moving_objects", "night_labels", "tracks_table", "tracks_dir"]

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
        ``fid``, ``field``, ``pid``; streak columns ``length``, ``pa`` optional). Required
        with a configuration until the subtraction stage writes candidates to the archive.
    orbits : pandas.DataFrame or path, optional
        Known-asteroid orbit file; tagged candidates are not linked.
    exposures : pandas.DataFrame, optional
        Exposure circles for :func:`zsds.core.known_objects.predict_positions`; derived
        from the candidates when absent.
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
    if source is None:
        raise InputDataError("candidates", "no candidate table given (--candidates)")
    nights = [str(n) for n in nights]
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
