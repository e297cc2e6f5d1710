"""Row-wise (floating) bias level from the overscan columns of a readout quadrant.

The bias level of a ZTF amplifier floats from row to row on scales of ~100 rows; every row of
the overscan samples it with ``n_overscan`` pixels. Per row we take a sigma-clipped mean of the
overscan pixels, leaving out the first :data:`N_SKIP` columns *in readout order* (they carry
charge trailing from the last data column read), then smooth the per-row estimates along the
rows: a short running median removes rows hit by cosmic rays or bleed trails, a cubic
Savitzky-Golay filter beats down the per-row noise while following structure on ~100-row
scales (window :data:`SMOOTH_WINDOW` rows; its response is flat to better than 1% for
periods above ~60 rows).

Readout order (``raw-camera-format.md``): the first overscan column read is column 0 of the
overscan array for q1 and q4, and its last column for q2 and q3.

All values are raw ADU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import savgol_filter

__all__ = ["OverscanLevel", "overscan_level", "usable_overscan", "N_SKIP", "SMOOTH_WINDOW"]

#: Overscan columns ignored at the start of the readout (ZTF does the same).
N_SKIP = 2
#: Savitzky-Golay window (rows) and polynomial order of the along-row smoothing.
SMOOTH_WINDOW = 21
SMOOTH_ORDER = 3
#: Running-median width (rows) applied before the Savitzky-Golay filter.
MEDIAN_WINDOW = 5

_MAD_TO_SIGMA = 1.482602218505602


@dataclass(frozen=True)
class OverscanLevel:
    """The row-wise bias level of a quadrant.

    Attributes
    ----------
    level : ndarray of float64, shape (ny,)
        Smoothed bias level per row, ADU: subtract ``level[:, None]`` from the image.
    raw_level : ndarray of float64, shape (ny,)
        Unsmoothed per-row clipped mean, ADU.
    noise : float
        Robust RMS of a single overscan pixel about its row level, ADU (the read noise in
        ADU when the overscan is clean).
    """

    level: np.ndarray
    raw_level: np.ndarray
    noise: float


def usable_overscan(overscan: np.ndarray, qid: int, n_skip: int = N_SKIP) -> np.ndarray:
    """The overscan columns kept for the level: all but the first ``n_skip`` read.

    Parameters
    ----------
    overscan : ndarray, shape (ny, n_overscan)
        Overscan pixels as stored.
    qid : int
        Quadrant 1..4 (sets the readout direction).
    n_skip : int
        Columns to drop at the start of the readout; fewer if the overscan is narrow (at
        least one column is always kept).
    """
    if qid not in (1, 2, 3, 4):
        raise ValueError(f"qid={qid} must be 1..4")
    n = overscan.shape[1]
    skip = min(n_skip, max(n - 1, 0))
    return overscan[:, skip:] if qid in (1, 4) else overscan[:, : n - skip]


def _clipped_row_mean(ov: np.ndarray, nsigma: float, iterations: int = 3):
    """Per-row sigma-clipped mean and the global robust pixel RMS."""
    med = np.median(ov, axis=1)
    resid = ov - med[:, None]
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(resid)))
    if sigma <= 0:
        sigma = float(np.std(resid)) or 1.0
    keep = np.ones(ov.shape, bool)
    center = med
    for _ in range(iterations):
        keep = np.abs(ov - center[:, None]) <= nsigma * sigma
        n = keep.sum(axis=1)
        total = np.where(keep, ov, 0.0).sum(axis=1)
        center = np.where(n > 0, total / np.maximum(n, 1), med)
    ncol = ov.shape[1]
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(ov - center[:, None])))
    if ncol > 1:
        noise *= np.sqrt(ncol / (ncol - 1))  # residuals about a mean of ncol pixels
    return center, noise


def _smooth_rows(values: np.ndarray, window: int, order: int, med_window: int) -> np.ndarray:
    n = values.size
    out = median_filter(values, size=min(med_window, n), mode="nearest") if n >= 3 else values
    win = min(window, n if n % 2 else n - 1)
    if win > order + 1:
        out = savgol_filter(out, win, order, mode="interp")
    return out


def overscan_level(overscan: np.ndarray, qid: int, *, nsigma: float = 3.0,
                   n_skip: int = N_SKIP, window: int = SMOOTH_WINDOW,
                   order: int = SMOOTH_ORDER, median_window: int = MEDIAN_WINDOW
                   ) -> OverscanLevel:
    """Robust, smoothed row-wise bias level and the overscan noise.

    Parameters
    ----------
    overscan : ndarray, shape (ny, n_overscan)
        Overscan pixels as stored (any numeric type), ADU.
    qid : int
        Quadrant 1..4 (readout direction).
    nsigma : float
        Clipping threshold in units of the robust pixel RMS.
    n_skip : int
        Overscan columns ignored at the start of the readout.
    window, order : int
        Savitzky-Golay window (odd, rows) and polynomial order; ``window=1`` disables it.
    median_window : int
        Running-median width in rows applied first (1 disables it).

    Returns
    -------
    OverscanLevel
    """
    ov = usable_overscan(np.asarray(overscan, dtype=np.float64), qid, n_skip)
    if ov.ndim != 2 or ov.shape[0] == 0 or ov.shape[1] == 0:
        raise ValueError(f"overscan of shape {np.shape(overscan)} has no usable pixels")
    raw, sigma = _clipped_row_mean(ov, nsigma)
    level = _smooth_rows(raw, window, order, median_window)
    return OverscanLevel(level, raw, float(sigma))
