"""The forced-photometry service: asynchronous jobs on the Dask cluster.

``POST /forcedphot/jobs`` with ``{"positions": [{"ra": .., "dec": ..}, ...], "jdstart": ..,
"jdend": ..}`` (at most ``api.max_forced_positions`` positions) returns ``202`` and a job ID;
``GET /forcedphot/jobs/{job_id}`` its status (``EXECUTING``, ``COMPLETED``, ``ERROR``) and
``GET /forcedphot/jobs/{job_id}/result?format=`` the table (columns of the ZTF Forced Photometry
Service, :mod:`zsds.stages.forcedphot`).

Only difference images the submitter may see when submitting are measured. A job is readable
by its submitter only (an anonymous job by anyone who has its ID: it holds public data only);
the ID is a hash of the submitter and the request, so resubmitting the same request returns the
same job. Jobs live in the server's memory (lost on restart).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..alerts.sky import cone_clause
from ..db import schema as s
from ..stages.forcedphot import plan_tasks, run_forced
from .access import Principal, get_principal, visible_sql
from .common import MAX_FOOTPRINT_DEG, bad_request, get_ctx, not_found, table_response
from .context import ApiContext

__all__ = ["router", "ForcedRequest", "ForcedJobs", "jobs_of"]

router = APIRouter(tags=["forced photometry"])

Format = Literal["json", "csv", "ipac_table", "votable", "fits", "parquet"]


class Position(BaseModel):
    """A sky position, degrees (ICRS)."""

    model_config = ConfigDict(extra="forbid")
    ra: float = Field(..., ge=0, lt=360, allow_inf_nan=False)
    dec: float = Field(..., ge=-90, le=90, allow_inf_nan=False)


class ForcedRequest(BaseModel):
    """A forced-photometry request: positions and an optional JD range (inclusive)."""

    model_config = ConfigDict(extra="forbid")
    positions: list[Position] = Field(..., min_length=1)
    jdstart: float | None = Field(None, allow_inf_nan=False, description="earliest OBSJD")
    jdend: float | None = Field(None, allow_inf_nan=False, description="latest OBSJD")


@dataclass
class Job:
    """A submitted job: owner, request summary, the Dask future, the result once fetched."""

    job_id: str
    owner: str | None
    n_positions: int
    n_images: int
    future: Any = None
    result: pd.DataFrame | None = None
    error: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.result is not None:
            return "COMPLETED"
        state = getattr(self.future, "status", "finished")
        states = {"finished": "COMPLETED", "error": "ERROR", "cancelled": "ERROR"}
        return states.get(state, "EXECUTING")


class ForcedJobs:
    """The jobs of one server (in memory), run on a ``distributed.Client``.

    Parameters
    ----------
    ctx : ApiContext
        ``ctx.extras["dask_client"]`` is used if set; otherwise a client on the configured
        cluster (``dask`` section, :func:`zsds.pipeline.cluster.make_cluster`) is started at
        the first job and kept in ``extras``.
    """

    def __init__(self, ctx: ApiContext):
        self.ctx = ctx
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def client(self):
        extras = self.ctx.extras
        if extras.get("dask_client") is None:
            from distributed import Client

            from ..pipeline.cluster import make_cluster

            cluster, address = make_cluster(self.ctx.config)
            extras["dask_cluster"] = cluster
            extras["dask_client"] = Client(cluster if cluster is not None else address)
            extras["dask_owned"] = True
        return extras["dask_client"]

    def _images(self, principal: Principal, req: ForcedRequest) -> list[dict]:
        c, e = s.science_images.c, s.exposures.c
        pos = np.array([[p.ra, p.dec] for p in req.positions])
        cond = [visible_sql(principal, c.programid, c.obsjd, self.ctx.now_jd(),
                            self.ctx.proprietary_days),
                c.dec >= float(pos[:, 1].min()) - MAX_FOOTPRINT_DEG,
                c.dec <= float(pos[:, 1].max()) + MAX_FOOTPRINT_DEG]
        if req.jdstart is not None:
            cond.append(c.obsjd >= req.jdstart)
        if req.jdend is not None:
            cond.append(c.obsjd <= req.jdend)
        if len(pos) == 1:
            cond.append(cone_clause(c.ra, c.dec, pos[0, 0], pos[0, 1], MAX_FOOTPRINT_DEG))
        stmt = (select(s.science_images, e.exptime)
                .outerjoin(s.exposures, s.exposures.c.expid == c.expid)
                .where(*cond).order_by(c.obsjd, c.pid))
        with self.ctx.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def _references(self) -> dict:
        r = s.reference_images.c
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(select(r.id, r.field_id, r.filter_code, r.ccd_id, r.qid, r.jd_start,
                                       r.jd_end, r.version).order_by(r.version)).all()
        return {(x.field_id, x.filter_code, x.ccd_id, x.qid): (x.id, x.jd_start, x.jd_end)
                for x in rows}

    @staticmethod
    def job_id(principal: Principal, req: ForcedRequest) -> str:
        """Deterministic job ID of a submitter and request (resubmission -> same job)."""
        key = json.dumps({"who": principal.name, "programs": sorted(principal.programs),
                          "req": req.model_dump()}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def submit(self, principal: Principal, req: ForcedRequest) -> Job:
        """Plan and start a job (or return the identical job already submitted)."""
        jid = self.job_id(principal, req)
        with self.lock:
            job = self.jobs.get(jid)
            if job is not None and job.status != "ERROR":
                return job
        pos = np.array([[p.ra, p.dec] for p in req.positions])
        tasks = plan_tasks(self._images(principal, req), pos, self.ctx.layout.root,
                           self._references())
        job = Job(jid, principal.name, len(pos), len(tasks))
        if tasks:
            job.future = run_forced(self.client(), tasks)
        else:
            job.result = plan_empty()
        with self.lock:
            self.jobs[jid] = job
        return job

    def get(self, principal: Principal, job_id: str) -> Job:
        """The job if ``principal`` submitted it (anonymous jobs: anyone), else a 404."""
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None or (job.owner is not None and job.owner != principal.name):
            raise not_found(f"no forced-photometry job {job_id}")
        return job

    def result(self, job: Job) -> pd.DataFrame:
        """The result table of a completed job (fetched from the cluster once)."""
        if job.result is None and job.status == "COMPLETED":
            job.result = job.future.result()
            job.future = None
        elif job.status == "ERROR" and job.error is None and job.future is not None:
            job.error = str(job.future.exception())
            job.future = None
        return job.result


def plan_empty() -> pd.DataFrame:
    """The (empty) result of a job that covers no difference image."""
    from ..stages.forcedphot import FORCED_COLUMNS

    return pd.DataFrame(columns=list(FORCED_COLUMNS))


def jobs_of(ctx: ApiContext) -> ForcedJobs:
    """The job manager of a context (created on first use)."""
    extras = ctx.extras
    if "forced_jobs" not in extras:
        extras["forced_jobs"] = ForcedJobs(ctx)
    return extras["forced_jobs"]


def _status(job: Job) -> dict:
    done = job.status
    return {"job_id": job.job_id, "status": done, "n_positions": job.n_positions,
            "n_images": job.n_images, "error": job.error,
            "result_url": f"/forcedphot/jobs/{job.job_id}/result" if done == "COMPLETED" else None}


_JOB_ID = Path(..., pattern=r"^[0-9a-f]{24}$", description="Job ID from the submission")


@router.post("/forcedphot/jobs", status_code=202, summary="Submit a forced-photometry job")
def submit_endpoint(req: ForcedRequest, ctx: ApiContext = Depends(get_ctx),
                    principal: Principal = Depends(get_principal)):
    """Submit up to ``api.max_forced_positions`` positions and a JD range; returns the job ID."""
    limit = ctx.config.api.max_forced_positions
    if len(req.positions) > limit:
        raise bad_request(f"{len(req.positions)} positions; a request takes at most {limit}")
    if req.jdstart is not None and req.jdend is not None and req.jdstart > req.jdend:
        raise bad_request(f"jdstart ({req.jdstart}) is after jdend ({req.jdend})")
    job = jobs_of(ctx).submit(principal, req)
    return JSONResponse(_status(job), status_code=202)


@router.get("/forcedphot/jobs/{job_id}", summary="Status of a forced-photometry job")
def status_endpoint(job_id: str = _JOB_ID, ctx: ApiContext = Depends(get_ctx),
                    principal: Principal = Depends(get_principal)):
    """``EXECUTING``, ``COMPLETED`` (with ``result_url``) or ``ERROR`` (with ``error``)."""
    manager = jobs_of(ctx)
    job = manager.get(principal, job_id)
    if job.status != "EXECUTING":
        manager.result(job)
    return _status(job)


@router.get("/forcedphot/jobs/{job_id}/result", summary="Result of a forced-photometry job")
def result_endpoint(job_id: str = _JOB_ID, format: Format = Query("json"),
                    ctx: ApiContext = Depends(get_ctx),
                    principal: Principal = Depends(get_principal)):
    """The photometry table (ZFPS columns); 409 while the job runs or after an error."""
    manager = jobs_of(ctx)
    job = manager.get(principal, job_id)
    table = manager.result(job) if job.status != "EXECUTING" else None
    if table is None:
        raise HTTPException(status_code=409, detail=f"job {job_id} is {job.status}"
                            + (f": {job.error}" if job.error else ""))
    return table_response(table, format, name=f"forcedphot_{job_id}")
