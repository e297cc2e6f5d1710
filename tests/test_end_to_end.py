"""Two simulated nights end to end: calibration, reference, subtraction, alerts over Kafka."""

from __future__ import annotations

import asyncio

import fastavro
import io
import pandas as pd
import pytest
import sqlalchemy as sa

from zsds.alerts.archive import iter_archive
from zsds.alerts.kafka import consume_alerts
from zsds.alerts.schema import parse_alert_schema
from zsds.config import load_config
from zsds.pipeline.night import run_night
from zsds.sim.survey import SimulationSpec, simulate
from zsds.stages.refimg import build_references

from kafkabroker import TansuBroker


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    simulate(SimulationSpec(outdir=root / "in", fields=[655], ccds=[13], quads=[3], nights=2,
                            quad_shape=(520, 512), filters=["zr"], exposures_per_night=4,
                            n_bias=5, n_flat=5, seed=51, n_mba=3, n_nea=0, n_transients=15,
                            seeing_arcsec=2.0))
    broker = TansuBroker()
    broker.start()
    env = {"ZSDS__ARCHIVE__ROOT": str(root / "archive"),
           "ZSDS__REFCAT__PATH": str(root / "in" / "refcat"),
           "ZSDS__DASK__N_WORKERS": "1", "ZSDS__DASK__DASHBOARD_ADDRESS": ":0",
           "ZSDS__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap}
    config = load_config(environ=env)
    first = run_night("20261121", config, incoming=root / "in" / "raw", progress=False, quads=[3])
    refs = build_references(config, min_frames=3)
    second = run_night("20261122", config, incoming=root / "in" / "raw", progress=False, quads=[3])
    yield root, config, broker, first, refs, second
    broker.stop()


def _sql(config, q):
    return pd.read_sql(q, sa.create_engine(config.database_url))


def test_reference_is_built_and_second_night_subtracted(survey):
    root, config, _, first, refs, second = survey
    assert first.count("failed") == 0 and second.count("failed") == 0
    assert len(_sql(config, "select * from reference_images")) == 1
    proc = _sql(config, "select stage, status from processing")
    assert set(proc.stage) == {"calibrate", "subtract", "alerts"}
    assert (proc.status == "done").all()
    assert list((root / "archive" / "sci").rglob("*_scimrefdiffimg.fits.fz"))


def test_alerts_are_archived_valid_and_delivered(survey):
    root, config, broker, *_ = survey
    records = list(iter_archive(root / "archive"))
    cands = _sql(config, "select candid, object_id from candidates")
    archived = [r["candid"] for r in records]
    assert len(archived) > 0 and sorted(archived) == sorted(cands.candid)
    schema = parse_alert_schema()
    for rec in records:
        assert fastavro.validation.validate(rec, schema, strict=True)
        assert rec["objectId"].startswith("ZTF26")
    got = []

    def handler(value, msg):
        got.append(next(iter(fastavro.reader(io.BytesIO(value))))["candid"])

    asyncio.run(consume_alerts(broker.bootstrap, handler, pattern="^ztf_.*", group_id="e2e",
                               max_messages=len(archived), idle_timeout=20.0))
    assert sorted(got) == sorted(archived)
    assert len(set(got)) == len(got)


def test_rerun_gives_the_same_candids_and_no_new_rows(survey):
    root, config, *_ = survey
    before = _sql(config, "select candid, object_id from candidates order by candid")
    n_objects = len(_sql(config, "select * from objects"))
    run_night("20261122", config, progress=False, quads=[3], force=True)
    after = _sql(config, "select candid, object_id from candidates order by candid")
    assert before.equals(after)
    assert len(_sql(config, "select * from objects")) == n_objects
