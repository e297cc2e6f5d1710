"""Measured FFTW plans shared through one wisdom file, so that every process uses the same plan.

``FFTW_MEASURE`` plans of a full quadrant are 2-3 times faster than ``FFTW_ESTIMATE`` ones,
but measuring picks among candidate algorithms by timing, so two processes measuring
independently may pick different plans, whose results differ in the last bits. Here a shape
is measured once, by whichever process needs it first, under an exclusive lock on the wisdom
file; every other process (Dask workers, SLURM jobs on other nodes, a re-run next week)
imports that file and builds its plans from the wisdom alone (``FFTW_WISDOM_ONLY``), so
they run the same algorithm and products stay bit-identical between runs.

The default file is per user, ``$XDG_CACHE_HOME/zsds/fftw-wisdom.bin`` (``~/.cache``);
a cluster sets ``processing.fft_wisdom`` to a path on the shared file system.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..core.fft import FFTPlans, export_wisdom, get_plans, import_wisdom

__all__ = ["default_wisdom_path", "measured_plans"]

log = logging.getLogger(__name__)
_EFFORT = "FFTW_MEASURE"
_IMPORTED: dict[str, float] = {}   # wisdom file -> mtime imported by this process
_LOCK = threading.Lock()


def default_wisdom_path() -> Path:
    """``$XDG_CACHE_HOME/zsds/fftw-wisdom.bin`` (``~/.cache/zsds/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zsds" / "fftw-wisdom.bin"


def _import_file(path: Path) -> None:
    try:
        mtime = path.stat().st_mtime
    except OSError:  # missing (or its directory is not one)
        return
    if _IMPORTED.get(str(path)) == mtime:
        return
    try:
        import_wisdom(path.read_bytes())
    except (ValueError, OSError) as exc:
        log.warning("FFTW wisdom %s is unreadable (%s): it will be measured again", path, exc)
        return
    _IMPORTED[str(path)] = mtime


def _from_wisdom(shape, threads) -> FFTPlans | None:
    try:
        return get_plans(shape, np.float32, threads, effort=_EFFORT, wisdom_only=True)
    except RuntimeError:
        return None


def measured_plans(shape, threads: int = 1, path: Path | None = None) -> FFTPlans:
    """Measured float32 plans of ``shape``, identical in every process sharing ``path``.

    Parameters
    ----------
    shape : (int, int)
        Padded transform shape, numpy ``[y, x]``.
    threads : int
        FFTW threads.
    path : Path, optional
        Wisdom file (:func:`default_wisdom_path` if None). Created, with its directory, if
        missing; a shape it lacks is measured once (about 3 s for a full quadrant) under an
        exclusive lock and appended.
    """
    path = Path(path) if path is not None else default_wisdom_path()
    with _LOCK:
        _import_file(path)
        plans = _from_wisdom(shape, threads)
        if plans is not None:
            return plans
        try:
            plans = _measure_into(path, shape, threads)
        except OSError as exc:  # read-only or missing cache directory: never fail a quadrant
            log.warning("FFTW wisdom %s unusable (%s): estimated plans used", path, exc)
            return get_plans(shape, np.float32, threads)
    if plans is None:  # wisdom this FFTW cannot use (another CPU's codelets)
        log.warning("FFTW wisdom %s does not give a plan for %s here: estimated plan used", path, shape)
        plans = get_plans(shape, np.float32, threads)
    return plans


def _measure_into(path: Path, shape, threads) -> FFTPlans | None:
    """Measure ``shape`` into the wisdom file under an exclusive lock (unless another process did)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _import_file(path)  # another process may have measured it meanwhile
            plans = _from_wisdom(shape, threads)
            if plans is None:
                log.info("measuring FFTW plans of %s x %s (%d thread%s) into %s", *shape,
                         threads, "s" if threads > 1 else "", path)
                FFTPlans(shape, np.float32, threads, effort=_EFFORT)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(export_wisdom())
                os.replace(tmp, path)
                _IMPORTED[str(path)] = path.stat().st_mtime
                plans = _from_wisdom(shape, threads)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return plans
