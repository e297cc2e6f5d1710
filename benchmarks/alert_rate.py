"""Alert production benchmark through a real Kafka-protocol broker (Tansu, started here).

Measures (1) the production rate: realistic packets (3 cutouts of 63x63 gzipped noise,
~57 kB with the embedded schema) published in quadrant batches and acknowledged by the broker,
on one core (``taskset -c 0`` if available; each run on a fresh broker, free to use the
other cores, since the test broker keeps every message in memory and slows as it fills);
(2) latency: p50/p95/max time from a quadrant's candidates being ready (``publish`` called)
to the broker's acknowledgement of its last alert,
for quadrants of 20-50 alerts arriving every ``--interval`` s.

    python benchmarks/alert_rate.py [--n 6000] [--quadrants 60]

In ``run-night`` the packets are built and serialized on the Dask workers and one
distributor on the client archives, spools and sends them (``publish_serialized``): that is
the "production rate on one core" of the acceptance. The rate with serialization done by the
distributor itself (``publish``) is reported too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kafkabroker import TansuBroker  # noqa: E402

from zsds.alerts.kafka import AlertDistributor  # noqa: E402
from zsds.alerts.objects import object_name  # noqa: E402
from zsds.alerts.packet import make_alert, serialize_alert  # noqa: E402
from zsds.stages.alerts import SerializedAlert  # noqa: E402

JD0 = 2461366.7


def packets(n, start=0, seed=1):
    rng = np.random.default_rng(seed)
    cut = [rng.normal(100, 10, (63, 63)).astype(np.float32) for _ in range(3)]
    out = []
    for i in range(start, start + n):
        c = dict(jd=JD0 + i * 1e-6, fid=2, pid=361220000000 + i // 50, programid=1,
                 index=i % 50, isdiffpos="t", ra=(i * 0.001) % 360, dec=10.0,
                 magpsf=18.0, sigmapsf=0.1, rb=0.9, nbad=0)
        out.append(make_alert(c, cut, None, None, object_name(2026, i)))
    return out


def rate(bootstrap, pk, root, serialized=False):
    """Alerts/s from publish() to the broker's last acknowledgement, quadrant batches of 50:
    (per wall-clock second, per CPU second of this process, i.e. of one core).

    ``serialized``: the packets were serialized beforehand (as Dask workers do in
    ``run-night``) and go through ``publish_serialized``; otherwise ``publish`` serializes.
    """
    if serialized:
        pk = [SerializedAlert(p["candid"], p["objectId"], p["candidate"]["jd"],
                              p["candidate"]["programid"], serialize_alert(p, validate=False),
                              p["candidate"]["pid"]) for p in pk]
    with AlertDistributor(archive_root=root, bootstrap_servers=bootstrap) as dist:
        publish = dist.publish_serialized if serialized else dist.publish
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(pk), 50):
            publish(pk[i:i + 50])
        assert dist.drain(300) == 0
        return len(pk) / (time.perf_counter() - t0), len(pk) / (time.process_time() - c0)


def latency(bootstrap, n_quad, interval, root, seed=2):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 51, n_quad)
    pk = packets(int(sizes.sum()), start=10**6)
    acked, lock = {}, threading.Lock()

    def on_ack(candids, t):
        with lock:
            for c in candids:
                acked[c] = t

    lat = []
    with AlertDistributor(archive_root=root, bootstrap_servers=bootstrap, on_ack=on_ack) as dist:
        dist.publish(pk[:1]), dist.drain(30)  # connect first
        pos, starts = 0, []
        for size in sizes:
            batch = pk[pos:pos + size]
            pos += size
            t_ready = time.monotonic()
            dist.publish(batch)
            starts.append((t_ready, [p["candid"] for p in batch]))
            time.sleep(interval)
        dist.drain(60)
    for t_ready, candids in starts:
        lat.append(max(acked[c] for c in candids) - t_ready)
    return np.percentile(lat, [50, 95]), max(lat), int(sizes.sum())


def _unpinned_broker() -> TansuBroker:
    """A new broker free to run on every core (not on the one this process is pinned to)."""
    if not hasattr(os, "sched_setaffinity"):
        return TansuBroker().start()
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    try:
        return TansuBroker().start()
    finally:
        os.sched_setaffinity(0, pinned)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--quadrants", type=int, default=60)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):  # the brokers are not part of "one core"
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    t = time.perf_counter()
    pk = packets(args.n)
    make_rate = args.n / (time.perf_counter() - t)
    t = time.perf_counter()
    size = np.mean([len(serialize_alert(p, validate=False)) for p in pk[:500]])
    ser_rate = 500 / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        rates, rates_ser = [], []
        for i in range(3):  # alternating, each run on a fresh broker (it keeps messages in memory)
            for serialized, out in ((True, rates_ser), (False, rates)):
                with _unpinned_broker() as b:
                    out.append(rate(b.bootstrap, pk, Path(d) / f"{int(serialized)}{i}", serialized))
        with _unpinned_broker() as b:
            (p50, p95), mx, n = latency(b.bootstrap, args.quadrants, args.interval, Path(d) / "b")
    print(f"packet size {size / 1e3:.1f} kB; make_alert {make_rate:.0f}/s, serialize "
          f"{ser_rate:.0f}/s (both on the Dask workers in run-night; not in the rates below)")
    for label, rr in (("distributor, pre-serialized alerts (archive + spool + broker ack)",
                       rates_ser), ("including serialization on the same core", rates)):
        wall, cpu = np.array(rr).T
        print(f"{label}: median {np.median(wall):.0f} alerts/s wall-clock on one pinned core "
              f"(runs {', '.join(f'{r:.0f}' for r in wall)}); {np.median(cpu):.0f} alerts per "
              f"CPU-second (runs {', '.join(f'{r:.0f}' for r in cpu)}); {args.n} alerts/run")
    print(f"quadrant ready -> last ack: p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, "
          f"max {mx * 1e3:.0f} ms ({args.quadrants} quadrants, {n} alerts)")


if __name__ == "__main__":
    main()
