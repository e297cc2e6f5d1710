"""Moving objects on the pipeline's own products (issue 10): known-asteroid tagging of the
candidates and streaks of the operations database and of the alerts.

The session's processed archive (``processed_archive``, :mod:`zsds.sim.sample`: one quadrant,
night 1 reference, night 2 subtracted, two known main-belt asteroids, one of them on the
quadrant in night 2) is copied and its second night re-run with the orbit file configured
(``moving.orbits_path``), so that the alerts are built with the ``ss*`` fields.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import archive_config
from zsds.core.known_objects import angular_separation

NIGHTS = ["20261121", "20261122"]


@pytest.fixture(scope="module")
def tagged_archive(processed_archive, tmp_path_factory):
    """(config, simulation dir) of a copy of the processed archive, night 2 re-run with orbits."""
    from distributed import LocalCluster

    from zsds.pipeline.night import run_night

    src = processed_archive.archive.root
    sim = src.parent / "incoming"            # zsds.sim.sample layout
    root = tmp_path_factory.mktemp("moving-db") / "archive"
    shutil.copytree(src, root, copy_function=shutil.copyfile)
    shutil.rmtree(root / "alerts" / NIGHTS[1])   # archived alerts are never rewritten
    extra = {"MOVING__ORBITS_PATH": str(sim / "asteroids.csv")}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=":0") as cluster:
        run_config = archive_config(root, sim / "refcat", DASK__CLUSTER=cluster.scheduler_address,
                                    **extra)
        run_night(NIGHTS[1], run_config, progress=False, quads=[3], force=True)
    return archive_config(root, sim / "refcat", **extra), sim


def _truth(sim) -> pd.DataFrame:
    """Ephemerides (mid-exposure) of the known asteroids at every exposure."""
    eph = pd.read_parquet(sim / "truth" / "asteroid_ephemerides.parquet")
    known = pd.read_csv(sim / "asteroids.csv")["designation"]
    return eph.loc[eph["designation"].isin(set(known))]


def _nearest_truth(truth, expid, ra, dec):
    t = truth.loc[truth["expid"] == expid]
    if t.empty:
        return None, np.inf
    sep = angular_separation(ra, dec, t["ra"], t["dec"]) * 3600.0
    k = int(np.argmin(sep))
    return t["designation"].iloc[k], float(sep[k])


def test_candidates_of_known_asteroids_are_tagged_from_the_database(tagged_archive):
    from zsds.stages.moving import link_moving_objects

    config, sim = tagged_archive
    truth = _truth(sim)
    tracks = link_moving_objects(config, NIGHTS, write=False)
    cands = tracks.attrs["candidates"]
    assert set(cands["source"]) <= {"candidate", "streak"} and cands["jd"].gt(cands["obsjd"]).all()
    on_truth = []
    for row in cands.itertuples(index=False):
        name, sep = _nearest_truth(truth, row.expid, row.ra, row.dec)
        if sep < 2.0:
            on_truth.append((name, row.ssnamenr, row.ssdistnr))
        elif sep > 30.0:
            assert pd.isna(row.ssnamenr)                      # nothing else is tagged
    assert len(on_truth) >= 2
    assert all(name == tag and dist < 2.0 for name, tag, dist in on_truth)


def test_alerts_of_known_asteroids_carry_the_ss_fields(tagged_archive):
    from zsds.alerts.archive import iter_archive

    config, sim = tagged_archive
    truth = _truth(sim)
    expid = pd.read_sql(sa.text("select candid, expid from candidates"),
                        sa.create_engine(config.database_url)).set_index("candid")["expid"]
    hits = misses = 0
    for alert in iter_archive(config.archive.root, night=NIGHTS[1]):
        c = alert["candidate"]
        name, sep = _nearest_truth(truth, int(expid[c["candid"]]), c["ra"], c["dec"])
        if sep < 2.0:
            assert c["ssnamenr"] == name and c["ssdistnr"] < 2.0
            assert 14.0 < c["ssmagnr"] < 21.0
            hits += 1
        elif sep > 30.0:
            assert c["ssnamenr"] is None and c["ssdistnr"] is None
            misses += 1
    assert hits >= 1 and misses >= 5
    payloads = pd.read_sql(sa.text("select payload from candidates"),
                           sa.create_engine(config.database_url))["payload"]
    stored = [json.loads(v).get("ssnamenr") for v in payloads]
    assert sum(v is not None for v in stored) == hits         # for later prv_candidates


def test_every_subtracted_image_has_a_streak_product_and_no_false_streak(tagged_archive):
    from zsds.stages.streaks import read_streaks

    config, _ = tagged_archive
    root = config.archive.root
    diffs = sorted(root.glob("sci/2026/1122/*/*_scimrefdiffimg.fits.fz"))
    assert diffs
    for d in diffs:
        product = d.with_name(d.name.replace("scimrefdiffimg.fits.fz", "diffimstreaks.fits"))
        assert len(read_streaks(product)) == 0           # no NEA in this archive
    with sa.create_engine(config.database_url).connect() as conn:
        assert conn.execute(sa.text("select count(*) from streaks")).scalar_one() == 0


def test_a_streak_on_a_known_asteroid_is_loaded_tagged_and_replaces_its_pieces(tagged_archive):
    """A streak registered where a known asteroid is: read back with the candidates, the
    point candidate on it dropped, the streak tagged with the asteroid's name."""
    from zsds.db.ops import engine_from_config
    from zsds.pipeline.night import QuadrantJob
    from zsds.stages.moving import link_moving_objects, load_detections
    from zsds.stages.streaks import register_streaks

    config, sim = tagged_archive
    truth = _truth(sim)
    engine = engine_from_config(config)
    cands = pd.read_sql(sa.text("select c.candid, c.pid, c.expid, c.ra, c.dec, c.jd, c.fid, "
                                "c.programid, e.field_id from candidates c join exposures e "
                                "on e.expid = c.expid"), engine)
    near = [(r, *_nearest_truth(truth, r.expid, r.ra, r.dec)) for r in cands.itertuples()]
    row, name, _ = next((r, n, s) for r, n, s in near if s < 2.0)
    t = truth.loc[(truth["expid"] == row.expid) & (truth["designation"] == name)].iloc[0]
    half = 10.0 / 3600.0                                     # a 20 arcsec trail
    cosd = np.cos(np.radians(t["dec"]))
    rec = {"streakid": row.pid * 10**6 + 900_000, "streak_index": 0, "pid": int(row.pid),
           "expid": int(row.expid), "ccd_id": 13, "qid": 3, "rcid": 50,
           "field": int(row.field_id), "programid": int(row.programid), "fid": int(row.fid),
           "jd": float(row.jd), "ra": float(t["ra"]), "dec": float(t["dec"]),
           "ra1": float(t["ra"] - half / cosd), "dec1": float(t["dec"]),
           "ra2": float(t["ra"] + half / cosd), "dec2": float(t["dec"]), "x1": 1.0, "y1": 1.0,
           "x2": 21.0, "y2": 1.0, "length_px": 19.8, "length_arcsec": 20.0, "pa_deg": 90.0,
           "isdiffpos": True, "flux": 1e4, "flux_err": 100.0, "snr": 100.0, "mag": 18.0,
           "sigmag": 0.01}
    job = QuadrantJob(int(row.expid), 13, 3, "", NIGHTS[1], "", int(row.field_id), "zr",
                      int(row.programid), float(row.jd))
    register_streaks(engine, job, [rec])
    try:
        det = load_detections(config, NIGHTS)
        streak = det.loc[det["source"] == "streak"]
        assert list(streak["candid"]) == [rec["streakid"]]
        assert abs(float(streak["length"].iloc[0]) - 20.0) < 1e-9
        assert row.candid not in set(det["candid"])          # the piece on the trail
        assert det["source"].eq("candidate").sum() >= len(cands) // 2
        tagged = link_moving_objects(config, NIGHTS, write=False).attrs["candidates"]
        s = tagged.loc[tagged["source"] == "streak"].iloc[0]
        assert s["ssnamenr"] == name and s["ssdistnr"] < 1.0
    finally:
        register_streaks(engine, job, [])


def test_moving_link_command_reads_the_database(tagged_archive):
    from typer.testing import CliRunner

    from zsds.cli import app

    config, sim = tagged_archive
    env = {"ZSDS__ARCHIVE__ROOT": str(config.archive.root),
           "ZSDS__REFCAT__PATH": str(config.refcat_path),
           "ZSDS__MOVING__ORBITS_PATH": str(sim / "asteroids.csv")}
    result = CliRunner().invoke(app, ["moving", "link", "--nights", ",".join(NIGHTS), "--serial"],
                                env=env)
    assert result.exit_code == 2, result.output          # two nights: no track, not an error
    m = re.search(r"(\d+) candidates, (\d+) tagged known, 0 tracks", result.output)
    assert m, result.output
    n_cands, n_known = int(m.group(1)), int(m.group(2))
    assert n_cands > 5 and n_known >= 2
    assert (config.archive.root / "moving" / NIGHTS[1] / "tracks_mpc.txt").exists()
