"""Database fixtures shared by the operations tests: every DB test runs on SQLite and on
PostgreSQL (``$ZSDS_TEST_POSTGRES_URL``, written by ``.ci/services`` into
``.ci/services.env``). Without that variable the PostgreSQL cases are skipped, except under CI
(``$CI`` set), where they fail: CI never skips silently. Each PostgreSQL test gets a fresh
schema, dropped afterwards."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from zsds.config import load_config
from zsds.db import ops

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_url() -> str:
    url = os.environ.get("ZSDS_TEST_POSTGRES_URL")
    if not url:
        msg = ("ZSDS_TEST_POSTGRES_URL is not set (start PostgreSQL with .ci/services and "
               "source .ci/services.env)")
        if os.environ.get("CI"):
            pytest.fail(msg + " -- required under CI")
        pytest.skip(msg)
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A database URL with an empty database: SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ops.sqlite'}"
        return
    base = _pg_url()
    schema = f"zsds_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    eng = ops.init_db(ops.make_engine(db_url))
    yield eng
    eng.dispose()


@pytest.fixture
def config(tmp_path, db_url):
    """A configuration with its own archive root and the test database."""
    return load_config(environ={}, overrides={"archive": {"root": str(tmp_path / "archive")},
                                              "database": {"url": db_url}})
