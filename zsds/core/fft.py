"""FFTW plans for real 2-D images: plan once per process, reuse for every quadrant.

Planning a 3072 x 3200 transform with ``FFTW_MEASURE`` takes 1-2.5 s, executing it ~40 ms, so
plans are built once per (shape, dtype, threads) and kept. :func:`get_plans` keeps them in a
module-level cache: this is the documented exception to the "no module state" rule of the
package. The cache is guarded by a lock (Dask workers run tasks in threads), and each
:class:`FFTPlans` serialises its own executions with a lock because it transforms through
internal aligned buffers. A caller that wants no shared state builds its own ``FFTPlans``.

Conventions: numpy ``[y, x]``; forward transforms are unnormalised (``numpy.fft.rfft2``),
inverse transforms carry the ``1 / (ny * nx)`` factor (``numpy.fft.irfft2``).
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import pyfftw

__all__ = ["FFTPlans", "get_plans", "padded_shape", "fast_size", "export_wisdom",
           "import_wisdom", "clear_plans"]

_CACHE: dict[tuple, FFTPlans] = {}
_CACHE_LOCK = threading.Lock()


def fast_size(n: int, primes: tuple[int, ...] = (2, 3, 5)) -> int:
    """Smallest even ``m >= n`` whose prime factors are all in ``primes``.

    Even sizes keep FFTW's real transforms on its fast path; 3080 -> 3200, 3072 -> 3072.
    """
    m = max(int(n), 2)
    while True:
        if m % 2 == 0:
            r = m
            for p in primes:
                while r % p == 0:
                    r //= p
            if r == 1:
                return m
        m += 1


def padded_shape(shape, primes: tuple[int, ...] = (2, 3, 5)) -> tuple[int, ...]:
    """Per-axis :func:`fast_size` of ``shape`` (e.g. ``(3072, 3080) -> (3072, 3200)``)."""
    return tuple(fast_size(n, primes) for n in shape)


#: Planner flag of the pipeline's plans (deterministic; see :class:`FFTPlans`).
DEFAULT_EFFORT = "FFTW_ESTIMATE"


class FFTPlans:
    """Forward (real -> complex) and inverse plans of one 2-D shape.

    Parameters
    ----------
    shape : (int, int)
        Shape of the real array transformed (already padded to a fast size).
    dtype : numpy dtype
        ``float32`` (single-precision FFTW) or ``float64``.
    threads : int
        FFTW threads (the pipeline passes ``processing.fft_threads``).
    effort : str
        FFTW planner flag, :data:`DEFAULT_EFFORT` by default. ``FFTW_MEASURE`` times
        candidate algorithms, so two processes may pick different plans whose results
        differ in the last bits; a candidate at the S_corr threshold can then flip between
        runs. ``FFTW_ESTIMATE`` picks the plan deterministically: reprocessing (and a SLURM
        versus a local run) gives bit-identical products. Measured plans are deterministic
        when every process takes them from the same wisdom (``wisdom_only``; see
        :mod:`zsds.io.fftwisdom`), and 2-3 times faster.
    wisdom_only : bool
        Build the plans only from imported wisdom (``FFTW_WISDOM_ONLY``); ``RuntimeError``
        if there is none for this shape, threads and effort.

    Attributes
    ----------
    count : int
        Transforms executed by these plans since construction (forward + inverse).
    """

    def __init__(self, shape, dtype=np.float32, threads: int = 1, effort: str = DEFAULT_EFFORT,
                 wisdom_only: bool = False):
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"shape must be 2-D with sizes >= 2, got {shape!r}")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.complex64)
        self.threads = int(threads)
        self.count = 0
        self._lock = threading.Lock()
        self._real = pyfftw.empty_aligned(self.shape, dtype=self.dtype)
        self._cplx = pyfftw.empty_aligned(self.fourier_shape, dtype=self.cdtype)
        flags = (effort, "FFTW_WISDOM_ONLY") if wisdom_only else (effort,)
        self._fwd = pyfftw.FFTW(self._real, self._cplx, axes=(0, 1), direction="FFTW_FORWARD",
                                flags=flags, threads=self.threads)
        self._inv = pyfftw.FFTW(self._cplx, self._real, axes=(0, 1), direction="FFTW_BACKWARD",
                                flags=flags + ("FFTW_DESTROY_INPUT",), threads=self.threads)

    @property
    def fourier_shape(self) -> tuple[int, int]:
        """Shape of the half-plane transform, ``(ny, nx // 2 + 1)``."""
        return self.shape[0], self.shape[1] // 2 + 1

    def rfft2(self, a: np.ndarray) -> np.ndarray:
        """Forward transform of ``a``, zero-padded at the high-index end to :attr:`shape`.

        Returns a new (SIMD-aligned) complex array of :attr:`fourier_shape`.
        """
        ny, nx = a.shape
        if ny > self.shape[0] or nx > self.shape[1]:
            raise ValueError(f"array of shape {a.shape} exceeds the plan shape {self.shape}")
        out = pyfftw.empty_aligned(self.fourier_shape, dtype=self.cdtype)
        with self._lock:
            self._real[:ny, :nx] = a
            self._real[ny:, :] = 0
            self._real[:ny, nx:] = 0
            self._fwd.update_arrays(self._real, out)
            self._fwd.execute()
            self.count += 1
        return out

    def irfft2(self, A: np.ndarray, out_shape=None, *, overwrite_input: bool = False) -> np.ndarray:
        """Normalised inverse transform of ``A``, cropped to ``out_shape`` (default: full).

        Returns a new real array. ``A`` is preserved unless ``overwrite_input`` (then an
        aligned ``A``, e.g. from :meth:`rfft2`, is transformed in place without a copy).
        """
        if A.shape != self.fourier_shape or A.dtype != self.cdtype:
            raise ValueError(f"A has shape {A.shape} and dtype {A.dtype}, the plan expects "
                             f"{self.fourier_shape} {self.cdtype}")
        ny, nx = self.shape if out_shape is None else out_shape
        scale = self.dtype.type(1.0 / (self.shape[0] * self.shape[1]))
        aligned = overwrite_input and pyfftw.is_n_byte_aligned(A, pyfftw.simd_alignment) \
            and A.flags.c_contiguous
        with self._lock:
            if aligned:
                self._inv.update_arrays(A, self._real)
            else:
                self._cplx[...] = A
                self._inv.update_arrays(self._cplx, self._real)
            self._inv.execute()
            self.count += 1
            out = self._real[:ny, :nx] * scale
        return out


def get_plans(shape, dtype=np.float32, threads: int = 1, effort: str = DEFAULT_EFFORT,
              wisdom_only: bool = False) -> FFTPlans:
    """The process-wide :class:`FFTPlans` of ``(shape, dtype, threads, effort)``, planned on first use."""
    key = (tuple(int(n) for n in shape), np.dtype(dtype).str, int(threads), effort, bool(wisdom_only))
    with _CACHE_LOCK:
        plans = _CACHE.get(key)
        if plans is None:
            plans = _CACHE[key] = FFTPlans(key[0], dtype=dtype, threads=threads, effort=effort,
                                           wisdom_only=wisdom_only)
    return plans


def clear_plans() -> None:
    """Forget every cached plan (tests; frees the buffers)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def export_wisdom() -> bytes:
    """FFTW's accumulated wisdom (all precisions) as bytes, for :func:`import_wisdom`."""
    parts = pyfftw.export_wisdom()
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def import_wisdom(wisdom: bytes) -> tuple[bool, bool, bool]:
    """Load wisdom from :func:`export_wisdom` so later plans are built without measuring.

    Returns the success flags of (double, single, long double) wisdom.
    """
    parts, pos = [], 0
    while pos < len(wisdom):
        if pos + 8 > len(wisdom):
            raise ValueError("wisdom must be the bytes returned by export_wisdom() (truncated)")
        (n,) = struct.unpack_from("<Q", wisdom, pos)
        parts.append(bytes(wisdom[pos + 8:pos + 8 + n]))
        pos += 8 + n
    if len(parts) != 3:
        raise ValueError("wisdom must be the bytes returned by export_wisdom()")
    return tuple(pyfftw.import_wisdom(tuple(parts)))
