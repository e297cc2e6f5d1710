"""Matching kernels for lightcurves: epochal detections to objects, and object IDs.

Pure functions on arrays (no I/O, no Dask); thread-safe, as they keep no state.

Object IDs follow the ZTF DR convention of one object per field, readout channel (``rcid``)
and filter, encoded as an int64::

    oid = field_id * 10**12 + rcid * 10**10 + filterid * 10**9 + running

``running`` is the 1-based row number of the source in the reference-image catalogue
(``refpsfcat``, deterministic order), or, for sources seen only in epochal images,
``EPOCHAL_OFFSET + n`` with ``n`` assigned in a deterministic order of position (declination,
then right ascension, rounded to 0.1") when the source is first seen. Once assigned, IDs are
kept in the objects table and reused: re-runs and incremental updates never renumber.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["EPOCHAL_OFFSET", "FILTER_IDS", "make_oid", "split_oid", "rcid_of",
           "unit_vectors", "match_epoch", "group_orphans"]

#: First running number of objects seen only in epochal images.
EPOCHAL_OFFSET = 500_000_000
#: ZTF filter IDs.
FILTER_IDS = {"zg": 1, "zr": 2, "zi": 3}

_ARCSEC = np.pi / (180.0 * 3600.0)


def rcid_of(ccd_id: int, qid: int) -> int:
    """ZTF readout-channel ID, ``4 (ccd_id - 1) + qid - 1`` (0..63)."""
    return 4 * (int(ccd_id) - 1) + int(qid) - 1


def make_oid(field_id: int, ccd_id: int, qid: int, filter_code: str, running) -> np.ndarray:
    """Object IDs (int64) of running numbers in one field/CCD/quadrant/filter.

    Examples
    --------
    >>> int(make_oid(655, 13, 3, "zr", 7))
    655500000000007
    """
    running = np.asarray(running, dtype=np.int64)
    if np.any((running < 1) | (running >= 10**9)):
        raise ValueError("running numbers must lie in 1 .. 10**9 - 1")
    base = (int(field_id) * 10**12 + rcid_of(ccd_id, qid) * 10**10
            + FILTER_IDS[filter_code] * 10**9)
    return np.int64(base) + running


def split_oid(oid) -> dict[str, np.ndarray]:
    """The parts of object IDs: ``field_id, rcid, filterid, running``."""
    oid = np.asarray(oid, dtype=np.int64)
    return {"field_id": oid // 10**12, "rcid": (oid // 10**10) % 100,
            "filterid": (oid // 10**9) % 10, "running": oid % 10**9}


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors, shape (N, 3), of sky positions in degrees."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(0.5 * radius_arcsec * _ARCSEC)


def match_epoch(obj_ra, obj_dec, det_ra, det_dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest match of one epoch's detections to objects.

    Each detection takes its nearest object within ``radius_arcsec``; when several detections
    claim one object, the nearest keeps it and the others stay unmatched.

    Returns
    -------
    index : ndarray of int64, shape (n_det,)
        Row of the matched object, -1 if none.
    sep_arcsec : ndarray of float, shape (n_det,)
        Separation from the matched object (NaN if none).
    """
    n_det = len(det_ra)
    index = np.full(n_det, -1, dtype=np.int64)
    sep = np.full(n_det, np.nan)
    if n_det == 0 or len(obj_ra) == 0:
        return index, sep
    tree = cKDTree(unit_vectors(obj_ra, obj_dec))
    dist, near = tree.query(unit_vectors(det_ra, det_dec), k=1,
                            distance_upper_bound=_chord(radius_arcsec))
    ok = np.isfinite(dist)
    order = np.lexsort((np.arange(n_det)[ok], dist[ok]))   # nearest first, ties by row
    cand, cand_obj = np.flatnonzero(ok)[order], near[ok][order]
    _, first = np.unique(cand_obj, return_index=True)
    winners = cand[first]
    index[winners] = near[winners]
    sep[winners] = 2.0 * np.arcsin(0.5 * dist[winners]) / _ARCSEC
    return index, sep


def group_orphans(ra, dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group unmatched detections (of any epochs) into new objects, friends-of-friends.

    Returns
    -------
    group : ndarray of int64, shape (n,)
        Group of each detection, numbered 0.. in the deterministic order of the group
        centres (declination, then right ascension, each rounded to 0.1 arcsec).
    ra_c, dec_c : ndarray, shape (n_groups,)
        Mean position of each group, degrees.
    """
    n = len(ra)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    vec = unit_vectors(ra, dec)
    pairs = cKDTree(vec).query_pairs(_chord(radius_arcsec), output_type="ndarray")
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    n_groups, label = connected_components(graph, directed=False)
    mean = np.zeros((n_groups, 3))
    np.add.at(mean, label, vec)
    mean /= np.linalg.norm(mean, axis=1)[:, None]
    ra_c = np.degrees(np.arctan2(mean[:, 1], mean[:, 0])) % 360.0
    dec_c = np.degrees(np.arcsin(np.clip(mean[:, 2], -1, 1)))
    key_dec = np.round(dec_c * 36000.0).astype(np.int64)
    key_ra = np.round(ra_c * 36000.0).astype(np.int64)
    order = np.lexsort((key_ra, key_dec))
    rank = np.empty(n_groups, np.int64)
    rank[order] = np.arange(n_groups)
    return rank[label], ra_c[order], dec_c[order]
