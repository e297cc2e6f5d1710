"""Alert packets: official schema 4.02, IDs, objectIds, history, filters, ``alerts show``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import fastavro
import numpy as np
import pytest
from dbfixtures import db_url, engine  # noqa: F401  (fixtures)
from fastavro.validation import validate

from zsds.alerts import ids
from zsds.alerts.filter import FilterError, compile_filter
from zsds.alerts.history import history_for
from zsds.alerts.objects import assign_object_ids, object_name, parse_object_name
from zsds.alerts.packet import (deserialize_alert, make_alert, read_cutout, serialize_alert)
from zsds.alerts.schema import (AlertSchemaError, load_schema_json, parse_alert_schema,
                                validate_alert)
from zsds.db import schema as s

SHARED = Path(__file__).resolve().parents[2] / "shared" / "ztf-alert-schema" / "4.02"
PKG = Path(__file__).resolve().parents[1] / "zsds" / "alerts" / "schema" / "4.02"
JD0 = 2461366.7  # 2026-11-22 UT
OBJID = re.compile(r"^ZTF\d{2}[a-z]{7}$")


def official_schema():
    """The unmodified official schema: leaf files into one registry, then alert.avsc."""
    folder = SHARED if SHARED.is_dir() else PKG
    named = {}
    for n in ("cutout", "candidate", "prv_candidate", "fp_hist"):
        fastavro.parse_schema(json.loads((folder / f"{n}.avsc").read_text()), named_schemas=named)
    return fastavro.parse_schema(json.loads((folder / "alert.avsc").read_text()),
                                 named_schemas=named)


def cand(rng, index=0, jd=JD0, ra=150.0, dec=20.0, pid=None, **kw):
    pid = pid or ids.make_pid("20261122200000", 38)
    c = dict(jd=jd, fid=2, pid=pid, programid=1, index=index, isdiffpos=bool(rng.random() < .8),
             ra=ra, dec=dec, magpsf=float(rng.uniform(16, 20)), sigmapsf=0.05, diffmaglim=20.5,
             rb=float(rng.random()), nbad=int(rng.integers(0, 3)), fwhm=2.2, elong=1.1,
             magdiff=0.02, chipsf=1.2, magap=18.0, sigmagap=0.1, sky=0.3, classtar=0.9,
             sumrat=1.0, nneg=2, scorr=12.5, field=655, rcid=38, xpos=1000.5, ypos=2000.25,
             nid=ids.night_id("20261122"), magzpsci=26.2, expid=20261122200000, extra_zsds=1)
    c["candid"] = ids.make_candid(pid, index)
    c.update(kw)
    return c


def cutouts(rng, header=None):
    return [(rng.normal(0, 10, (63, 63)).astype(np.float32), header) for _ in range(3)]


def fp(jd):
    return dict(field=655, rcid=38, fid=2, pid=ids.make_pid("20261120100000", 38), rfid=7,
                programid=1, jd=jd, forcediffimflux=12.5, forcediffimfluxunc=3.0,
                procstatus="0", ranr=150.0, decnr=20.0, diffmaglim=20.4)


# -- schema ------------------------------------------------------------------------------------
def test_packaged_schema_is_the_official_one_verbatim():
    assert sorted(p.name for p in PKG.glob("*.avsc")) == [
        "alert.avsc", "candidate.avsc", "cutout.avsc", "fp_hist.avsc", "prv_candidate.avsc"]
    if SHARED.is_dir():
        for p in PKG.glob("*.avsc"):
            assert p.read_bytes() == (SHARED / p.name).read_bytes(), p.name
    assert parse_alert_schema()["name"] == "ztf.alert"
    assert load_schema_json("alert")["version"] == "4.02"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_packet_validates_against_the_official_schema(seed):
    rng = np.random.default_rng(seed)
    prv = [dict(jd=JD0 - 3, fid=1, pid=123, programid=1, diffmaglim=20.1, rbversion="none",
                candid=None, isdiffpos=None, ra=None, dec=None, magpsf=None, sigmapsf=None,
                ranr=None, decnr=None)]
    packets = [make_alert(cand(rng, i), cutouts(rng, {"CANDID": i}), prv if i % 2 else [],
                          [fp(JD0 - 2)] if i % 3 else None, object_name(2026, i))
               for i in range(6)]
    schema = official_schema()
    for p in packets:
        assert validate(p, schema, raise_errors=True, strict=True)
        validate_alert(p)
        buf = io.BytesIO()
        fastavro.writer(buf, schema, [p], validator=True)  # strict validation on write
        data = serialize_alert(p, validate=True)
        back = deserialize_alert(data)
        assert back["candid"] == p["candid"] and back["objectId"] == p["objectId"]
        assert back["candidate"]["magpsf"] == pytest.approx(p["candidate"]["magpsf"], rel=1e-6)
        reader = fastavro.reader(io.BytesIO(data))
        assert reader.metadata["avro.codec"] == "null" and len(list(reader)) == 1
    assert packets[1]["prv_candidates"][0]["candid"] is None
    assert packets[0]["prv_candidates"] is None and packets[0]["fp_hists"] is None
    assert packets[1]["fp_hists"][0]["forcediffimflux"] == pytest.approx(12.5)


def test_packet_fields_defaults_and_cutouts():
    rng = np.random.default_rng(5)
    c = cand(rng, 7, isdiffpos=False)
    cuts = cutouts(rng)
    p = make_alert(c, cuts, [], [], "ZTF26aaaaaah")
    k = p["candidate"]
    assert (p["schemavsn"], k["candid"], k["isdiffpos"], k["tblid"]) == ("4.02", c["candid"], "f", 7)
    assert (k["ranr"], k["decnr"], k["ndethist"], k["ncovhist"]) == (c["ra"], c["dec"], 1, 1)
    assert k["rbversion"] == "none" and k["sgmag1"] is None and k["ssnamenr"] is None
    assert p["cutoutDifference"]["fileName"].endswith("_targ_refmsci.fits.gz")
    data, header = read_cutout(p["cutoutScience"])
    assert data.shape == (63, 63) and data.dtype == np.float32
    assert np.array_equal(data, cuts[0][0])
    assert header["BUNIT"] == "DN" and header["BITPIX"] == -32 and len(header) == 6
    # deterministic: the same inputs give the same bytes
    assert serialize_alert(p) == serialize_alert(make_alert(c, cuts, [], [], "ZTF26aaaaaah"))


def test_errors_name_the_field():
    rng = np.random.default_rng(6)
    p = make_alert(cand(rng), cutouts(rng), [], [], "ZTF26aaaaaaa")
    p["candidate"]["magpsf"] = "bright"
    with pytest.raises(AlertSchemaError, match=r"candidate\.magpsf"):
        validate_alert(p)
    with pytest.raises(AlertSchemaError, match=r"candidate\.magpsf"):
        serialize_alert(p)
    bad = cand(rng)
    del bad["sigmapsf"]
    with pytest.raises(AlertSchemaError, match=r"candidate\.sigmapsf"):
        make_alert(bad, cutouts(rng), [], [], "ZTF26aaaaaaa")
    with pytest.raises(AlertSchemaError, match="cutout .*shape"):
        make_alert(cand(rng), [np.zeros((62, 63))] * 3, [], [], "ZTF26aaaaaaa")


# -- identifiers -------------------------------------------------------------------------------
def test_candid_is_deterministic_and_unique():
    assert ids.night_id("20190110") == 739 and ids.night_id("20180418") == 472
    pid = ids.make_pid("20261122200000", 38)
    assert pid == ids.make_pid("20261122200000", 38) == 361220000038
    assert ids.make_candid(pid, 12) == 361220000038000012
    assert ids.split_candid(ids.make_candid(pid, 12)) == (pid, 12)
    cands = {ids.make_candid(ids.make_pid(f"20261122{f:06d}", r), i)
             for f in (200000, 200001, 310000) for r in (0, 1, 63) for i in (0, 1, 999999)}
    assert len(cands) == 27 and max(cands) < 2**63
    for bad in [lambda: ids.make_candid(pid, 10**6), lambda: ids.make_pid("2026112220000", 1),
                lambda: ids.make_pid("20261122200000", 64)]:
        with pytest.raises(ValueError):
            bad()


def test_object_names():
    assert object_name(2026, 0) == "ZTF26aaaaaaa" and object_name(2017, 1) == "ZTF17aaaaaab"
    assert parse_object_name(object_name(2026, 123456)) == (26, 123456)
    with pytest.raises(ValueError):
        parse_object_name("ZTF26AAAAAAA")


def test_object_ids_stable_within_1p5_arcsec_and_idempotent(engine):  # noqa: F811
    rng = np.random.default_rng(7)
    a = cand(rng, 0, ra=150.0, dec=20.0)
    near = cand(rng, 1, jd=JD0 + 1, ra=150.0 + 1.0 / 3600 / np.cos(np.radians(20)), dec=20.0,
                pid=ids.make_pid("20261123200000", 38))
    far = cand(rng, 2, ra=150.0, dec=20.0 + 2.0 / 3600)
    wrap1 = cand(rng, 3, ra=359.9998, dec=-5.0)
    wrap2 = cand(rng, 4, ra=0.0001, dec=-5.0, pid=ids.make_pid("20261122300000", 1))
    first = assign_object_ids(engine, [a, far, wrap1])
    assert all(OBJID.match(o) for o in first) and first[0].startswith("ZTF26")
    assert len(set(first)) == 3
    later = assign_object_ids(engine, [near, wrap2])
    assert later == [first[0], first[2]]  # 1.0" and 0.72" (across RA 0) away: same objects
    assert assign_object_ids(engine, [a, far, wrap1, near, wrap2]) == first + later  # re-run
    with engine.connect() as conn:
        assert conn.execute(s.objects.select()).all().__len__() == 3
        ndet = dict(conn.execute(s.objects.select().with_only_columns(
            s.objects.c.object_id, s.objects.c.ndet)).all())
    assert ndet[first[0]] == 2 and ndet[first[1]] == 1


def test_object_names_do_not_depend_on_the_order_of_quadrants(tmp_path):
    """Names are counted per field-quadrant block: processing two quadrants in either order
    gives the same objectIds (what makes a night reproducible on any cluster)."""
    from zsds.alerts.objects import BLOCK_SIZE, counter_block
    from zsds.db.ops import init_db, make_engine

    rng = np.random.default_rng(3)
    q38 = [cand(rng, i, ra=150.0 + i * 0.01, rcid=38) for i in range(3)]
    q5 = [cand(rng, i, ra=151.0 + i * 0.01, rcid=5, pid=ids.make_pid("20261122200000", 5))
          for i in range(2)]
    names = []
    for order, db in (((q38, q5), "a.sqlite"), ((q5, q38), "b.sqlite")):
        engine = init_db(make_engine(f"sqlite:///{tmp_path / db}"))
        got = {c["candid"]: o for batch in order
               for c, o in zip(batch, assign_object_ids(engine, batch))}
        names.append(got)
    assert names[0] == names[1]
    first38 = parse_object_name(names[0][q38[0]["candid"]])[1]
    assert first38 == counter_block(655, 38) * BLOCK_SIZE
    assert parse_object_name(names[0][q5[1]["candid"]])[1] == counter_block(655, 5) * BLOCK_SIZE + 1


# -- history -----------------------------------------------------------------------------------
def _add_quadrant(conn, expid, jd, diffmaglim, ra=150.0, dec=20.0, half=0.45):
    ffd = f"20261{expid:09d}"[:14]
    conn.execute(s.exposures.insert().values(
        expid=expid, night=ffd[:8], filefracday=ffd, obsjd=jd, imgtype="object",
        filter_code="zr", filterid=2, field_id=655, programid=1, exptime=30.0))
    rid = conn.execute(s.raw_files.insert().values(
        expid=expid, ccd_id=10, filename=f"f{expid}.fits.fz", path="x", sha256="0" * 64,
        size_bytes=1, night=ffd[:8], imgtype="object", filter_code="zr")).inserted_primary_key[0]
    corners = [[ra - half, dec - half], [ra + half, dec - half], [ra + half, dec + half],
               [ra - half, dec + half]]
    conn.execute(s.quadrant_images.insert().values(
        raw_file_id=rid, expid=expid, ccd_id=10, qid=3, rcid=38, nx=3072, ny=3080, n_overscan=30,
        pid=expid, diffmaglim=diffmaglim, ra_center=ra, dec_center=dec, footprint_radius=0.7,
        footprint=json.dumps(corners)))


def test_history_detections_and_upper_limits_in_30_days(engine):  # noqa: F811
    rng = np.random.default_rng(8)
    with engine.begin() as conn:
        for k, (dt, lim) in enumerate([(-40, 20.0), (-20, 20.1), (-10, 20.2), (-5, 20.3),
                                       (-1, 20.4), (0, 20.5)]):
            _add_quadrant(conn, 100 + k, JD0 + dt, lim)
        _add_quadrant(conn, 200, JD0 - 3, 19.9, ra=152.0)  # does not cover the position
    dets = [cand(rng, 0, jd=JD0 - 40, pid=100), cand(rng, 0, jd=JD0 - 10, pid=102),
            cand(rng, 0, jd=JD0 - 5, pid=103, ra=150.0 + 0.5 / 3600),
            cand(rng, 1, jd=JD0 - 5, pid=103, ra=150.01)]  # 34" away: another object
    assign_object_ids(engine, dets)
    with engine.connect() as conn:
        prv = history_for(conn, 150.0, 20.0, JD0)
    kinds = [(round(p["jd"] - JD0), p["candid"] is not None) for p in prv]
    assert kinds == [(-20, False), (-10, True), (-5, True), (-1, False)]
    lim = prv[0]
    assert lim["diffmaglim"] == pytest.approx(20.1)
    assert all(lim[k] is None for k in ("candid", "isdiffpos", "ra", "dec", "magpsf",
                                        "sigmapsf", "ranr", "decnr"))
    assert prv[1]["candid"] == dets[1]["candid"] and prv[1]["magpsf"] == pytest.approx(
        dets[1]["magpsf"], rel=1e-6)
    p = make_alert(cand(rng, 5, pid=105), cutouts(rng), prv, [], "ZTF26aaaaaaa")
    validate(p, official_schema(), raise_errors=True, strict=True)
    assert (p["candidate"]["ndethist"], p["candidate"]["ncovhist"]) == (3, 5)
    assert p["candidate"]["jdstarthist"] == pytest.approx(JD0 - 10)


# -- filters and CLI ---------------------------------------------------------------------------
def test_filter_expressions():
    f = compile_filter("rb >= 0.65 and nbad == 0 and (fwhm <= 5 or not elong < 1.2)"
                       " and abs(magdiff) <= 0.1 and isdiffpos == 't'")
    ok = dict(rb=0.7, nbad=0, fwhm=2.0, elong=1.0, magdiff=-0.05, isdiffpos="t")
    assert f(ok) and not f({**ok, "rb": 0.6}) and not f({**ok, "rb": None})
    assert not f({**ok, "magdiff": 0.2}) and compile_filter(None)({})
    assert compile_filter("magpsf - diffmaglim < -1")(dict(magpsf=18.0, diffmaglim=20.0))
    for bad in ['__import__("os").system("true")', "rb.__class__", "open('x')", "foo > 1",
                "[c for c in 'ab']", "lambda: 1", "rb ** 2 > 0", "(rb := 1)", "rb >= 0.6 and",
                "candidate['rb'] > 0"]:
        with pytest.raises(FilterError):
            compile_filter(bad)


def test_cli_alerts_show(tmp_path):
    import typer
    from typer.testing import CliRunner

    from zsds.cli_alerts import register

    rng = np.random.default_rng(9)
    p = make_alert(cand(rng, 3), cutouts(rng), [], [], "ZTF26aaaaaad")
    f = tmp_path / f"{p['candid']}.avro"
    f.write_bytes(serialize_alert(p))
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["alerts", "show", str(f)])
    assert res.exit_code == 0, res.output
    assert "ZTF26aaaaaad" in res.output and str(p["candid"]) in res.output
    png = f.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
