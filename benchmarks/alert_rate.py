"""Alert production benchmark through a real Kafka-protocol broker (Tansu, started here).

Measures (1) the production rate: realistic packets (3 cutouts of 63x63 gzipped noise,
~57 kB with the embedded schema) published in quadrant batches and acknowledged by the broker,
on one core (``taskset -c 0`` if available); (2) latency: p50/p95/max time from a quadrant's
candidates being ready (``publish`` called) to the broker's acknowledgement of its last alert,
for quadrants of 20-50 alerts arriving every ``--interval`` s.

    python benchmarks/alert_rate.py [--n 6000] [--quadrants 60]
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
from zsds.alerts.packet import make_alert  # noqa: E402

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


def rate(bootstrap, pk, root):
    with AlertDistributor(archive_root=root, bootstrap_servers=bootstrap) as dist:
        t0 = time.perf_counter()
        for i in range(0, len(pk), 50):
            dist.publish(pk[i:i + 50])
        assert dist.drain(300) == 0
        return len(pk) / (time.perf_counter() - t0)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--quadrants", type=int, default=60)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()
    broker = TansuBroker().start()  # before pinning: the broker is not part of "one core"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    t = time.perf_counter()
    pk = packets(args.n)
    make_rate = args.n / (time.perf_counter() - t)
    size = np.mean([len(__import__("zsds.alerts.packet", fromlist=["x"]).serialize_alert(
        p, validate=False)) for p in pk[:50]])
    with broker as b, tempfile.TemporaryDirectory() as d:
        r = rate(b.bootstrap, pk, Path(d) / "a")
        (p50, p95), mx, n = latency(b.bootstrap, args.quadrants, args.interval, Path(d) / "b")
    print(f"packet size {size / 1e3:.1f} kB; make_alert {make_rate:.0f}/s (not in the rate)")
    print(f"production rate (archive + spool + broker ack, one core): {r:.0f} alerts/s "
          f"over {args.n} alerts")
    print(f"quadrant ready -> last ack: p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, "
          f"max {mx * 1e3:.0f} ms ({args.quadrants} quadrants, {n} alerts)")


if __name__ == "__main__":
    main()
