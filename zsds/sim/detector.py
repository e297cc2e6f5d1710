"""Static detector truth of one readout quadrant: bias pattern, pixel response, defects.

Everything is drawn from a generator seeded by (seed, ccd_id, qid), so a quadrant's detector
is the same in every night of a simulation and independent of which other quadrants are
simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DetectorTruth", "make_detector", "DEFECT_HOT", "DEFECT_DEAD", "DEFECT_BADCOL",
           "vignetting"]

#: Bits of :attr:`DetectorTruth.defects`.
DEFECT_HOT = 1
DEFECT_DEAD = 2
DEFECT_BADCOL = 4


@dataclass(frozen=True)
class DetectorTruth:
    """Static truth of one quadrant, numpy ``[y, x]`` in stored orientation.

    Attributes
    ----------
    bias_pattern : float32 array
        Fixed 2-D bias structure, ADU, added on top of the row-wise (floating) bias level.
    pixel_response : float32 array
        Small-scale pixel response (PRNU, dead pixels, dead columns); median 1.
    illumination : float32 array
        Large-scale response (vignetting and optics), relative to the optical axis (<= 1).
    dark_current : float32 array
        Dark current, e-/s (hot pixels included).
    defects : uint8 array
        ``DEFECT_HOT | DEFECT_DEAD | DEFECT_BADCOL`` bits.
    """

    bias_pattern: np.ndarray
    pixel_response: np.ndarray
    illumination: np.ndarray
    dark_current: np.ndarray
    defects: np.ndarray


def vignetting(ew_deg: np.ndarray, ns_deg: np.ndarray) -> np.ndarray:
    """Relative throughput of the optics at focal-plane position (degrees from the axis).

    A smooth fall-off reaching about 12% at the corners of the focal plane (5.2 deg).
    """
    rho2 = (np.asarray(ew_deg) ** 2 + np.asarray(ns_deg) ** 2) / 5.2**2
    return 1.0 - 0.10 * rho2 - 0.02 * rho2**2


def _smooth_field(rng, shape, scale_px, amplitude):
    """A smooth random field of RMS ``amplitude`` with correlation length ``scale_px``."""
    small = (max(2, int(np.ceil(shape[0] / scale_px)) + 3),
             max(2, int(np.ceil(shape[1] / scale_px)) + 3))
    coarse = rng.standard_normal(small)
    field = ndimage.zoom(coarse, (shape[0] / (small[0] - 3), shape[1] / (small[1] - 3)),
                         order=1, mode="nearest")[: shape[0], : shape[1]]
    field = field - field.mean()
    return (amplitude * field / max(field.std(), 1e-12)).astype(np.float32)


def make_detector(seed: int, ccd_id: int, qid: int, shape: tuple[int, int], geometry,
                  read_noise_adu: float) -> DetectorTruth:
    """Draw the static detector truth of a quadrant.

    Parameters
    ----------
    seed : int
        Simulation seed.
    ccd_id, qid : int
        The quadrant.
    shape : tuple of int
        (rows, columns).
    geometry : zsds.camera.QuadrantGeometry
        For the vignetting pattern.
    read_noise_adu : float
        Read noise, ADU (sets the amplitude of the bias structure and hot-pixel offsets).
    """
    rng = np.random.default_rng([seed, 7, ccd_id, qid])
    ny, nx = shape
    defects = np.zeros(shape, np.uint8)
    bias = (_smooth_field(rng, shape, 400, 0.6 * read_noise_adu)
            + rng.normal(0, 0.15 * read_noise_adu, nx).astype(np.float32)[None, :])
    prnu = rng.standard_normal(shape, dtype=np.float32)
    prnu *= np.float32(0.008)
    prnu += np.float32(1.0)
    prnu *= 1.0 + _smooth_field(rng, shape, 30, 0.003)
    n_pix = ny * nx
    hot = rng.choice(n_pix, size=max(1, n_pix // 20000), replace=False)
    dead = rng.choice(n_pix, size=max(1, n_pix // 40000), replace=False)
    dark = np.full(shape, 1.0, np.float32)
    dark.flat[hot] = rng.uniform(30, 3000, hot.size)
    bias.flat[hot] += rng.uniform(15, 300, hot.size) * read_noise_adu / 1.5
    defects.flat[hot] |= DEFECT_HOT
    prnu.flat[dead] = rng.uniform(0.0, 0.5, dead.size)
    defects.flat[dead] |= DEFECT_DEAD
    for _ in range(max(1, nx // 1000)):
        col = int(rng.integers(5, nx - 5))
        y0 = int(rng.integers(0, ny // 2))
        rows = slice(y0, ny)
        if rng.random() < 0.5:
            prnu[rows, col] *= rng.uniform(0.2, 0.6)
        else:
            bias[rows, col] += rng.uniform(20, 200) * read_noise_adu / 1.5
        defects[rows, col] |= DEFECT_BADCOL
    prnu /= np.median(prnu)
    ys = np.arange(ny, dtype=np.float32)[:, None]
    xs = np.arange(nx, dtype=np.float32)[None, :]
    ew, ns = geometry.pixel_to_focal(xs, ys, shape)
    illum = vignetting(ew, ns).astype(np.float32)
    return DetectorTruth(bias.astype(np.float32), prnu, illum, dark, defects)
