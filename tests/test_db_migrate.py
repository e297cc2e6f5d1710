"""Schema upgrades (``zsds db upgrade``, zsds.db.migrate) on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, insert, select, text, update
from typer.testing import CliRunner

from zsds.db import ops, schema as s
from zsds.db.migrate import SchemaUpgradeError, plan_upgrade, stored_version, upgrade

from dbfixtures import db_url  # noqa: F401  (fixture)


@pytest.fixture
def bare_engine(db_url):  # noqa: F811
    """An engine on an empty database (no tables)."""
    eng = ops.make_engine(db_url)
    yield eng
    eng.dispose()


def _exposure():
    return dict(expid=7, night="20261121", filefracday="20261121151041", obsjd=2461366.13,
                imgtype="object", filter_code="zr", filterid=2, field_id=655, programid=1,
                exptime=30.0)


def test_upgrade_of_an_empty_database_creates_everything_once(bare_engine):
    plan = upgrade(bare_engine)
    assert any(st.startswith("CREATE TABLE exposures") for st in plan.statements)
    assert set(s.metadata.tables) <= set(inspect(bare_engine).get_table_names())
    assert stored_version(bare_engine) == s.SCHEMA_VERSION
    again = upgrade(bare_engine)
    assert again.up_to_date and again.statements == []


def test_upgrade_adds_missing_table_column_and_index_and_keeps_rows(bare_engine):
    ops.init_db(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(insert(s.exposures).values(**_exposure()))
        # the database of an older zsds: no alerts table, no science_images.seconds column,
        # no index on objects.dec
        conn.execute(text("DROP TABLE alerts"))
        conn.execute(text("ALTER TABLE science_images DROP COLUMN seconds"))
        conn.execute(text("DROP INDEX ix_objects_dec"))
    plan = plan_upgrade(bare_engine)
    heads = sorted(" ".join(st.split()[:3]) for st in plan.statements)
    assert heads == ["ALTER TABLE science_images", "CREATE INDEX ix_objects_dec",
                     "CREATE TABLE alerts"]
    assert any(st.startswith("ALTER TABLE science_images ADD COLUMN seconds ")
               for st in plan.statements)
    assert upgrade(bare_engine).statements == plan.statements
    insp = inspect(bare_engine)
    assert "alerts" in insp.get_table_names()
    assert "seconds" in {c["name"] for c in insp.get_columns("science_images")}
    assert "ix_objects_dec" in {ix["name"] for ix in insp.get_indexes("objects")}
    with bare_engine.connect() as conn:
        assert conn.execute(select(s.exposures.c.expid)).scalars().all() == [7]
    assert upgrade(bare_engine).up_to_date


def test_upgrade_refuses_a_newer_database(bare_engine):
    ops.init_db(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(update(s.schema_info).where(s.schema_info.c.key == "schema_version")
                     .values(value="99"))
    with pytest.raises(SchemaUpgradeError, match="schema version 99, newer than this zsds"):
        upgrade(bare_engine)


def test_upgrade_refuses_a_not_null_column_without_default(bare_engine):
    ops.init_db(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(text("ALTER TABLE calibrations DROP COLUMN n_frames"))
    with pytest.raises(SchemaUpgradeError, match="calibrations.n_frames is NOT NULL"):
        upgrade(bare_engine, dry_run=True)


def test_cli_dry_run_then_upgrade(db_url, tmp_path, monkeypatch):  # noqa: F811
    from zsds.cli import app

    monkeypatch.setenv("ZSDS__ARCHIVE__ROOT", str(tmp_path))
    monkeypatch.setenv("ZSDS__DATABASE__URL", db_url)
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "upgrade", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "CREATE TABLE schema_info" in dry.stdout and "would apply" in dry.stderr
    eng = ops.make_engine(db_url)
    try:
        assert stored_version(eng) is None
        done = runner.invoke(app, ["db", "upgrade"])
        assert done.exit_code == 0 and "applied" in done.stderr
        assert stored_version(eng) == s.SCHEMA_VERSION
        again = runner.invoke(app, ["db", "upgrade"])
        assert again.exit_code == 0 and "up to date" in again.stderr and again.stdout == ""
    finally:
        eng.dispose()


def test_schema_1_counters_become_block_0_and_naming_continues(bare_engine):
    """1 -> 2: per-year objectId counters become block 0 of the per-block counters."""
    from zsds.alerts.objects import BLOCK_SIZE, _next_name, object_name

    ops.init_db(bare_engine)
    with bare_engine.begin() as conn:  # rebuild the schema-1 table with one counter
        conn.execute(text("DROP TABLE object_counters"))
        conn.execute(text("CREATE TABLE object_counters (year INTEGER PRIMARY KEY, "
                          "next_index BIGINT NOT NULL)"))
        conn.execute(text("INSERT INTO object_counters VALUES (2026, 17)"))
        conn.execute(update(s.schema_info).where(s.schema_info.c.key == "schema_version")
                     .values(value="1"))
    plan = plan_upgrade(bare_engine)
    assert not plan.up_to_date and "object_counters" in plan.statements[0]
    upgrade(bare_engine)
    assert stored_version(bare_engine) == s.SCHEMA_VERSION
    with bare_engine.begin() as conn:
        assert conn.execute(select(s.object_counters)).all() == [(2026, 0, 17)]
        assert _next_name(conn, 2026, 0) == object_name(2026, 17)  # continues the old names
        assert _next_name(conn, 2026, 5) == object_name(2026, 5 * BLOCK_SIZE)
    assert upgrade(bare_engine).up_to_date
