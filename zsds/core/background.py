"""Background and background-RMS maps of a calibrated quadrant (sep, SExtractor's method).

The background is the sigma-clipped mode of ``box x box`` pixel cells, median-filtered over
``filter_size`` cells and interpolated with a bicubic spline (sep's ``Background``). A second
pass masks the sources found above the first background (dilated) so their wings do not raise
the sky. All values in the image's units (DN), numpy ``[y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage

from ..errors import AlgorithmError
from . import filters

__all__ = ["BackgroundMaps", "background_maps", "map_median"]


@dataclass(frozen=True)
class BackgroundMaps:
    """Background of one image.

    Attributes
    ----------
    sky : float32 array
        Background level per pixel, DN.
    rms : float32 array
        Background noise (1 sigma) per pixel, DN.
    global_sky, global_rms : float
        Image-wide background level and noise, DN.
    """

    sky: np.ndarray
    rms: np.ndarray
    global_sky: float
    global_rms: float


def _sep_background(image, mask, box, filter_size):
    return sep.Background(image, mask=mask, bw=box, bh=box, fw=filter_size, fh=filter_size)


_SMOOTH = np.array([1.0, 2.0, 1.0], np.float32) / 4.0


def _source_mask(image, bkg, mask, nsigma=3.0, grow=3, minarea=5):
    """Pixels of sources above ``nsigma`` background sigma after a 3x3 (1-2-1) smoothing,
    in groups of at least ``minarea`` connected pixels, grown by ``grow`` pixels.

    Linear in the number of pixels whatever the image holds (a cloudy or nebulous quadrant
    whose structure percolates into one huge "source" costs the same as an empty one).
    """
    sub = np.where(mask, np.float32(0), image - bkg.back())
    smooth = filters.correlate_separable(sub, _SMOOTH, _SMOOTH)
    # noise of the smoothed image: the 1-2-1 x 1-2-1 kernel scales white noise by 3/8
    above = smooth > nsigma * 0.375 * bkg.rms()
    labels, n = ndimage.label(above)
    if n == 0:
        return above
    big = np.bincount(labels.ravel(), minlength=n + 1) >= minarea
    big[0] = False
    return filters.binary_dilation(big[labels], grow)


def background_maps(image, mask=None, *, box: int = 64, filter_size: int = 3,
                    mask_sources: bool = True) -> BackgroundMaps:
    """Background and background-RMS maps of an image.

    Parameters
    ----------
    image : 2-D array
        Calibrated image, DN (any float type; non-finite pixels are treated as masked).
    mask : 2-D bool array, optional
        True for pixels to ignore (bad, saturated).
    box : int
        Background cell size, pixels.
    filter_size : int
        Median filter over cells (odd).
    mask_sources : bool
        Re-estimate with detected sources masked (two passes).

    Returns
    -------
    BackgroundMaps

    Raises
    ------
    AlgorithmError
        If fewer than 10% of the pixels are usable.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    bad = ~np.isfinite(img) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(img))
    if bad.mean() > 0.9:
        raise AlgorithmError(f"only {100 * (1 - bad.mean()):.1f}% of pixels usable for background",
                             usable_fraction=float(1 - bad.mean()))
    img = np.where(bad, np.float32(0), img)
    bkg = _sep_background(img, bad, box, filter_size)
    if mask_sources:
        bkg = _sep_background(img, bad | _source_mask(img, bkg, bad), box, filter_size)
    return BackgroundMaps(bkg.back().astype(np.float32), bkg.rms().astype(np.float32),
                          float(bkg.globalback), float(bkg.globalrms))


def map_median(smooth_map, step: int = 4) -> float:
    """Median of a background or RMS map from every ``step``-th pixel along each axis.

    The maps are splines through ``box``-pixel cells (64 px), so a 4-px lattice holds the
    same distribution of values: the median agrees with that of all pixels to ~1e-4
    relative (4e-5 on a simulated quadrant) at 1/16 of the cost (0.08 s less per map).
    """
    return float(np.median(np.asarray(smooth_map)[::step, ::step]))
