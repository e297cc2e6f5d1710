"""Per-amplifier detector model: gain, read noise, dark current, saturation, non-linearity.

The non-linearity follows ``ztf_ccd_amp_nonlinearity.txt``: with ``x`` the raw DN after the
overscan (floating bias) is subtracted, the linear signal is
``DN_true = x / (A x**2 + B x + 1)``. With ``A < 0 < B`` the raw response is super-linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Amplifier", "linearize", "delinearize"]


@dataclass(frozen=True)
class Amplifier:
    """Nominal values of one amplifier (readout quadrant) of the zsds camera model.

    Attributes
    ----------
    ccd_id, amp_id : int
        CCD 1..16 and amplifier 0..3 (``qid - 1``).
    gain : float
        e-/ADU.
    read_noise : float
        e- RMS.
    dark_current : float
        e-/s per pixel.
    saturate : float
        Raw ADU (bias included) at which a pixel saturates.
    bias_level : float
        Mean raw bias level, ADU.
    nl_a, nl_b : float
        Non-linearity coefficients A (per DN^2) and B (per DN).
    """

    ccd_id: int
    amp_id: int
    gain: float
    read_noise: float
    dark_current: float
    saturate: float
    bias_level: float
    nl_a: float
    nl_b: float

    @property
    def qid(self) -> int:
        return self.amp_id + 1

    @property
    def rcid(self) -> int:
        return 4 * (self.ccd_id - 1) + self.amp_id


def linearize(raw_dn, a: float, b: float):
    """Correct overscan-subtracted raw DN for non-linearity: ``x / (A x^2 + B x + 1)``.

    Parameters
    ----------
    raw_dn : array-like
        Overscan-subtracted raw signal, DN.
    a, b : float
        Coefficients of the amplifier.

    Returns
    -------
    ndarray
        Linear signal, DN, same dtype as the input if floating.
    """
    x = np.asarray(raw_dn)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x / ((a * x + b) * x + 1.0)


def delinearize(true_dn, a: float, b: float):
    """Inverse of :func:`linearize`: the raw DN recorded for a linear signal (for simulation).

    Solves ``A t x^2 + (B t - 1) x + t = 0`` for the root continuous with ``x = t`` at 0.
    """
    t = np.asarray(true_dn)
    if not np.issubdtype(t.dtype, np.floating):
        t = t.astype(np.float64)
    a, b = t.dtype.type(a), t.dtype.type(b)
    p = 1.0 - b * t
    disc = np.sqrt(np.maximum(p * p - 4.0 * a * t * t, 0.0))
    return 2.0 * t / (p + disc)
