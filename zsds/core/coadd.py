"""Co-addition kernels for reference images (pure numpy: no I/O, no Dask, thread-safe).

The reference co-add is built by streaming the epochal images through two passes:

1. a robust per-pixel estimate, the median of a bounded subset of the inputs
   (:func:`median_reference`);
2. an inverse-variance weighted mean of all inputs (:class:`CoaddAccumulator`), each pixel
   rejected where it deviates from the median estimate by more than ``nsigma`` times its
   expected scatter (noise of the input, noise of the median, the source's Poisson noise and a
   fractional term for seeing differences at star cores), rejections grown by ``grow`` pixels;
   optionally also where the deviation smoothed at the PSF scale is significant
   (``smooth_sigma``): a faint asteroid or transient is below the per-pixel threshold in
   every pixel, yet its PSF-filtered significance in its input, ``S``, leaves about
   ``S / sqrt(N)`` in a co-add of N inputs.

Every input is first put on the reference grid with :func:`prepare_input`: background
subtracted, scaled to the common zero point (:func:`zero_point_scale`), bad pixels set to NaN,
resampled (:func:`_resample`). Memory: the accumulator holds four full-size arrays; the median
pass holds ``n_median`` resampled inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from . import filters

__all__ = ["zero_point_scale", "input_weight", "prepare_input", "median_reference",
           "CoaddAccumulator", "CoaddResult", "point_source_noise", "smoothed_outliers",
           "COADD_MASK"]

#: Bits of the co-add mask (``mask`` array / not a ZTF definition).
COADD_MASK = {"NO_DATA": 1, "LOW_COVERAGE": 2}


def zero_point_scale(magzp: float, zp_common: float) -> float:
    """Factor putting an image of zero point ``magzp`` on zero point ``zp_common``.

    ``m = magzp - 2.5 log10(f) = zp_common - 2.5 log10(scale * f)``, so
    ``scale = 10**(-0.4 (magzp - zp_common))``.
    """
    return float(10.0 ** (-0.4 * (magzp - zp_common)))


def input_weight(scale: float, sky_rms: float) -> float:
    """Inverse-variance weight of a scaled input: ``1 / (scale * sky_rms)**2`` (DN^-2)."""
    if not (scale > 0 and sky_rms > 0):
        raise ValueError(f"scale and sky_rms must be positive, not {scale!r}, {sky_rms!r}")
    return 1.0 / (scale * sky_rms) ** 2


def _resample(image, wcs_in, wcs_out, shape) -> np.ndarray:
    """Resample ``image`` (NaN = no data) onto ``wcs_out``; NaN outside the input.

    Bilinear interpolation through :func:`reproject.reproject_interp` with the inputs' full
    TAN-SIP solutions, until ``zsds.core.align`` provides the fast exact resampler.
    """
    from reproject import reproject_interp

    out, _ = reproject_interp((image, wcs_in), wcs_out, shape_out=tuple(shape), order="bilinear",
                              return_footprint=True)
    return out.astype(np.float32)


def prepare_input(image, bad, background, scale: float, wcs_in, wcs_out, shape) -> np.ndarray:
    """Background-subtract, scale, mask and resample one epochal image.

    Parameters
    ----------
    image : 2-D array
        Calibrated epochal image, DN.
    bad : 2-D bool array
        Pixels to exclude (become NaN, and so do their resampled neighbours).
    background : 2-D array or float
        Background to subtract, DN.
    scale : float
        Zero-point scale (:func:`zero_point_scale`).
    wcs_in, wcs_out : astropy.wcs.WCS
        The input's solution and the reference grid.
    shape : (int, int)
        Shape of the reference grid.

    Returns
    -------
    2-D float32 array on the reference grid, common-zero-point DN, NaN where no data.
    """
    data = (np.asarray(image, np.float32) - background) * np.float32(scale)
    data[np.asarray(bad, bool)] = np.nan
    return _resample(data, wcs_in, wcs_out, shape)


def median_reference(stack) -> np.ndarray:
    """Per-pixel median of a (n, ny, nx) stack of resampled inputs, ignoring NaN."""
    stack = np.asarray(stack, np.float32)
    allnan = np.all(np.isnan(stack), axis=0)
    stack[:, allnan] = 0.0
    med = np.nanmedian(stack, axis=0).astype(np.float32)
    med[allnan] = np.nan
    return med


@dataclass(frozen=True)
class CoaddResult:
    """A co-add on the reference grid (numpy ``[y, x]``).

    Attributes
    ----------
    image : float32 array
        Weighted mean, common-zero-point DN, zero background; NaN without data.
    uncertainty : float32 array
        ``1 / sqrt(sum of weights)``, DN (background noise of the mean); NaN without data.
    coverage : uint16 array
        Number of inputs contributing to each pixel.
    weight : float32 array
        Sum of the weights, DN^-2.
    mask : uint16 array
        :data:`COADD_MASK` bits.
    n_rejected : list of int
        Pixels rejected as outliers in each input, in the order they were added.
    """

    image: np.ndarray
    uncertainty: np.ndarray
    coverage: np.ndarray
    weight: np.ndarray
    mask: np.ndarray
    n_rejected: list


class CoaddAccumulator:
    """Streaming inverse-variance weighted mean with outlier rejection against a reference.

    Parameters
    ----------
    shape : (int, int)
        Reference grid shape.
    reference : 2-D array, optional
        Robust estimate of the co-add (:func:`median_reference`); without it nothing is rejected.
    reference_sigma : float
        1-sigma noise of ``reference``, DN.
    nsigma : float
        Rejection threshold, in units of the expected scatter.
    frac : float
        Fractional tolerance on the reference level (PSF differences at star cores).
    grow : int
        Rejected pixels are grown by this many pixels (the resampling spreads an outlier).
    smooth_sigma : float, optional
        Gaussian sigma (pixels, about the PSF's) of the second test: the deviation from the
        reference smoothed by that Gaussian, over its expected noise (the per-pixel variance
        smoothed by the squared kernel), beyond ``nsigma`` is rejected with a margin of
        ``2 smooth_sigma`` pixels. None: per-pixel test only.

    Notes
    -----
    Not thread-safe (it accumulates); use one per co-add.
    """

    def __init__(self, shape, reference=None, reference_sigma: float = 0.0, *, nsigma: float = 5.0,
                 frac: float = 0.3, grow: int = 1, smooth_sigma: float | None = None):
        self.shape = tuple(shape)
        self.smooth_sigma = None if smooth_sigma is None else float(smooth_sigma)
        self.reference = None if reference is None else np.asarray(reference, np.float32)
        self.reference_sigma = float(reference_sigma)
        self.nsigma, self.frac, self.grow = float(nsigma), float(frac), int(grow)
        self._sw = np.zeros(self.shape, np.float64)
        self._swx = np.zeros(self.shape, np.float64)
        self._n = np.zeros(self.shape, np.uint16)
        self.n_rejected: list[int] = []

    def outliers(self, data, sigma: float, poisson_scale: float = 0.0) -> np.ndarray:
        """Pixels of ``data`` deviating from the reference (bool, grown)."""
        if self.reference is None:
            return np.zeros(self.shape, bool)
        ref = self.reference
        pos = np.clip(np.nan_to_num(ref), 0, None)
        var = sigma ** 2 + self.reference_sigma ** 2 + poisson_scale * pos + (self.frac * pos) ** 2
        with np.errstate(invalid="ignore"):
            bad = np.abs(data - ref) > self.nsigma * np.sqrt(var)
        if self.grow > 0 and bad.any():
            bad = filters.binary_dilation(bad, self.grow, square=True)
        if self.smooth_sigma:
            bad |= smoothed_outliers(data - ref, var, self.smooth_sigma, self.nsigma)
        return bad

    def add(self, data, sigma: float, *, poisson_scale: float = 0.0) -> int:
        """Add one resampled input.

        Parameters
        ----------
        data : 2-D array
            Input on the reference grid (:func:`prepare_input`), NaN where no data.
        sigma : float
            Its background noise per pixel, common-zero-point DN (weight ``1/sigma**2``).
        poisson_scale : float
            ``scale / gain``: source Poisson variance per DN of signal, for the rejection.

        Returns
        -------
        int
            Number of pixels rejected.
        """
        if data.shape != self.shape:
            raise ValueError(f"data shape {data.shape} differs from the co-add's {self.shape}")
        rejected = self.outliers(data, sigma, poisson_scale)
        use = np.isfinite(data) & ~rejected
        w = 1.0 / sigma ** 2
        self._sw[use] += w
        self._swx[use] += w * data[use]
        self._n[use] += 1
        n_rej = int(np.count_nonzero(rejected & np.isfinite(data)))
        self.n_rejected.append(n_rej)
        return n_rej

    def result(self, *, low_coverage: float = 0.5) -> CoaddResult:
        """The co-add so far; ``LOW_COVERAGE`` below ``low_coverage`` x the maximum coverage."""
        has = self._sw > 0
        image = np.full(self.shape, np.nan, np.float32)
        unc = np.full(self.shape, np.nan, np.float32)
        image[has] = self._swx[has] / self._sw[has]
        unc[has] = 1.0 / np.sqrt(self._sw[has])
        mask = np.zeros(self.shape, np.uint16)
        mask[~has] |= COADD_MASK["NO_DATA"]
        mask[has & (self._n < low_coverage * max(int(self._n.max()), 1))] |= COADD_MASK["LOW_COVERAGE"]
        return CoaddResult(image, unc, self._n.copy(), self._sw.astype(np.float32), mask,
                           list(self.n_rejected))


def smoothed_outliers(diff, var, sigma: float, nsigma: float) -> np.ndarray:
    """Pixels near a deviation that is significant at the PSF scale (bool).

    Parameters
    ----------
    diff : 2-D array
        Input minus reference, DN (NaN = no data, contributes nothing).
    var : 2-D array
        Expected per-pixel variance of ``diff``, DN^2.
    sigma : float
        Gaussian sigma of the smoothing kernel ``k``, pixels.
    nsigma : float
        Threshold on ``|sum k diff| / sqrt(sum k^2 var)``.

    Returns
    -------
    2-D bool array: pixels within ``2 sigma`` of a significant smoothed deviation.

    Notes
    -----
    The noise assumes independent pixels; resampling correlates them and lowers the true
    noise of the smoothed map, so the test is conservative.
    """
    d = np.nan_to_num(np.asarray(diff, np.float64), nan=0.0)
    v = np.nan_to_num(np.asarray(var, np.float64), nan=0.0)
    num = ndimage.gaussian_filter(d, sigma, mode="constant")
    # sum k^2 v for the normalised Gaussian k: Gaussian of sigma / sqrt(2) over 4 pi sigma^2
    den = ndimage.gaussian_filter(v, sigma / np.sqrt(2), mode="constant") / (4 * np.pi * sigma ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = np.abs(num) > nsigma * np.sqrt(den)
    if not hit.any():
        return hit
    r = int(np.ceil(2 * sigma))
    g = np.arange(-r, r + 1)
    disk = (g[None, :] ** 2 + g[:, None] ** 2) <= r * r
    return ndimage.binary_dilation(hit, structure=disk)


def point_source_noise(image, psf, bad=None, *, clip: float = 3.0, n_iter: int = 5) -> float:
    """1-sigma flux noise of PSF-optimal photometry at a blank position of ``image``.

    The image (background-subtracted) is cross-correlated with the normalised PSF stamp and
    divided by ``sum(psf**2)``: each pixel is then the optimal flux estimate of a point source
    centred there. The sigma-clipped robust scatter of that map (sources clipped) is the flux
    noise, including pixel-to-pixel correlations (resampling), which the per-pixel RMS misses.

    Parameters
    ----------
    image : 2-D array
        Background-subtracted image, DN (NaN allowed).
    psf : 2-D array
        PSF stamp (any normalisation).
    bad : 2-D bool array, optional
        Pixels to exclude.

    Returns
    -------
    float
        Flux noise, DN; the 5-sigma limit is ``zp - 2.5 log10(5 * noise)``.
    """
    p = np.asarray(psf, float)
    p = p / p.sum()
    img = np.array(image, np.float64)
    invalid = ~np.isfinite(img) if bad is None else (~np.isfinite(img) | np.asarray(bad, bool))
    img[invalid] = 0.0
    filt = signal.fftconvolve(img, p[::-1, ::-1], mode="same") / np.sum(p ** 2)
    near_bad = filters.binary_dilation(invalid, p.shape[0] // 2)
    vals = filt[~near_bad]
    keep = np.ones(vals.size, bool)
    for _ in range(n_iter):
        med = np.median(vals[keep])
        sig = 1.4826 * np.median(np.abs(vals[keep] - med))
        keep = np.abs(vals - med) < clip * sig
    return float(1.4826 * np.median(np.abs(vals[keep] - np.median(vals[keep]))))
