"""What the endpoints of the archive API share: configuration, database, layout, stores, clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from astropy.time import Time
from sqlalchemy import Engine

from ..config import ZsdsConfig
from ..io.lcstore import LightcurveStore
from ..io.paths import ArchiveLayout

__all__ = ["ApiContext", "build_context", "current_jd"]


def current_jd() -> float:
    """The current time as a JD (UTC)."""
    return float(Time.now().jd)


@dataclass
class ApiContext:
    """Shared state of the archive API, stored at ``app.state.ctx``.

    Attributes
    ----------
    config : ZsdsConfig
    engine : sqlalchemy.Engine
        The operations database.
    layout : ArchiveLayout
        Paths of archive products.
    lcstore : LightcurveStore or None
        The lightcurve store, None if none has been built.
    now_jd : callable
        Returns the current JD (UTC); replaced in tests to move the proprietary period.
    extras : dict
        Lazily created shared resources (the forced-photometry job manager, the Dask client).
    """

    config: ZsdsConfig
    engine: Engine
    layout: ArchiveLayout
    lcstore: LightcurveStore | None
    now_jd: Callable[[], float] = current_jd
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def proprietary_days(self) -> float:
        """Proprietary period of programs 2 and 3, days (config ``api.proprietary_days``)."""
        return float(self.config.api.proprietary_days)


def build_context(config: ZsdsConfig) -> ApiContext:
    """The context of an archive described by ``config``.

    Creates missing database tables (e.g. ``api_tokens``); the lightcurve store is attached
    only if ``<root>/lightcurves/store.json`` exists.

    Parameters
    ----------
    config : ZsdsConfig

    Returns
    -------
    ApiContext
    """
    from ..db.ops import engine_from_config

    engine = engine_from_config(config)
    layout = ArchiveLayout(config.archive.root)
    store = LightcurveStore(layout.lightcurves_dir)
    return ApiContext(config=config, engine=engine, layout=layout,
                      lcstore=store if store.exists() else None)
