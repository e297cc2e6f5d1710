"""The night runner: ingest, calibrations, then one Dask task per readout quadrant.

``run_night`` is what ``zsds run-night`` calls. Quadrant tasks are idempotent (deterministic
product paths written atomically, database upserts keyed by exposure/CCD/quadrant), so Dask
may recompute one after a lost worker without duplicating anything. A quadrant whose data
are bad is recorded as failed with its reason and the night goes on; tasks never raise for
bad data, so Dask's retry budget is kept for lost workers.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ZsdsConfig
from ..db.ops import (engine_from_config, object_quadrants, processing_state, record_processing,
                      set_quadrant_status)
from ..errors import (AlgorithmError, CalibrationNotFoundError, InputDataError, NoWorkFound,
                      ZsdsError)

__all__ = ["QuadrantJob", "QuadrantOutcome", "NightPlan", "plan_night", "run_night",
           "process_quadrant", "STAGES"]

log = logging.getLogger(__name__)

#: Per-quadrant stages, in order.
STAGES = ("calibrate", "subtract", "alerts")


@dataclass(frozen=True)
class QuadrantJob:
    """One readout quadrant of an object exposure (what a Dask task processes)."""

    expid: int
    ccd_id: int
    qid: int
    raw_path: str
    night: str
    filefracday: str
    field_id: int
    filter_code: str
    programid: int
    obsjd: float

    @property
    def key(self) -> str:
        """Deterministic Dask key: the same quadrant is never submitted twice."""
        return f"quadrant-{self.expid}-c{self.ccd_id:02d}-q{self.qid}"


@dataclass
class QuadrantOutcome:
    """What happened to one quadrant.

    ``done``: processed, image good; ``bad``: processed, image judged unusable (STATUS=0,
    reasons in ``message``: cloudy, empty, no astrometric solution ...); ``failed``: the
    processing stopped with an error (bad input file, missing calibration, bug), recorded
    with its traceback.
    """

    job: QuadrantJob
    status: str
    message: str = ""
    seconds: float = 0.0
    qa: dict = field(default_factory=dict)


@dataclass
class NightPlan:
    """A dry run of a night: what would be processed and on which calibrations."""

    night: str
    todo: list[QuadrantJob]
    done: list[QuadrantJob]
    failed: list[tuple[QuadrantJob, str]]
    calibrations: dict

    def summary(self) -> str:
        lines = [f"night {self.night}: {len(self.todo)} quadrants to process, "
                 f"{len(self.done)} already done, {len(self.failed)} failed before"]
        for key, what in sorted(self.calibrations.items()):
            lines.append(f"  {key}: {what}")
        for job, msg in self.failed[:20]:
            lines.append(f"  failed before: {job.key}: {msg}")
        return "\n".join(lines)


_ENGINES: dict = {}


def _engine(config: ZsdsConfig):
    """One engine per worker process and database URL."""
    url = config.database_url
    if url not in _ENGINES:
        _ENGINES[url] = engine_from_config(config)
    return _ENGINES[url]


def _jobs(rows) -> list[QuadrantJob]:
    return [QuadrantJob(int(r["expid"]), int(r["ccd_id"]), int(r["qid"]), r["raw_path"],
                        r["night"], r["filefracday"], int(r["field_id"]), r["filter_code"],
                        int(r["programid"]), float(r["obsjd"])) for r in rows]


def _calibration_summary(engine, jobs: list[QuadrantJob]) -> dict:
    from ..db.ops import find_calibration
    out = {}
    for ccd, qid, fc in sorted({(j.ccd_id, j.qid, j.filter_code) for j in jobs}):
        night = jobs[0].night
        parts = []
        for caltype in ("bias", "hifreqflat"):
            try:
                row = find_calibration(engine, caltype, ccd, qid, fc, night)
                parts.append(f"{caltype} {row['night']}")
            except CalibrationNotFoundError:
                parts.append(f"{caltype} MISSING")
        out[f"c{ccd:02d} q{qid} {fc}"] = ", ".join(parts)
    return out


_BAD_NOTE = "image judged bad (STATUS=0); later stages skipped"


def _is_done(first: dict | None, last: dict | None) -> bool:
    """A quadrant is done when its last stage is, or when it was judged bad after the first."""
    if last is not None and last["status"] == "done":
        return True
    return first is not None and first["status"] == "done" and (first["message"] or "") == _BAD_NOTE


def plan_night(night: str, config: ZsdsConfig, *, force: bool = False,
               ccds: list[int] | None = None, quads: list[int] | None = None) -> NightPlan:
    """What ``run_night`` would do, from the database (no processing, no writes).

    Raises
    ------
    NoWorkFound
        If no object exposure of the night is registered.
    """
    engine = _engine(config)
    jobs = [j for j in _jobs(object_quadrants(engine, night))
            if (not ccds or j.ccd_id in ccds) and (not quads or j.qid in quads)]
    if not jobs:
        raise NoWorkFound(f"night {night}: no object exposures registered; ingest its raw files "
                          "first (zsds ingest DIR or zsds run-night --incoming DIR)")
    last = processing_state(engine, STAGES[-1], night)
    first = processing_state(engine, STAGES[0], night)
    done, failed, todo = [], [], []
    for j in jobs:
        key = (j.expid, j.ccd_id, j.qid)
        if not force and _is_done(first.get(key), last.get(key)):
            done.append(j)
            continue
        for row in (last.get(key), first.get(key)):
            if row and row["status"] == "failed":
                failed.append((j, row["message"] or ""))
                break
        todo.append(j)
    return NightPlan(night, todo, done, failed, _calibration_summary(engine, jobs))


def _run_stages(config: ZsdsConfig, job: QuadrantJob, engine) -> dict:
    from ..stages.calibrate import calibrate_job
    qa: dict = {}
    records: list = []
    res: dict = {}
    kept: dict = {}  # the calibrated quadrant, handed to the subtraction in memory
    for stage in STAGES:
        record_processing(engine, stage, job.expid, job.ccd_id, job.qid, "running")
        if stage == "calibrate":
            qa.update(calibrate_job(config, job, engine, keep=kept))
        elif stage == "subtract":
            from ..stages.subtract import subtract_job
            res = subtract_job(config, job, engine, calibrated=kept.pop("calibrated", None))
            qa.update({k: v for k, v in res.items() if k != "candidates"})
            records = res.get("candidates", [])
        elif stage == "alerts":
            from ..stages.alerts import build_alerts
            qa["alerts"] = build_alerts(engine, records, res["cutouts_path"],
                                        orbits_path=config.moving.orbits_path) if records else []
        note = None if qa.get("status", 1) == 1 else _BAD_NOTE
        record_processing(engine, stage, job.expid, job.ccd_id, job.qid, "done", note)
        if note:
            break
    return qa


def process_quadrant(config: ZsdsConfig, job: QuadrantJob) -> QuadrantOutcome:
    """Run every per-quadrant stage on one quadrant (a Dask task; never raises for bad data)."""
    engine = _engine(config)
    t0 = time.perf_counter()
    try:
        qa = _run_stages(config, job, engine)
        status = "done" if qa.get("status", 1) == 1 else "bad"
        return QuadrantOutcome(job, status, qa.get("reasons", ""), time.perf_counter() - t0, qa)
    except (InputDataError, AlgorithmError, CalibrationNotFoundError, NoWorkFound) as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
    except ZsdsError as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - recorded with its traceback, the night goes on
        status, message = "failed", traceback.format_exc(limit=8)
    for stage in STAGES:
        record_processing(engine, stage, job.expid, job.ccd_id, job.qid, status, message)
    set_quadrant_status(engine, job.expid, job.ccd_id, job.qid, status, message[:2000])
    return QuadrantOutcome(job, status, message, time.perf_counter() - t0)


@dataclass
class NightReport:
    night: str
    outcomes: list[QuadrantOutcome]
    skipped: int
    seconds: float

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def summary(self) -> str:
        return (f"night {self.night}: {self.count('done')} quadrants done, {self.count('bad')} bad, "
                f"{self.count('failed')} failed, {self.skipped} skipped (already done) "
                f"in {self.seconds:.0f} s")


def _prepare_night(night: str, config: ZsdsConfig, incoming: Path | None):
    """Ingest the night's files from ``incoming`` and make its calibrations when possible."""
    from ..stages.calib import make_bias, make_flat
    from ..stages.ingest import expand_paths, ingest
    engine = _engine(config)
    if incoming is not None:
        files = [p for p in expand_paths([incoming]) if p.name[4:12] == night]
        if files:
            report = ingest(files, config, engine=engine)
            log.info("ingest: %s", report.summary())
        else:
            log.warning("no raw files of night %s under %s", night, incoming)
    for make, what in ((make_bias, "bias"), (make_flat, "flat")):
        try:
            make(night, config, engine=engine)
        except (NoWorkFound, CalibrationNotFoundError) as exc:
            log.warning("%s calibration of night %s not made (%s); the nearest valid one will "
                        "be used", what, night, exc)


def _log_exposure(expid: int, outcomes: list[QuadrantOutcome]):
    ok = [o for o in outcomes if o.status == "done"]
    job = outcomes[0].job
    def med(key):
        vals = sorted(o.qa[key] for o in ok if o.qa.get(key) is not None)
        return vals[len(vals) // 2] if vals else float("nan")
    log.info("exposure %d field %06d %s: %d/%d quadrants done, seeing %.2f\", MAGZP %.3f, "
             "MAGLIM %.2f%s", expid, job.field_id, job.filter_code, len(ok), len(outcomes),
             med("seeing_arcsec"), med("magzp"), med("maglim"),
             "" if len(ok) == len(outcomes) else
             "; bad/failed: " + ", ".join(f"c{o.job.ccd_id:02d}q{o.job.qid}" for o in outcomes
                                          if o.status != "done"))


def _checksum_recorder(config: ZsdsConfig):
    """``on_archived`` callback: record the checksums of alert-archive files as written."""
    from ..archive.verify import record_checksums

    engine = _engine(config)
    return lambda paths: record_checksums(engine, config.archive.root, paths)


def _chain_key(job: QuadrantJob) -> tuple[int, int, int]:
    return job.field_id, job.ccd_id, job.qid


def _chains(jobs: list[QuadrantJob]) -> dict[tuple[int, int, int], list[QuadrantJob]]:
    """Jobs grouped by field and readout quadrant, each group in time order.

    The exposures of one field-quadrant are processed one after the other, as they were
    taken: each alert's history then holds every earlier detection of the night and objectIds
    are assigned in time order, so a night gives the same products on any cluster. Different
    field-quadrants (the parallelism: 64 per field) run concurrently.
    """
    chains: dict[tuple[int, int, int], list[QuadrantJob]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: (j.obsjd, j.expid)):
        chains[_chain_key(job)].append(job)
    return dict(chains)


def _after(_previous_done, config: ZsdsConfig, job: QuadrantJob) -> QuadrantOutcome:
    """:func:`process_quadrant`, run once the previous exposure's task is done."""
    return process_quadrant(config, job)


def _done(_outcome) -> bool:
    """A small marker task that the next exposure of the field-quadrant depends on (so the
    outcome itself, with its alert packets, is not sent to the next worker)."""
    return True


def _submit_in_chains(client, config: ZsdsConfig, jobs: list[QuadrantJob]) -> list:
    """Submit every job; within a field-quadrant each waits for the previous exposure
    (:func:`_chains`), expressed as Dask dependencies so the scheduler enforces the order,
    also when a worker dies and tasks are recomputed."""
    futures = []
    for chain in _chains(jobs).values():
        token = None
        for job in chain:
            fut = client.submit(_after, token, config, job, key=job.key, pure=False)
            token = client.submit(_done, fut, key=f"done-{job.key}", pure=False)
            futures.append(fut)
    return futures


def run_night(night: str, config: ZsdsConfig, *, incoming: Path | None = None,
              force: bool = False, progress: bool = True, on_progress=None,
              ccds: list[int] | None = None, quads: list[int] | None = None) -> NightReport:
    """Process a night on the configured Dask cluster.

    Parameters
    ----------
    night : str
        ``YYYYMMDD`` (UTC date).
    config : ZsdsConfig
        ``dask.cluster`` selects LocalCluster, SLURM or a running scheduler.
    incoming : Path, optional
        Folder of raw files; those of ``night`` are ingested first.
    force : bool
        Reprocess quadrants already done.
    progress : bool
        Show a progress bar.
    on_progress : callable, optional
        ``on_progress(n_done, client)`` after each quadrant (monitoring and chaos tests).
    ccds, quads : list of int, optional
        Process only these CCDs / quadrants (reprocessing a subset).
    """
    from distributed import as_completed
    from tqdm import tqdm

    from .cluster import open_client

    t0 = time.perf_counter()
    _prepare_night(night, config, incoming)
    plan = plan_night(night, config, force=force, ccds=ccds, quads=quads)
    log.info("night %s: %d quadrants to process, %d already done", night, len(plan.todo),
             len(plan.done))
    by_exposure: dict[int, list] = defaultdict(list)
    expected = defaultdict(int)
    for j in plan.todo:
        expected[j.expid] += 1
    outcomes: list[QuadrantOutcome] = []
    n_alerts = 0
    if plan.todo:
        from ..alerts.kafka import AlertDistributor
        with open_client(config) as client, \
                AlertDistributor(config, on_archived=_checksum_recorder(config)) as alerts:
            log.info("Dask dashboard: %s", getattr(client, "dashboard_link", "n/a"))
            futures = _submit_in_chains(client, config, plan.todo)
            bar = tqdm(total=len(futures), unit="quad", desc=f"night {night}", disable=not progress)
            for fut in as_completed(futures):
                out = fut.result()
                n_alerts += len(alerts.publish_serialized(out.qa.pop("alerts", [])))
                outcomes.append(out)
                bar.update(1)
                by_exposure[out.job.expid].append(out)
                if len(by_exposure[out.job.expid]) == expected[out.job.expid]:
                    _log_exposure(out.job.expid, by_exposure[out.job.expid])
                if on_progress is not None:
                    on_progress(len(outcomes), client)
            bar.close()
            pending = alerts.drain(timeout=60.0)
            if pending:
                log.warning("%d alerts still spooled (broker unreachable?); they will be sent "
                            "by the next run or `zsds alerts` sender", pending)
    log.info("night %s: %d alerts published", night, n_alerts)
    report = NightReport(night, outcomes, len(plan.done), time.perf_counter() - t0)
    log.info(report.summary())
    return report
