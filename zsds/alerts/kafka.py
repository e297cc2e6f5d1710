"""Alert distribution: the night's Avro archive, a durable spool and Kafka (aiokafka).

:meth:`AlertDistributor.publish` serializes each packet (one Avro container per alert,
schema embedded, as sent to Kafka), adds it to the night's alert archive (one container per
quadrant image, ``alerts/YYYYMMDD/programid<N>/<pid>.avro``, :mod:`zsds.alerts.archive`) and
appends it to the spool ``alerts/spool.sqlite`` (both before returning). A sender running
its own asyncio loop in a background thread drains the spool in order to the broker:

* topic ``ztf_YYYYMMDD_programid<N>`` (UT night of the candidate ``jd``; ZTF naming),
  key = objectId (all alerts of an object go to one partition, in order), value = the
  container bytes; producer with ``acks='all'`` and ``enable_idempotence=True``;
* an entry is marked acknowledged only after the broker acknowledged it; failed sends stay
  pending, the producer is recreated and the entries are re-sent in spool order when the
  broker answers again (back-off up to ``max_backoff`` s);
* a candid is spooled once (re-publishing it changes nothing), so an acknowledged alert is
  never sent again, also across restarts (the new sender resumes from the spool file).
  Kafka remains at-least-once for a message whose acknowledgement was lost in a crash, so
  consumers dedupe on candid (``zsds alerts listen`` does).

With no broker configured (``kafka.bootstrap_servers`` null) the archive is the only output
(logged once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from ..io.paths import night_of_jd
from . import _kafka_compat
from .archive import archive_file, write_alerts
from .packet import serialize_alert
from .spool import AlertSpool

__all__ = ["topic_name", "AlertDistributor", "consume_alerts"]

log = logging.getLogger(__name__)
_NO_BROKER_LOGGED = False
_kafka_compat.install()
_PARTITIONER = DefaultPartitioner()  # murmur2 of the key, as Java clients


def topic_name(night: str, programid: int) -> str:
    """ZTF topic name of a night and program: ``ztf_YYYYMMDD_programid1``."""
    return f"ztf_{night}_programid{int(programid)}"


class AlertDistributor:
    """Archive + spool + Kafka sender, usable from synchronous code.

    Parameters
    ----------
    config : ZsdsConfig, optional
        Supplies ``archive.root`` and ``kafka.bootstrap_servers``.
    archive_root, bootstrap_servers : optional
        Override the configuration (``bootstrap_servers=None`` with no config: no broker).
    spool_path : path-like, optional
        Default ``<archive_root>/alerts/spool.sqlite``.
    validate : bool
        Validate each packet against the schema before archiving (~1 ms per alert).
    on_ack : callable, optional
        ``on_ack(candids, monotonic_time)`` after each acknowledged batch (sender thread).
    on_archived : callable, optional
        ``on_archived(paths)`` with the archive files written by each publish call (the
        pipeline records their checksums, :func:`zsds.archive.verify.record_checksums`).
    producer_options : dict, optional
        Extra ``AIOKafkaProducer`` keyword arguments.
    batch : int
        Spool entries sent per round.
    max_backoff : float
        Longest wait between reconnection attempts, s.
    cache_bytes : int
        Alerts archived by this distributor are handed to the sender from memory (up to this
        many bytes waiting), not read back from the archive; the bytes are the same (a
        single-alert container is its archive block between the candid's sync markers).
    """

    def __init__(self, config=None, *, archive_root=None, bootstrap_servers=None,
                 spool_path=None, validate: bool = False,
                 on_ack: Callable[[list[int], float], None] | None = None,
                 on_archived: Callable[[list[Path]], None] | None = None,
                 producer_options: Mapping[str, Any] | None = None, batch: int = 500,
                 max_backoff: float = 2.0, cache_bytes: int = 256 << 20):
        root = archive_root or (config.archive.root if config is not None else None)
        if root is None:
            raise ValueError("AlertDistributor needs a config or archive_root")
        self.root = Path(root)
        if bootstrap_servers is None and config is not None:
            bootstrap_servers = config.kafka.bootstrap_servers
        self.bootstrap_servers = bootstrap_servers
        self.validate = validate
        self.on_ack = on_ack
        self.on_archived = on_archived
        self.batch = batch
        self.max_backoff = max_backoff
        self.producer_options = dict(producer_options or {})
        self.spool: AlertSpool | None = None
        self._cache: dict[int, bytes] = {}  # candid -> message value, archived and spooled here
        self._cache_room = int(cache_bytes)
        self._cache_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if bootstrap_servers:
            self.spool = AlertSpool(spool_path or self.root / "alerts" / "spool.sqlite")
            self._start_thread()
        else:
            self._log_no_broker()

    # -- publishing (caller's thread) --------------------------------------------------------
    @staticmethod
    def _log_no_broker() -> None:
        global _NO_BROKER_LOGGED
        if not _NO_BROKER_LOGGED:
            log.warning("no Kafka broker configured (kafka.bootstrap_servers is null): alerts "
                        "are written to the Avro archive only")
            _NO_BROKER_LOGGED = True

    def publish(self, packets: Iterable[Mapping[str, Any]]) -> list[int]:
        """Archive and spool packets (durably, before returning); the sender sends them.

        Returns
        -------
        list of int
            The candids, in order.
        """
        return self._archive_and_spool(
            (p["candid"], p["objectId"], p["candidate"]["jd"], p["candidate"]["programid"],
             p["candidate"]["pid"], serialize_alert(p, validate=self.validate)) for p in packets)

    def publish_serialized(self, alerts) -> list[int]:
        """Archive and spool alerts already serialised (``.candid, .object_id, .jd,
        .programid, .data``), e.g. built on Dask workers by :mod:`zsds.stages.alerts`."""
        return self._archive_and_spool((a.candid, a.object_id, a.jd, a.programid, a.pid, a.data)
                                       for a in alerts)

    def _archive_and_spool(self, rows) -> list[int]:
        """Archive ``(candid, objectId, jd, programid, pid, bytes)`` rows grouped by quadrant
        image, then spool them in the given order."""
        rows, files = list(rows), {}
        for candid, _, jd, programid, pid, data in rows:
            key = (night_of_jd(jd), int(programid), int(pid))
            files.setdefault(key, []).append((candid, data))
        where, paths, added = {}, [], []
        for (night, programid, pid), alerts in files.items():
            paths.append(archive_file(self.root, night, programid, pid))
            for candid, (offset, length) in write_alerts(paths[-1], alerts, added).items():
                where[candid] = (paths[-1], offset, length)
        if paths and self.on_archived is not None:
            self.on_archived(paths)
        entries = [(candid, topic_name(night_of_jd(jd), programid), object_id.encode(),
                    *where[candid]) for candid, object_id, jd, programid, _, _ in rows]
        candids = [r[0] for r in rows]
        if self.spool is not None and entries:
            self.spool.add(entries)
            self._keep_in_memory(rows, set(added))
            self._wake_sender()
        return candids

    def _keep_in_memory(self, rows, added: set) -> None:
        """Hold the bytes of newly archived alerts for the sender (within the budget)."""
        with self._cache_lock:
            for candid, _, _, _, _, data in rows:
                if candid in added and len(data) <= self._cache_room:
                    self._cache[candid] = data
                    self._cache_room -= len(data)

    def _values(self, rows) -> list[bytes]:
        """Message values of spool entries: from memory if held, else from the archive."""
        with self._cache_lock:
            values = [self._cache.pop(r.candid, None) for r in rows]
            self._cache_room += sum(len(v) for v in values if v is not None)
        missing = [r for r, v in zip(rows, values) if v is None]
        if missing:
            read = iter(self.spool.values(missing))
            values = [v if v is not None else next(read) for v in values]
        return values

    def drain(self, timeout: float | None = None) -> int:
        """Wait until the spool is empty or ``timeout`` s passed; returns entries pending."""
        if self.spool is None:
            return 0
        end = None if timeout is None else time.monotonic() + timeout
        while (n := self.spool.n_pending()) and (end is None or time.monotonic() < end):
            self._wake_sender()
            time.sleep(0.01)
        return n

    def close(self, timeout: float = 10.0) -> int:
        """Drain for up to ``timeout`` s, stop the sender; returns entries still pending
        (they stay in the spool and are sent by the next distributor)."""
        left = self.drain(timeout) if self._thread else 0
        if self._loop is not None and self._thread is not None:
            def stop():
                self._stop.set()
                self._task.cancel()

            try:  # one callback: after _stop is set the loop may finish and close at once
                self._loop.call_soon_threadsafe(stop)
            except RuntimeError:  # the sender's loop has already finished
                pass
            self._thread.join(timeout=15.0)
            if self._thread.is_alive():
                log.warning("alert sender did not stop within 15 s")
                return left
            self._thread = None
        if self.spool is not None:
            self.spool.close()
        return left

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the sender (its own thread and event loop) ------------------------------------------
    def _start_thread(self) -> None:
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._wake = asyncio.Event()
            self._stop = asyncio.Event()
            self._task = self._loop.create_task(self._sender())
            ready.set()
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            self._loop.close()

        self._thread = threading.Thread(target=run, name="zsds-alert-sender", daemon=True)
        self._thread.start()
        ready.wait()

    def _wake_sender(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed meanwhile
                pass

    async def _new_producer(self):
        from aiokafka import AIOKafkaProducer

        opts = dict(acks="all", enable_idempotence=True, linger_ms=2,
                    max_batch_size=1 << 20, max_request_size=8 << 20,
                    request_timeout_ms=10000, retry_backoff_ms=100)
        opts.update(self.producer_options)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **opts)
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        return producer

    async def _sender(self) -> None:
        self._producer = None
        try:
            await self._send_loop()
        finally:
            if self._producer is not None:
                await _stop_quietly(self._producer, timeout=2.0)

    async def _send_loop(self) -> None:
        """Send pending entries in rounds of ``batch``, one round in flight while the next is
        handed to the producer; any failure drops the producer and restarts from the oldest
        unacknowledged entry."""
        backoff, outage = 0.1, False
        inflight, after = None, 0  # round awaiting acknowledgement; last seq handed over
        while not self._stop.is_set():
            rows = self.spool.pending(self.batch, after_seq=after)
            if not rows and inflight is None:
                self._wake.clear()
                if not self.spool.n_pending():
                    await _wait_any(self._wake, self._stop, timeout=1.0)
                after = 0
                continue
            try:
                if self._producer is None:
                    self._producer = await self._new_producer()
                sent = await self._send(self._producer, rows) if rows else None
                after = rows[-1].seq if rows else after
                if inflight is not None:
                    await self._confirm(*inflight)
                inflight = sent
                if outage:
                    log.info("Kafka broker %s reachable again; sending spooled alerts",
                             self.bootstrap_servers)
                backoff, outage = 0.1, False
            except Exception as exc:  # broker unreachable, timeouts, ...
                if not outage:
                    log.warning("Kafka broker %s: %s; alerts stay spooled (%d pending)",
                                self.bootstrap_servers, exc or type(exc).__name__,
                                self.spool.n_pending())
                outage, inflight, after = True, None, 0
                if self._producer is not None:
                    producer, self._producer = self._producer, None
                    await _stop_quietly(producer)
                await _wait_any(self._stop, timeout=backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _send(self, producer, rows) -> tuple[list, list]:
        """Hand a round to the producer as record batches, one run of consecutive rows per
        partition (the key's partition, as the default partitioner would choose it), so the
        spool order holds within every partition; returns ``(rows, [(batch future, rows)])``."""
        batches, current, partitions = [], {}, {}
        try:
            for r, value in zip(rows, self._values(rows)):
                if r.topic not in partitions:
                    partitions[r.topic] = sorted(await producer.partitions_for(r.topic))
                parts = partitions[r.topic]
                tp = (r.topic, _PARTITIONER(r.key, parts, parts))
                batch, members = current.get(tp, (None, None))
                if batch is None or batch.append(key=r.key, value=value, timestamp=None) is None:
                    if batch is not None:
                        batches.append((await producer.send_batch(batch, tp[0], partition=tp[1]),
                                        members))
                    batch, members = producer.create_batch(), []
                    if batch.append(key=r.key, value=value, timestamp=None) is None:
                        raise ValueError(f"alert candid {r.candid} larger than a Kafka batch")
                    current[tp] = (batch, members)
                members.append(r)
            for tp, (batch, members) in current.items():
                batches.append((await producer.send_batch(batch, tp[0], partition=tp[1]),
                                members))
        except BaseException:
            for f, _ in batches:
                f.cancel()
            raise
        return rows, batches

    async def _confirm(self, rows, batches) -> None:
        """Wait for a round's acknowledgements and record them in spool order; raise on any
        failure (the unacknowledged rows stay pending)."""
        results = await asyncio.gather(*(f for f, _ in batches), return_exceptions=True)
        acked = {r.seq for (_, members), res in zip(batches, results)
                 if not isinstance(res, BaseException) for r in members}
        ok = [r for r in rows if r.seq in acked]
        self.spool.mark_acked([r.seq for r in ok])
        if ok and self.on_ack is not None:
            self.on_ack([r.candid for r in ok], time.monotonic())
        failed = [res for res in results if isinstance(res, BaseException)]
        if failed:
            raise failed[0]


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def _stop_quietly(producer, timeout: float = 5.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except BaseException:  # noqa: BLE001 - best effort on a broken connection
        pass


async def consume_alerts(bootstrap_servers: str, handler: Callable[[bytes, Any], None], *,
                         topics: list[str] | None = None, pattern: str = r"^ztf_\d{8}_programid\d+$",
                         group_id: str = "zsds-listen", max_messages: int | None = None,
                         idle_timeout: float | None = None,
                         stop: asyncio.Event | None = None) -> int:
    """Consume alert messages in a consumer group, calling ``handler(value, message)``.

    Offsets are committed after the handler returned for each fetched batch (at-least-once:
    handlers dedupe on candid). Stops after ``max_messages``, after ``idle_timeout`` s
    without messages, or when ``stop`` is set. Returns the number of messages handled.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                metadata_max_age_ms=2000, max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    n, last = 0, time.monotonic()
    try:
        if topics:
            consumer.subscribe(topics=topics)
        else:
            consumer.subscribe(pattern=pattern)
        while not (stop is not None and stop.is_set()):
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for msgs in batch.values():
                for m in msgs:
                    handler(m.value, m)
                    n += 1
            if batch:
                await consumer.commit()
                last = time.monotonic()
            if max_messages is not None and n >= max_messages:
                break
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()
    return n
