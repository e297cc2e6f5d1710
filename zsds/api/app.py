"""The application factory of the archive API: ``create_app``.

``zsds serve`` runs it on uvicorn; tests use ``fastapi.testclient.TestClient(create_app(...))``.
The OpenAPI description is at ``/openapi.json`` and interactive docs at ``/docs``.
"""

from __future__ import annotations

import importlib
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..config import ZsdsConfig, load_config
from .context import ApiContext, build_context

__all__ = ["create_app", "close_context", "ROUTER_MODULES"]

#: Modules contributing an ``APIRouter`` named ``router`` (in this order).
ROUTER_MODULES = ("zsds.api.images", "zsds.api.cutouts", "zsds.api.lightcurves",
                  "zsds.api.candidates", "zsds.api.forced", "zsds.api.ivoa", "zsds.api.viewer")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    close_context(app.state.ctx)


def close_context(ctx: ApiContext) -> None:
    """Close the Dask client and cluster the API started itself (not injected ones)."""
    if ctx.extras.pop("dask_owned", False):
        client = ctx.extras.pop("dask_client", None)
        cluster = ctx.extras.pop("dask_cluster", None)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def create_app(config: ZsdsConfig | None = None, context: ApiContext | None = None) -> FastAPI:
    """Build the FastAPI application of an archive.

    Parameters
    ----------
    config : ZsdsConfig, optional
        Used to build the context when ``context`` is not given (default: :func:`load_config`).
    context : ApiContext, optional
        A ready context (tests pass one with their own clock or engine).

    Returns
    -------
    fastapi.FastAPI
        With the context at ``app.state.ctx``.
    """
    if context is None:
        context = build_context(config or load_config())
    app = FastAPI(title="zsds archive API", version="1", lifespan=_lifespan,
                  description="Images, cutouts, lightcurves, candidates, alerts, forced "
                              "photometry and IVOA services of a zsds archive "
                              "(docs/archive-api.md).")
    app.state.ctx = context
    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(name).router)
    return app
