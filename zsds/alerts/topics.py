"""The nightly alert topics: create them ahead of the night, check them, delete old ones.

Alerts go to one topic per UT night and program, ``ztf_YYYYMMDD_programid<N>``
(:func:`zsds.alerts.kafka.topic_name`, the ZTF naming). A production broker runs with
``auto.create.topics.enable=false``, so ``zsds alerts topics`` (run daily by
``deploy/systemd/zsds-alert-topics.timer``) creates the coming nights' topics with the
partitions, replication factor and topic settings (retention) of the ``kafka:`` configuration
section, reports existing topics whose partitions or settings differ (it does not alter
them: changing a topic under running consumers is an operator's decision, the message says
how), and deletes the topics of nights older than ``--keep-days``.

:func:`plan_topics` is the decision (pure); :func:`manage_topics` talks to the broker with
aiokafka's admin client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from ..errors import ZsdsError
from .kafka import topic_name

__all__ = ["TopicSpec", "TopicAction", "alert_topics", "plan_topics", "manage_topics",
           "TOPIC_PATTERN"]

#: Names of alert topics; group 1 is the night.
TOPIC_PATTERN = re.compile(r"^ztf_(\d{8})_programid\d+$")
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """Settings of new alert topics (the ``kafka.topic_*`` configuration keys)."""

    partitions: int
    replication_factor: int
    programids: tuple[int, ...]
    configs: Mapping[str, str]

    @classmethod
    def from_config(cls, config) -> "TopicSpec":
        k = config.kafka
        return cls(k.topic_partitions, k.topic_replication_factor,
                   tuple(k.topic_programids), dict(k.topic_configs))


@dataclass(frozen=True)
class TopicAction:
    """One line of the outcome: ``action`` is ``create``, ``ok``, ``differs`` or ``delete``."""

    topic: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<8} {self.topic}" + (f": {self.detail}" if self.detail else "")


def _day(night: str) -> date:
    if len(night) != 8 or not night.isdigit():
        raise ValueError(f"night must be YYYYMMDD, not {night!r}")
    return date(int(night[:4]), int(night[4:6]), int(night[6:]))


def alert_topics(first_night: str, nights: int, programids: Iterable[int]) -> list[str]:
    """Topic names of ``nights`` consecutive nights from ``first_night``, every program."""
    start = _day(first_night)
    return [topic_name((start + timedelta(days=i)).strftime("%Y%m%d"), p)
            for i in range(nights) for p in programids]


def plan_topics(spec: TopicSpec, first_night: str, nights: int,
                existing: Mapping[str, tuple[int, Mapping[str, str]]],
                keep_days: int | None = None) -> list[TopicAction]:
    """Decide what to do with the alert topics.

    Parameters
    ----------
    spec : TopicSpec
    first_night : str
        ``YYYYMMDD``, the first night to have topics for.
    nights : int
        Number of nights from ``first_night``.
    existing : mapping
        ``{topic: (partitions, {setting: value})}`` of the topics on the broker (settings
        need only cover ``spec.configs``).
    keep_days : int, optional
        Delete alert topics of nights more than this many days before ``first_night``.

    Returns
    -------
    list of TopicAction
        The wanted topics in order (``create``, ``ok`` or ``differs`` with what differs),
        then the ``delete`` ones.
    """
    actions = []
    for topic in alert_topics(first_night, nights, spec.programids):
        if topic not in existing:
            actions.append(TopicAction(topic, "create", f"{spec.partitions} partitions, "
                                       f"replication {spec.replication_factor}"))
            continue
        partitions, settings = existing[topic]
        diffs = ([f"partitions {partitions} != {spec.partitions}"]
                 if partitions != spec.partitions else [])
        diffs += [f"{k} {settings.get(k)} != {v}" for k, v in spec.configs.items()
                  if settings.get(k) != v]
        actions.append(TopicAction(topic, "differs" if diffs else "ok", "; ".join(diffs)))
    if keep_days is not None:
        cutoff = _day(first_night) - timedelta(days=keep_days)
        for topic in sorted(existing):
            m = TOPIC_PATTERN.match(topic)
            if m and _day(m.group(1)) < cutoff:
                actions.append(TopicAction(topic, "delete", f"night older than {keep_days} days"))
    return actions


async def _existing(admin, topics: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not topics:
        return {}
    partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)
                  if t["error_code"] == 0}
    settings: dict[str, dict[str, str]] = {t: {} for t in partitions}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t) for t in partitions])
    for response in responses:
        for resource in response.resources:
            _code, _msg, _type, name, entries = resource[:5]
            settings[name] = {e[0]: e[1] for e in entries}
    return {t: (partitions[t], settings[t]) for t in partitions}


def _raise_failures(rows, what: str) -> None:
    """Raise for the (topic, error_code[, message]) rows of a response that failed."""
    bad = [f"{r[0]}: Kafka error {r[1]}" + (f" ({r[2]})" if len(r) > 2 and r[2] else "")
           for r in rows if r[1] not in (0, _TOPIC_ALREADY_EXISTS)]
    if bad:
        raise ZsdsError(f"Kafka {what} failed: " + "; ".join(bad))


async def manage_topics(bootstrap_servers: str, spec: TopicSpec, first_night: str, nights: int,
                        *, keep_days: int | None = None, dry_run: bool = False,
                        timeout_ms: int = 30000) -> list[TopicAction]:
    """Create the missing alert topics, report differing ones, delete old ones.

    Parameters
    ----------
    bootstrap_servers : str
    spec : TopicSpec
    first_night, nights, keep_days
        See :func:`plan_topics`.
    dry_run : bool
        Only report what would be done.
    timeout_ms : int
        Broker-side timeout of the create and delete requests.

    Returns
    -------
    list of TopicAction

    Raises
    ------
    ZsdsError
        If the broker refuses to create or delete a topic (the message names it and the
        Kafka error code, e.g. 38 for a replication factor above the number of brokers).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        names = await admin.list_topics()
        wanted = set(alert_topics(first_night, nights, spec.programids))
        relevant = [t for t in names if t in wanted or TOPIC_PATTERN.match(t)]
        actions = plan_topics(spec, first_night, nights, await _existing(admin, relevant),
                              keep_days=keep_days)
        if dry_run:
            return actions
        create = [NewTopic(a.topic, spec.partitions, spec.replication_factor,
                           topic_configs=dict(spec.configs))
                  for a in actions if a.action == "create"]
        if create:
            response = await admin.create_topics(create, timeout_ms=timeout_ms)
            _raise_failures(response.topic_errors, "CreateTopics")
        delete = [a.topic for a in actions if a.action == "delete"]
        if delete:
            response = await admin.delete_topics(delete, timeout_ms=timeout_ms)
            _raise_failures(response.topic_error_codes, "DeleteTopics")
        return actions
    finally:
        await admin.close()
