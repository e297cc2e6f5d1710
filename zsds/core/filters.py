"""Fast image filters: drop-in equivalents of the :mod:`scipy.ndimage` calls the pipeline
makes on full quadrants, computed with OpenCV's vectorised kernels.

Each function returns what the named ``scipy.ndimage`` call returns for the same arguments
(float32 arithmetic instead of float64: differences ~1e-7 relative), 5-40 times faster on a
3072 x 3080 quadrant. Border conventions are scipy's: ``"reflect"`` (``d c b a | a b c d``),
``"nearest"``, ``"constant"`` (zero outside) and ``"mirror"``. Arrays are numpy ``[y, x]``.

OpenCV runs single-threaded here: the pipeline's parallelism is Dask's, one task per core.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["binary_dilation", "correlate_separable", "gaussian_filter", "maximum_filter"]

cv2.setNumThreads(1)

_BORDERS = {"reflect": cv2.BORDER_REFLECT, "nearest": cv2.BORDER_REPLICATE,
            "constant": cv2.BORDER_CONSTANT, "mirror": cv2.BORDER_REFLECT_101}


def _border(mode: str) -> int:
    try:
        return _BORDERS[mode]
    except KeyError:
        raise ValueError(f"unsupported border mode {mode!r}; use one of {sorted(_BORDERS)}") from None


def _float_image(image) -> np.ndarray:
    a = np.asarray(image)
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    return np.ascontiguousarray(a, dtype=dtype)


def correlate_separable(image, kernel_y, kernel_x, *, mode: str = "reflect") -> np.ndarray:
    """Correlate a 2-D image with ``kernel_y`` along axis 0 and ``kernel_x`` along axis 1.

    As ``ndimage.correlate1d(ndimage.correlate1d(image, ky, axis=0), kx, axis=1)`` with the
    same ``mode`` (kernels of odd length, centred). float32 out (float64 for float64 input).
    """
    img = _float_image(image)
    ky = np.asarray(kernel_y, img.dtype)
    kx = np.asarray(kernel_x, img.dtype)
    if ky.size % 2 == 0 or kx.size % 2 == 0:
        raise ValueError("separable kernels must have odd lengths")
    return cv2.sepFilter2D(img, -1, kx, ky, borderType=_border(mode))


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The unit-sum 1-D Gaussian scipy uses: radius ``int(truncate * sigma + 0.5)`` pixels."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_filter(image, sigma: float, *, mode: str = "reflect", truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing of a 2-D image, ``sigma`` in pixels (both axes), as
    ``ndimage.gaussian_filter(image, sigma, mode=mode, truncate=truncate)``."""
    if sigma <= 0:
        return _float_image(image).copy()
    k = gaussian_kernel1d(sigma, truncate)
    return correlate_separable(image, k, k, mode=mode)


def binary_dilation(mask, iterations: int = 1, *, square: bool = False) -> np.ndarray:
    """Binary dilation of a 2-D boolean mask, as ``ndimage.binary_dilation(mask,
    iterations=iterations)`` (the 4-connected cross, grown ``iterations`` times: a diamond of
    that radius) or, with ``square``, the 8-connected 3 x 3 structure (a square). Nothing
    outside the image is set (scipy's ``border_value=0``)."""
    m = np.ascontiguousarray(mask, dtype=bool)
    if iterations <= 0 or not m.any():
        return m.copy()
    shape = cv2.MORPH_RECT if square else cv2.MORPH_CROSS
    out = cv2.dilate(m.view(np.uint8), cv2.getStructuringElement(shape, (3, 3)),
                     iterations=int(iterations), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.view(bool)


def maximum_filter(image, size: int, *, mode: str = "reflect") -> np.ndarray:
    """Maximum over ``size`` x ``size`` boxes, as ``ndimage.maximum_filter(image, size=size,
    mode=mode)`` for ``"reflect"``/``"nearest"``/``"mirror"`` (all equal to the maximum over
    the part of the box inside the image) or ``"constant"`` (zero outside). bool, uint8,
    float32 and float64 images keep their type; others become float32."""
    a = np.asarray(image)
    if a.dtype == bool:
        return maximum_filter(a.view(np.uint8), size, mode=mode).view(bool)
    if a.dtype not in (np.uint8, np.float32, np.float64):
        a = a.astype(np.float32)
    a = np.ascontiguousarray(a)
    kernel = np.ones((int(size), int(size)), np.uint8)
    if mode == "constant":
        return cv2.dilate(a, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    _border(mode)
    return cv2.dilate(a, kernel)  # OpenCV's default border never wins the maximum
