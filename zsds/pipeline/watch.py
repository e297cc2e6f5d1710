"""Real-time mode: ingest raw files as they land and process their quadrants at once.

``zsds watch INCOMING_DIR`` polls a folder. A file counts as landed when its name follows the
raw-file pattern and its size and modification time have not changed for ``settle_s``
seconds (cameras that write to a temporary name and rename are seen at the rename). Landed
files are ingested; calibration files are kept for the night's biases and flats, which are
made when the night's first object file arrives; each object file's four quadrants are then
submitted to the Dask cluster immediately, so alerts flow while the night goes on. A
quadrant whose previous exposure of the same field is still being processed waits for it
(as in ``run-night``: histories and objectIds then follow the order of the exposures).

The decision logic is :class:`LandingTracker`, a pure state machine (observations in,
landed files out) that is tested without a file system.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ZsdsConfig
from ..errors import CalibrationNotFoundError, NoWorkFound
from ..io.paths import parse_raw_name

__all__ = ["LandingTracker", "watch", "WatchReport"]

log = logging.getLogger(__name__)


@dataclass
class LandingTracker:
    """Decides when files have finished landing.

    Feed it ``observe(now, {path: (size, mtime)})`` with every poll; it returns the paths that
    have been stable for ``settle_s`` seconds and were not returned before, with the time
    each was first seen (the landing time used for latency).
    """

    settle_s: float = 2.0
    _seen: dict = field(default_factory=dict)      # path -> (size, mtime, first_seen, stable_since)
    _done: set = field(default_factory=set)

    def observe(self, now: float, stats: dict) -> list[tuple[Path, float]]:
        landed = []
        for path, (size, mtime) in stats.items():
            if path in self._done or not _is_raw_name(path):
                continue
            prev = self._seen.get(path)
            if prev is None or (prev[0], prev[1]) != (size, mtime):
                first = prev[2] if prev else now
                self._seen[path] = (size, mtime, first, now)
                continue
            if size > 0 and now - prev[3] >= self.settle_s:
                landed.append((path, prev[2]))
                self._done.add(path)
                del self._seen[path]
        return sorted(landed, key=lambda item: item[0].name)


def _is_raw_name(path: Path) -> bool:
    try:
        parse_raw_name(path.name)
        return True
    except ValueError:
        return False


@dataclass
class WatchReport:
    files: int = 0
    quadrants: int = 0
    alerts: int = 0
    unacknowledged: int = 0  # quadrants whose alerts were not all acknowledged within 5 s
    latencies_s: list = field(default_factory=list)

    def summary(self) -> str:
        if not self.latencies_s:
            return f"watch: {self.files} files, {self.quadrants} quadrants, {self.alerts} alerts"
        lat = sorted(self.latencies_s)
        p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        return (f"watch: {self.files} files, {self.quadrants} quadrants, {self.alerts} alerts; "
                f"landing-to-alerts-acknowledged latency "
                f"p50 {p50:.1f} s, p95 {p95:.1f} s")


def _stats(folder: Path) -> dict:
    out = {}
    for p in folder.rglob("*.fits.fz"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out[p] = (st.st_size, st.st_mtime)
    return out


def _ensure_calibrations(night: str, config: ZsdsConfig, engine, made: set):
    from ..stages.calib import make_bias, make_flat
    if night in made:
        return
    for make, what in ((make_bias, "bias"), (make_flat, "flat")):
        try:
            make(night, config, engine=engine)
        except (NoWorkFound, CalibrationNotFoundError) as exc:
            log.warning("night %s: %s calibration not made (%s); using the nearest valid", night, what, exc)
    made.add(night)


def _jobs_for(engine, path: Path, night: str):
    from ..db.ops import object_quadrants
    from .night import _jobs
    rows = [r for r in object_quadrants(engine, night) if Path(r["raw_path"]).name == path.name]
    return _jobs(rows)


def watch(incoming: Path, config: ZsdsConfig, *, poll_s: float = 1.0, settle_s: float = 2.0,
          max_idle_s: float | None = None, max_files: int | None = None) -> WatchReport:
    """Watch ``incoming`` and process files as they land (see the module docstring).

    Parameters
    ----------
    incoming : Path
        Folder the camera writes to (searched recursively).
    poll_s, settle_s : float
        Polling interval and the time a file must be unchanged to count as landed, seconds.
    max_idle_s : float, optional
        Stop after this long without a new file (default: run until interrupted).
    max_files : int, optional
        Stop after this many landed files.
    """
    from ..stages.ingest import ingest
    from .cluster import open_client
    from .night import _checksum_recorder, _engine

    engine = _engine(config)
    tracker = LandingTracker(settle_s=settle_s)
    report = WatchReport()
    calibrated_nights: set = set()
    landed_at: dict = {}
    latest: dict = {}  # field-quadrant -> marker task of its latest exposure submitted
    pending: list = []  # submitted, not yet collected (in submission order)
    last_new = time.monotonic()
    from ..alerts.kafka import AlertDistributor
    with open_client(config) as client, \
            AlertDistributor(config, on_archived=_checksum_recorder(config)) as alerts:
        log.info("watching %s (dashboard %s)", incoming, getattr(client, "dashboard_link", "n/a"))
        while True:
            now = time.time()
            for path, first_seen in tracker.observe(now, _stats(incoming)):
                last_new = time.monotonic()
                report.files += 1
                rn = parse_raw_name(path.name)
                result = ingest([path], config, engine=engine)
                if not result.ok or rn.type_code != "o":
                    continue
                _ensure_calibrations(rn.date, config, engine, calibrated_nights)
                for job in _jobs_for(engine, path, rn.date):
                    landed_at[job.key] = first_seen
                    pending.append(_submit_after(client, config, job, latest))
            state = [(f, f.done()) for f in pending]  # one look each: none lost in between
            pending = [f for f, finished in state if not finished]
            for fut in (f for f, finished in state if finished):
                out = fut.result()
                report.alerts += len(alerts.publish_serialized(out.qa.pop("alerts", [])))
                if alerts.drain(timeout=5.0):  # with a broker: until acknowledged
                    report.unacknowledged += 1  # broker slow or down: spooled, sent later
                report.quadrants += 1
                latency = time.time() - landed_at.pop(out.job.key, time.time())
                report.latencies_s.append(latency)
                log.info("quadrant %s %s in %.1f s after landing", out.job.key, out.status, latency)
            idle = time.monotonic() - last_new
            if (max_files is not None and report.files >= max_files and not pending) or \
                    (max_idle_s is not None and idle > max_idle_s and not pending):
                break
            time.sleep(poll_s)
    log.info(report.summary())
    return report


def _submit_after(client, config: ZsdsConfig, job, latest: dict):
    """Submit a quadrant after the previous exposure of its field-quadrant (as run-night
    does, :func:`zsds.pipeline.night._submit_in_chains`): the order is a Dask dependency on
    that exposure's marker task, which the scheduler keeps also when a worker dies."""
    from .night import _after, _chain_key, _done

    previous = latest.get(_chain_key(job))
    fut = client.submit(_after, previous, config, job, key=job.key, pure=False)
    latest[_chain_key(job)] = client.submit(_done, fut, key=f"done-{job.key}", pure=False)
    return fut
