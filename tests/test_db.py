"""The operations database, on SQLite and PostgreSQL (see dbfixtures.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from zsds.db import ops, schema as s
from zsds.errors import CalibrationNotFoundError

from dbfixtures import config, db_url, engine  # noqa: F401  (fixtures)


def _exposure(expid=1001, **kw):
    row = dict(expid=expid, night="20200101", filefracday="20200101200000", obsjd=2458849.7,
               imgtype="bias", filter_code="bi", filterid=2, field_id=0, programid=1,
               exptime=0.0, airmass=1.2, ra=10.0, dec=20.0)
    row.update(kw)
    return row


def _raw(expid=1001, ccd_id=1, sha="a" * 64, name=None):
    return dict(expid=expid, ccd_id=ccd_id, filename=name or f"f{expid}_c{ccd_id:02d}.fits.fz",
                path=f"raw/x/f{expid}_c{ccd_id}", sha256=sha, size_bytes=100,
                night="20200101", imgtype="bias", filter_code="bi", status="ingested")


def _quads(expid=1001, ccd_id=1):
    return [dict(expid=expid, ccd_id=ccd_id, qid=q, rcid=q - 1, nx=60, ny=64, n_overscan=30,
                 gain=6.0, read_noise=9.0, saturate=57000.0, bias_level=470.0,
                 bias_row_range=3.0, overscan_noise=1.5, saturated_fraction=0.0,
                 median_counts=0.1, status="raw") for q in (1, 2, 3, 4)]


def _count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_init_db_is_idempotent_and_creates_all_tables(engine):
    ops.init_db(engine)
    names = set(inspect(engine).get_table_names())
    assert {"exposures", "raw_files", "quadrant_images", "quarantine", "calibrations",
            "processing", "reference_images", "objects", "candidates", "alerts"} <= names
    assert _count(engine, s.schema_info) == 1


def test_register_new_same_conflict(engine):
    r1 = ops.register_raw_file(engine, _exposure(), _raw(), _quads())
    assert r1.status == "new"
    before = ops.table_snapshot(engine)
    r2 = ops.register_raw_file(engine, _exposure(), _raw(), _quads())
    assert r2.status == "same" and r2.raw_file_id == r1.raw_file_id
    r3 = ops.register_raw_file(engine, _exposure(), _raw(sha="b" * 64, name="other.fits.fz"),
                               _quads())
    assert r3.status == "conflict" and "different content" in r3.message
    assert ops.table_snapshot(engine) == before
    assert _count(engine, s.quadrant_images) == 4


def test_second_ccd_of_exposure_shares_exposure_row(engine):
    ops.register_raw_file(engine, _exposure(), _raw(ccd_id=1), _quads(ccd_id=1))
    assert ops.register_raw_file(engine, _exposure(), _raw(ccd_id=2),
                                 _quads(ccd_id=2)).status == "new"
    bad = ops.register_raw_file(engine, _exposure(obsjd=2458850.7), _raw(ccd_id=3),
                                _quads(ccd_id=3))
    assert bad.status == "conflict" and "obsjd" in bad.message
    assert _count(engine, s.exposures) == 1 and _count(engine, s.raw_files) == 2


def test_registration_is_one_transaction(engine):
    quads = _quads()
    del quads[3]["nx"]  # NOT NULL violated by the last statement of the transaction
    quads[3]["nx"] = None
    with pytest.raises(IntegrityError):
        ops.register_raw_file(engine, _exposure(), _raw(), quads)
    assert _count(engine, s.exposures) == 0
    assert _count(engine, s.raw_files) == 0
    assert _count(engine, s.quadrant_images) == 0
    assert ops.register_raw_file(engine, _exposure(), _raw(), _quads()).status == "new"


def test_unique_constraints(engine):
    ops.register_raw_file(engine, _exposure(), _raw(), _quads())
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(s.exposures).values(**_exposure()))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        row = dict(_quads()[0], raw_file_id=1)
        conn.execute(insert(s.quadrant_images).values(**row))


def test_quarantine_record_is_idempotent(engine):
    kw = dict(filename="x.fits.fz", sha256="c" * 64, source_path="/in/x.fits.fz",
              quarantine_path="quarantine/20200101/x.fits.fz", reason="HDU 0: missing EXPID")
    assert ops.record_quarantine(engine, **kw) is True
    assert ops.record_quarantine(engine, **kw) is False
    assert _count(engine, s.quarantine) == 1


def _cal(night, mid_jd, **kw):
    row = dict(caltype="bias", night=night, filter_code="OO", ccd_id=1, qid=2,
               path=f"cal/{night}/bias.fits", unc_path=None, log_path=None, sha256="d" * 64,
               n_frames=10, mid_jd=mid_jd, valid_from_jd=mid_jd - 15, valid_to_jd=mid_jd + 15,
               status="valid", qa={"rms": 1.0})
    row.update(kw)
    return row


def test_calibration_register_and_nearest_lookup(engine):
    assert ops.register_calibration(engine, _cal("20200101", 2458849.7)) == "new"
    assert ops.register_calibration(engine, _cal("20200101", 2458849.7)) == "same"
    assert ops.register_calibration(engine, _cal("20200101", 2458849.7, n_frames=9)) == \
        "updated"
    ops.register_calibration(engine, _cal("20200111", 2458859.7))
    ops.register_calibration(engine, _cal("20200106", 2458854.7, status="bad"))
    with engine.connect() as conn:
        assert ops.find_calibration(conn, "bias", 1, 2, "zr", "20200103")["night"] == "20200101"
        assert ops.find_calibration(conn, "bias", 1, 2, None, 2458858.0)["night"] == "20200111"
    assert ops.find_calibration(engine, "bias", 1, 2, "zg", "20200107")["night"] == "20200111"


def test_calibration_not_found_names_everything(engine):
    ops.register_calibration(engine, _cal("20200101", 2458849.7))
    with pytest.raises(CalibrationNotFoundError) as err:
        ops.find_calibration(engine, "hifreqflat", 3, 4, "zg", "20200101")
    msg = str(err.value)
    assert all(t in msg for t in ("hifreqflat", "20200101", "CCD_ID=3", "qid=4", "zg"))
    with pytest.raises(CalibrationNotFoundError):  # outside the validity interval
        ops.find_calibration(engine, "bias", 1, 2, None, "20200301")


def test_later_stage_tables_accept_rows(engine):
    with engine.begin() as conn:
        conn.execute(insert(s.objects).values(object_id="ZTF20aaaaaaa", ra=1.0, dec=2.0,
                                              ndet=1))
        conn.execute(insert(s.candidates).values(candid=123456789012345678, pid=1, expid=1,
                                                 ccd_id=1, qid=1, object_id="ZTF20aaaaaaa",
                                                 jd=2458849.7, ra=1.0, dec=2.0,
                                                 isdiffpos=True, status="new"))
        conn.execute(insert(s.alerts).values(candid=123456789012345678,
                                             object_id="ZTF20aaaaaaa", status="pending"))
        conn.execute(insert(s.reference_images).values(field_id=655, filter_code="zr",
                                                       ccd_id=1, qid=1, version=1,
                                                       path="ref/x", n_frames=15))
        conn.execute(insert(s.processing).values(stage="sci", expid=1, ccd_id=1, qid=1,
                                                 status="done", attempts=1))
    with pytest.raises(IntegrityError), engine.begin() as conn:  # FK to candidates
        conn.execute(insert(s.alerts).values(candid=1, object_id="x", status="pending"))
    assert _count(engine, s.alerts) == 1


def test_database_url_from_config(config, db_url):
    assert config.database_url == db_url
    eng = ops.engine_from_config(config)
    assert "raw_files" in inspect(eng).get_table_names()
    eng.dispose()
