"""Alert distribution through a real Kafka-protocol broker (Tansu, started by the tests)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import fastavro
import numpy as np
import pytest
from kafkabroker import TansuBroker

from zsds.alerts.archive import archive_file, archived_candids, iter_archive, read_alert
from zsds.alerts.kafka import AlertDistributor, consume_alerts, topic_name
from zsds.alerts.packet import deserialize_alert, make_alert
from zsds.alerts.spool import AlertSpool

JD0 = 2461366.7  # night 20261122
ZEROS = [np.zeros((63, 63), np.float32)] * 3


def packets(start, n, programid=1):
    """Small packets (zero cutouts), unique candids, one objectId each."""
    out = []
    for i in range(start, start + n):
        c = dict(jd=JD0 + i * 1e-6, fid=2, pid=361220000000 + i // 50, programid=programid,
                 index=i % 50, isdiffpos="t", ra=(i * 0.001) % 360, dec=10.0, magpsf=18.0,
                 sigmapsf=0.1)
        out.append(make_alert(c, ZEROS, None, None, f"ZTF26{i:07d}"[:5] + _letters(i)))
    return out


def _letters(i):
    return "".join("abcdefghijklmnopqrstuvwxyz"[(i // 26 ** k) % 26] for k in range(7))[::-1]


def consume(bootstrap, group, expected, idle=8.0):
    got = []
    asyncio.run(consume_alerts(bootstrap, lambda v, m: got.append(deserialize_alert(v)["candid"]),
                               group_id=group, max_messages=expected, idle_timeout=idle))
    return got


@pytest.fixture
def broker():
    with TansuBroker() as b:
        yield b


def test_topic_names():
    assert topic_name("20261122", 1) == "ztf_20261122_programid1"


def test_10000_alerts_no_loss_no_duplicates(broker, tmp_path):
    n = 10_000
    pk = packets(0, n)
    t0 = time.monotonic()
    with AlertDistributor(archive_root=tmp_path, bootstrap_servers=broker.bootstrap) as dist:
        for i in range(0, n, 50):  # quadrant-sized batches
            dist.publish(pk[i:i + 50])
        assert dist.drain(60) == 0
        acked = dist.spool.acknowledged()
    produced = time.monotonic() - t0
    got = consume(broker.bootstrap, "test-a", n)
    want = {p["candid"] for p in pk}
    dup = [c for c, k in Counter(got).items() if k > 1]
    assert (len(want - set(got)), len(dup), len(got)) == (0, 0, n)
    assert len(acked) == n and {a[0] for a in acked} == want
    files = sorted((tmp_path / "alerts" / "20261122" / "programid1").glob("*.avro"))
    assert len(files) == n // 50  # one container per quadrant image (pid)
    archived = [c for f in files for c in archived_candids(f)]
    assert sorted(archived) == sorted(want)
    print(f"10000 alerts produced+acknowledged in {produced:.1f} s")


def test_broker_outage_spools_and_delivers_in_order(tmp_path):
    port_broker = TansuBroker().start()
    bootstrap = port_broker.bootstrap
    opts = dict(request_timeout_ms=2000)
    try:
        dist = AlertDistributor(archive_root=tmp_path, bootstrap_servers=bootstrap,
                                producer_options=opts, max_backoff=0.5)
        before = packets(0, 300)
        dist.publish(before)
        assert dist.drain(30) == 0
        acked_before = {c for c, _, _ in dist.spool.acknowledged()}
        port_broker.stop()
        during = packets(300, 300)
        for i in range(0, 300, 30):
            dist.publish(during[i:i + 30])
        time.sleep(2.0)
        assert dist.spool.n_pending() == 300  # nothing lost, nothing acknowledged while down
        port_broker = TansuBroker(port_broker.port).start()  # same address
        assert dist.drain(60) == 0  # the spool drains by itself
        # sender restart while the broker is down: the next distributor resumes
        port_broker.stop()
        after = packets(600, 200)
        dist.publish(after)
        assert dist.close(timeout=1.0) == 200
        port_broker = TansuBroker(port_broker.port).start()
        dist2 = AlertDistributor(archive_root=tmp_path, bootstrap_servers=bootstrap,
                                 producer_options=opts, max_backoff=0.5)
        assert dist2.drain(60) == 0
        got = consume(bootstrap, "test-b", 200)  # broker memory: only what was sent after
        dist2.close()
    finally:
        port_broker.stop()
    spool = AlertSpool(tmp_path / "alerts" / "spool.sqlite")
    acked = spool.acknowledged()
    spool.close()
    candids = [c for c, _, _ in acked]
    assert len(candids) == len(set(candids)) == 800  # each acknowledged exactly once
    assert acked_before == {p["candid"] for p in before}
    for group in (during, after):  # delivered after the restart, in spool order
        seqs = [seq for c, seq, _ in acked if c in {p["candid"] for p in group}]
        assert len(seqs) == len(group) and seqs == sorted(seqs)
    assert sorted(got) == sorted(p["candid"] for p in after)
    archived = [r["candid"] for r in iter_archive(tmp_path, "20261122")]
    assert sorted(archived) == sorted(p["candid"] for p in before + during + after)


def test_no_broker_archive_only(tmp_path, caplog):
    import zsds.alerts.kafka as k

    k._NO_BROKER_LOGGED = False
    with caplog.at_level("WARNING"):
        dist = AlertDistributor(archive_root=tmp_path, bootstrap_servers=None)
        AlertDistributor(archive_root=tmp_path, bootstrap_servers=None)
    pk = packets(0, 5)
    assert dist.publish(pk) == [p["candid"] for p in pk]
    assert dist.drain(1) == 0 and dist.close() == 0
    assert sum("archive only" in r.message for r in caplog.records) == 1
    assert not (tmp_path / "alerts" / "spool.sqlite").exists()
    path = archive_file(tmp_path, "20261122", 1, pk[3]["candidate"]["pid"])
    back = deserialize_alert(read_alert(path, pk[3]["candid"]))
    assert back["objectId"] == pk[3]["objectId"]
    assert dist.publish(pk) and archived_candids(path) == [p["candid"] for p in pk]  # no dups


def test_archive_appends_new_alerts_of_a_quadrant_once(tmp_path):
    dist = AlertDistributor(archive_root=tmp_path, bootstrap_servers=None)
    pk = packets(0, 50)  # one quadrant image (pid)
    dist.publish(pk[:20])
    dist.publish(pk[10:50])
    path = archive_file(tmp_path, "20261122", 1, pk[0]["candidate"]["pid"])
    assert archived_candids(path) == [p["candid"] for p in pk]
    with open(path, "rb") as fh:  # a standard container any Avro reader reads
        assert [r["objectId"] for r in fastavro.reader(fh)] == [p["objectId"] for p in pk]
    with pytest.raises(KeyError):
        read_alert(path, 12345)


def test_sender_values_from_memory_equal_the_archived_bytes(tmp_path):
    """Alerts just archived go to the sender from memory: byte for byte what the archive
    gives back (the path after a restart or past the memory budget)."""
    from kafkabroker import free_port

    from zsds.alerts.packet import serialize_alert

    pk = packets(0, 120)
    size = len(serialize_alert(pk[0], validate=False))
    with AlertDistributor(archive_root=tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}",
                          max_backoff=0.2, cache_bytes=80 * size) as dist:  # nobody listens
        dist.publish(pk[:60])
        dist.publish(pk[60:])
        rows = dist.spool.pending(1000)
        assert len(rows) == 120 and 0 < len(dist._cache) < 120  # the budget held some back
        from_memory = dist._values(rows)
        assert not dist._cache
        assert from_memory == dist.spool.values(rows)
        assert [deserialize_alert(v)["candid"] for v in from_memory] == [p["candid"] for p in pk]
        dist.close(timeout=0.5)
