"""From the ``dask:`` configuration section to a running Dask cluster.

Three kinds of cluster, chosen by ``dask.cluster``:

``local``
    a :class:`distributed.LocalCluster` on this machine (``n_workers``, ``threads_per_worker``,
    ``memory_limit``, ``dashboard_address`` from the configuration);
``slurm``
    a :class:`dask_jobqueue.SLURMCluster` built from a SLURM *profile* (``dask.slurm_profile``),
    scaled adaptively between the profile's ``minimum_jobs`` and ``maximum_jobs``;
``tcp://host:port``
    an already running scheduler; nothing is started.

A profile is a YAML file in the repository's ``cluster/`` directory (``local-slurm``,
``production``) or any path, in dask-jobqueue's schema (``jobqueue: slurm: {...}``) plus a
``zsds:`` section with the adaptive bounds and ``distributed.scheduler.allowed-failures``.

Not thread-safe: create clusters from one thread (the night runner's main thread).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.config
import yaml

from ..config import ZsdsConfig
from ..errors import ConfigError

__all__ = [
    "PROFILE_DIR",
    "LOCAL_ALLOWED_FAILURES",
    "known_profiles",
    "load_slurm_profile",
    "make_cluster",
    "slurm_job_script",
    "open_client",
]

log = logging.getLogger(__name__)

#: Directory of the named SLURM profiles (``cluster/<name>.yaml`` in the repository).
PROFILE_DIR = Path(__file__).resolve().parents[2] / "cluster"

#: ``distributed.scheduler.allowed-failures`` for a LocalCluster (no profile applies there).
LOCAL_ALLOWED_FAILURES = 5

_ALLOWED_FAILURES_KEY = "distributed.scheduler.allowed-failures"
_PLACEHOLDER_SCHEDULER = "tcp://<insert-scheduler-address-here>:8786"
# jobqueue.slurm keys whose SLURMCluster keyword is not the key with '-' -> '_'.
_RENAMED_KEYS = {"name": "job_name"}
# Keywords of the cluster (scheduler side) rather than of each job.
_CLUSTER_ONLY_KEYWORDS = {"scheduler_options"}
_REQUIRED_SLURM_KEYS = ("cores", "memory", "walltime")
_ADAPT_KEYS = {"minimum_jobs", "maximum_jobs", "interval", "wait_count", "target_duration"}


def known_profiles() -> list[str]:
    """Names of the profiles shipped in :data:`PROFILE_DIR`.

    Returns
    -------
    list of str
        Sorted profile names (file names without ``.yaml``).
    """
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _profile_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    looks_like_path = os.sep in text or text.endswith((".yaml", ".yml"))
    path = Path(os.path.expanduser(text)) if looks_like_path else PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        where = "file not found" if looks_like_path else f"no {path}"
        msg = (
            f"dask.slurm_profile: unknown SLURM profile {text!r} ({where}); "
            f"known profiles: {', '.join(known_profiles()) or 'none'}, or give a YAML path"
        )
        raise ConfigError(msg)
    return path


def _read_profile_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"SLURM profile {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"SLURM profile {path}: the top level must be a mapping")
    unknown = set(data) - {"jobqueue", "zsds"}
    if unknown:
        raise ConfigError(f"SLURM profile {path}: unknown top-level key(s) {sorted(unknown)}")
    return data


def _slurm_kwargs(section: Any, path: Path) -> dict[str, Any]:
    """Translate ``jobqueue.slurm`` (dask-jobqueue's YAML keys) into SLURMCluster keywords."""
    if not isinstance(section, dict):
        raise ConfigError(f"SLURM profile {path}: missing mapping jobqueue.slurm")
    import dask_jobqueue  # noqa: F401  (registers the jobqueue.* defaults in dask.config)

    allowed = set(dask.config.get("jobqueue.slurm"))
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"SLURM profile {path}: unknown key(s) jobqueue.slurm.{unknown}")
    missing = [k for k in _REQUIRED_SLURM_KEYS if section.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"SLURM profile {path}: jobqueue.slurm.{missing[0]} is required")
    kwargs = {
        _RENAMED_KEYS.get(key, key.replace("-", "_")): value
        for key, value in section.items()
        if value is not None
    }
    if "log_directory" in kwargs:
        kwargs["log_directory"] = os.path.expandvars(os.path.expanduser(kwargs["log_directory"]))
    return kwargs


def _non_negative_int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"SLURM profile {path}: {key} must be an integer >= 0, not {value!r}")
    return value


def _adapt_settings(section: Any, path: Path) -> dict[str, Any]:
    """Validate ``zsds.adapt``: keywords of ``cluster.adapt()`` with a bounded maximum."""
    if not isinstance(section, dict) or "maximum_jobs" not in section:
        raise ConfigError(f"SLURM profile {path}: zsds.adapt.maximum_jobs is required (bound it)")
    unknown = sorted(set(section) - _ADAPT_KEYS)
    if unknown:
        raise ConfigError(f"SLURM profile {path}: unknown key(s) zsds.adapt.{unknown}")
    adapt = dict(section)
    for key, default in (("minimum_jobs", 0), ("maximum_jobs", None)):
        adapt[key] = _non_negative_int(adapt.get(key, default), f"zsds.adapt.{key}", path)
    if adapt["minimum_jobs"] > adapt["maximum_jobs"]:
        raise ConfigError(f"SLURM profile {path}: zsds.adapt.minimum_jobs exceeds maximum_jobs")
    return adapt


def _zsds_settings(section: Any, path: Path) -> dict[str, Any]:
    """Validate the ``zsds:`` section: adaptive bounds and the allowed-failures budget."""
    section = section or {}
    if not isinstance(section, dict):
        raise ConfigError(f"SLURM profile {path}: zsds must be a mapping")
    unknown = sorted(set(section) - {"adapt", "allowed_failures"})
    if unknown:
        raise ConfigError(f"SLURM profile {path}: unknown key(s) zsds.{unknown}")
    failures = section.get("allowed_failures", LOCAL_ALLOWED_FAILURES)
    return {
        "adapt": _adapt_settings(section.get("adapt"), path),
        "allowed_failures": _non_negative_int(failures, "zsds.allowed_failures", path),
    }


def load_slurm_profile(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a dask-jobqueue SLURM profile.

    Parameters
    ----------
    name_or_path : str or path-like
        A profile name in :data:`PROFILE_DIR` (``"local-slurm"``, ``"production"``) or the path
        of a YAML file (anything containing a path separator or ending in ``.yaml``/``.yml``).

    Returns
    -------
    dict
        ``{"name": str, "path": Path, "slurm": dict, "adapt": dict, "allowed_failures": int}``.
        ``slurm`` holds :class:`dask_jobqueue.SLURMCluster` keyword arguments
        (``SLURMCluster(**profile["slurm"])``); ``adapt`` holds ``cluster.adapt()`` keywords.

    Raises
    ------
    ConfigError
        If the profile does not exist (the message names it and lists the known ones), or a key
        is unknown, missing or invalid (the message names the file and the key).
    """
    path = _profile_path(name_or_path)
    data = _read_profile_yaml(path)
    slurm = _slurm_kwargs((data.get("jobqueue") or {}).get("slurm"), path)
    settings = _zsds_settings(data.get("zsds"), path)
    return {"name": path.stem, "path": path, "slurm": slurm, **settings}


def slurm_job_script(config: ZsdsConfig) -> str:
    """The batch script SLURM jobs of the configured profile run (``--print-job-script``).

    Parameters
    ----------
    config : ZsdsConfig
        Its ``dask.slurm_profile`` selects the profile.

    Returns
    -------
    str
        The script as dask-jobqueue submits it, with a placeholder scheduler address (the real
        one is known only once the scheduler runs).
    """
    from dask_jobqueue.slurm import SLURMJob

    profile = load_slurm_profile(config.dask.slurm_profile)
    job_kwargs = {k: v for k, v in profile["slurm"].items() if k not in _CLUSTER_ONLY_KEYWORDS}
    return SLURMJob(_PLACEHOLDER_SCHEDULER, name="dummy-name", **job_kwargs).job_script()


def _log_dashboard(cluster: Any) -> None:
    try:
        link = cluster.dashboard_link
    except (AttributeError, KeyError):
        link = None
    if link:
        log.info("Dask dashboard: %s", link)
    else:
        log.info("Dask dashboard not available (install bokeh>=3.1 to enable it)")


def _local_cluster(config: ZsdsConfig, n_workers: int | None) -> Any:
    from distributed import LocalCluster

    with dask.config.set({_ALLOWED_FAILURES_KEY: LOCAL_ALLOWED_FAILURES}):
        cluster = LocalCluster(
            n_workers=n_workers or config.dask.n_workers,
            threads_per_worker=config.dask.threads_per_worker,
            memory_limit=config.dask.memory_limit,
            dashboard_address=config.dask.dashboard_address,
        )
    log.info("LocalCluster %s with %d workers", cluster.scheduler_address, len(cluster.workers))
    return cluster


def _slurm_cluster(config: ZsdsConfig, n_workers: int | None) -> Any:
    from dask_jobqueue import SLURMCluster

    profile = load_slurm_profile(config.dask.slurm_profile)
    kwargs = dict(profile["slurm"])
    scheduler_options = dict(kwargs.get("scheduler_options") or {})
    scheduler_options.setdefault("dashboard_address", config.dask.dashboard_address)
    kwargs["scheduler_options"] = scheduler_options
    with dask.config.set({_ALLOWED_FAILURES_KEY: profile["allowed_failures"]}):
        cluster = SLURMCluster(**kwargs)
    if n_workers:
        cluster.scale(n_workers)
        log.info("SLURMCluster (profile %s): %d workers requested", profile["name"], n_workers)
    else:
        cluster.adapt(**profile["adapt"])
        log.info("SLURMCluster (profile %s): adaptive, %d..%d jobs", profile["name"],
                 profile["adapt"]["minimum_jobs"], profile["adapt"]["maximum_jobs"])
    return cluster


def make_cluster(config: ZsdsConfig, *, n_workers: int | None = None) -> tuple[Any, str]:
    """Start the cluster ``config.dask.cluster`` asks for.

    Parameters
    ----------
    config : ZsdsConfig
        The ``dask`` section selects and sizes the cluster.
    n_workers : int, optional
        LocalCluster: worker processes (overrides ``dask.n_workers``). SLURM: a fixed number of
        worker processes (``cluster.scale(n_workers)``, rounded up to whole jobs) instead of
        adaptive scaling. Ignored for an external scheduler.

    Returns
    -------
    cluster : LocalCluster or SLURMCluster or None
        The started cluster (the caller closes it); None for a ``tcp://`` scheduler.
    address : str
        The scheduler address to connect a :class:`distributed.Client` to.

    Raises
    ------
    ConfigError
        If the SLURM profile is missing or invalid.
    """
    kind = config.dask.cluster
    if kind == "local":
        cluster = _local_cluster(config, n_workers)
    elif kind == "slurm":
        cluster = _slurm_cluster(config, n_workers)
    else:
        log.info("Using the running scheduler %s (its own allowed-failures applies)", kind)
        return None, kind
    _log_dashboard(cluster)
    return cluster, cluster.scheduler_address


@contextmanager
def open_client(config: ZsdsConfig, *, n_workers: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` on the configured cluster, closed (with it) on exit.

    Parameters
    ----------
    config : ZsdsConfig
        See :func:`make_cluster`.
    n_workers : int, optional
        See :func:`make_cluster`.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client

    cluster, address = make_cluster(config, n_workers=n_workers)
    try:
        client = Client(cluster if cluster is not None else address)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
