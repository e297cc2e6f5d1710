"""The nightly alert topics (``zsds alerts topics``, zsds.alerts.topics): the plan, and the
topics made on a throw-away Tansu broker (Kafka protocol)."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from zsds.alerts.topics import TopicSpec, alert_topics, manage_topics, plan_topics

from kafkabroker import TansuBroker

SPEC = TopicSpec(partitions=4, replication_factor=1, programids=(1, 2),
                 configs={"retention.ms": "604800000", "cleanup.policy": "delete"})


def test_topic_names_cross_month_ends():
    assert alert_topics("20261130", 2, (1, 3)) == [
        "ztf_20261130_programid1", "ztf_20261130_programid3",
        "ztf_20261201_programid1", "ztf_20261201_programid3"]


def test_plan_creates_missing_reports_differing_deletes_only_old_alert_topics():
    existing = {
        "ztf_20261122_programid1": (4, {"retention.ms": "604800000", "cleanup.policy": "delete"}),
        "ztf_20261122_programid2": (2, {"retention.ms": "1000", "cleanup.policy": "delete"}),
        "ztf_20261101_programid1": (4, {}),
        "ztf_20261110_programid1": (4, {}),
        "other_20261101": (1, {}),
    }
    plan = plan_topics(SPEC, "20261122", 2, existing, keep_days=14)
    by_topic = {a.topic: a for a in plan}
    assert [a.action for a in plan[:4]] == ["ok", "differs", "create", "create"]
    assert by_topic["ztf_20261122_programid2"].detail == \
        "partitions 2 != 4; retention.ms 1000 != 604800000"
    assert [a.topic for a in plan if a.action == "delete"] == ["ztf_20261101_programid1"]
    assert not [a for a in plan_topics(SPEC, "20261122", 1, existing) if a.action == "delete"]


async def _describe(bootstrap: str, topic: str) -> tuple[int, dict]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return len(meta["partitions"]), {e[0]: e[1] for e in response.resources[0][4]}
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def broker():
    with TansuBroker() as b:
        yield b


def test_topics_are_created_with_their_settings_then_checked_then_pruned(broker):
    first = asyncio.run(manage_topics(broker.bootstrap, SPEC, "20261122", 2))
    assert [a.action for a in first] == ["create"] * 4
    partitions, settings = asyncio.run(_describe(broker.bootstrap, "ztf_20261123_programid2"))
    assert partitions == 4
    assert {k: settings.get(k) for k in SPEC.configs} == SPEC.configs
    again = asyncio.run(manage_topics(broker.bootstrap, SPEC, "20261122", 2))
    assert [a.action for a in again] == ["ok"] * 4
    later = asyncio.run(manage_topics(broker.bootstrap, SPEC, "20261201", 1, keep_days=5))
    deleted = sorted(a.topic for a in later if a.action == "delete")
    assert deleted == alert_topics("20261122", 2, (1, 2))
    assert [a.action for a in asyncio.run(manage_topics(broker.bootstrap, SPEC, "20261122", 1,
                                                        dry_run=True))] == ["create", "create"]


def test_cli_exits_1_when_an_existing_topic_differs(broker, tmp_path, monkeypatch):
    from zsds.cli import app

    monkeypatch.setenv("ZSDS__ARCHIVE__ROOT", str(tmp_path))
    monkeypatch.setenv("ZSDS__KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap)
    monkeypatch.setenv("ZSDS__KAFKA__TOPIC_PROGRAMIDS", "[1]")
    runner = CliRunner()
    made = runner.invoke(app, ["alerts", "topics", "20270101", "--nights", "1"])
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("create   ztf_20270101_programid1: 4 partitions")
    monkeypatch.setenv("ZSDS__KAFKA__TOPIC_CONFIGS", "{retention.ms: 3600000}")
    differs = runner.invoke(app, ["alerts", "topics", "20270101", "--nights", "1"])
    assert differs.exit_code == 1
    assert "differs  ztf_20270101_programid1: retention.ms 604800000 != 3600000" in differs.stdout
