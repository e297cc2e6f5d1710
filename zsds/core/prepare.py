"""Quadrant preparation: overscan subtraction, non-linearity correction, variance, raw QA.

This is the first step of every stage that uses pixels (calibration, instrumental
calibration, QA). Units and conventions:

* Images stay in **DN** (ADU): ZTF zero points are defined on bias-subtracted, linearised,
  flat-fielded DN. The gain (e-/ADU, header ``GAIN``) is used only to compute the noise, and
  is recorded in product headers.
* Order of operations: subtract the row-wise overscan level (and, if given, the master bias,
  i.e. the fixed 2-D bias pattern), then linearise with the amplifier's (A, B):
  ``DN_lin = x / (A x^2 + B x + 1)`` (``raw-camera-format.md``).
* Saturation is judged on the **raw** ADU, bias included: ``raw >= SATURATE``.
* Variance in DN^2: ``max(DN_lin, 0) / gain + (read_noise / gain)^2``, with the read noise
  from the header (e-) or, if not given, the measured overscan noise (ADU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..camera.detector import linearize
from .overscan import overscan_level

__all__ = ["PreparedQuadrant", "prepare_quadrant", "raw_qa"]


@dataclass(frozen=True)
class PreparedQuadrant:
    """A prepared readout quadrant (numpy ``[y, x]``, stored orientation).

    Attributes
    ----------
    image : ndarray of float32
        Overscan- (and master-bias-) subtracted, linearised signal, DN.
    saturated : ndarray of bool
        Pixels at or above ``SATURATE`` in the raw data.
    variance : ndarray of float32
        Per-pixel variance, DN^2.
    bias_rows : ndarray of float64
        The smoothed row-wise bias level subtracted, ADU.
    qa : dict
        Raw QA numbers: ``bias_level`` (median of ``bias_rows``, ADU), ``bias_row_range``
        (ADU), ``overscan_noise`` (ADU RMS), ``saturated_fraction``, ``median_counts``
        (median of ``image`` over unsaturated pixels, DN).
    """

    image: np.ndarray
    saturated: np.ndarray
    variance: np.ndarray
    bias_rows: np.ndarray
    qa: dict = field(default_factory=dict)


def raw_qa(image: np.ndarray, saturated: np.ndarray, bias_rows: np.ndarray,
           overscan_noise: float) -> dict:
    """Raw QA numbers of a prepared quadrant (see :class:`PreparedQuadrant`)."""
    good = image[~saturated]
    return {
        "bias_level": float(np.median(bias_rows)),
        "bias_row_range": float(np.ptp(bias_rows)),
        "overscan_noise": float(overscan_noise),
        "saturated_fraction": float(saturated.mean()),
        "median_counts": float(np.median(good)) if good.size else float("nan"),
    }


def prepare_quadrant(data: np.ndarray, overscan: np.ndarray, qid: int, gain: float,
                     saturate: float, nl_a: float, nl_b: float, *,
                     read_noise: float | None = None,
                     master_bias: np.ndarray | None = None) -> PreparedQuadrant:
    """Prepare one raw readout quadrant.

    Parameters
    ----------
    data : ndarray of uint16, shape (ny, nx)
        Raw image pixels, ADU.
    overscan : ndarray of uint16, shape (ny, n_overscan)
        Raw overscan pixels, ADU.
    qid : int
        Quadrant 1..4 (overscan readout direction).
    gain : float
        e-/ADU.
    saturate : float
        Raw ADU (bias included) at and above which a pixel is saturated.
    nl_a, nl_b : float
        Non-linearity coefficients of the amplifier.
    read_noise : float, optional
        Read noise, e-; default: the measured overscan noise.
    master_bias : ndarray, optional
        Master bias (fixed 2-D pattern, DN, overscan-subtracted) to remove before
        linearising.

    Returns
    -------
    PreparedQuadrant
    """
    if data.ndim != 2 or overscan.ndim != 2 or data.shape[0] != overscan.shape[0]:
        raise ValueError(f"image {data.shape} and overscan {overscan.shape} must be 2-D "
                         "with the same number of rows")
    if gain <= 0:
        raise ValueError(f"gain={gain} must be positive (e-/ADU)")
    ov = overscan_level(overscan, qid)
    x = data.astype(np.float32) - ov.level[:, None].astype(np.float32)
    if master_bias is not None:
        if master_bias.shape != data.shape:
            raise ValueError(f"master bias shape {master_bias.shape} != image {data.shape}")
        x -= master_bias.astype(np.float32, copy=False)
    image = linearize(x, nl_a, nl_b).astype(np.float32, copy=False)
    saturated = data >= saturate
    rn_adu = ov.noise if read_noise is None else read_noise / gain
    variance = (np.maximum(image, 0.0) / np.float32(gain)
                + np.float32(rn_adu**2)).astype(np.float32)
    qa = raw_qa(image, saturated, ov.level, ov.noise)
    return PreparedQuadrant(image, saturated, variance, ov.level, qa)
