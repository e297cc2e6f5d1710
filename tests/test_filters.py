"""The OpenCV-backed filters give what the scipy.ndimage calls they replace give."""

import numpy as np
import pytest
from scipy import ndimage

from zsds.core import filters


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (67, 53)).astype(np.float32)
    img[20:24, 30:33] += 40.0
    return img


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant", "mirror"])
@pytest.mark.parametrize("sigma,truncate", [(1.0, 4.0), (0.85, 3.0), (2.6, 4.0)])
def test_gaussian_filter_matches_scipy(image, mode, sigma, truncate):
    ref = ndimage.gaussian_filter(image.astype(np.float64), sigma, mode=mode, truncate=truncate)
    out = filters.gaussian_filter(image, sigma, mode=mode, truncate=truncate)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_correlate_separable_matches_two_correlate1d(image):
    ky, kx = np.array([1.0, 2.0, 1.0]) / 4, np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    ref = ndimage.correlate1d(ndimage.correlate1d(image.astype(np.float64), ky, axis=0), kx, axis=1)
    np.testing.assert_allclose(filters.correlate_separable(image, ky, kx), ref, atol=2e-5)
    with pytest.raises(ValueError, match="odd"):
        filters.correlate_separable(image, [0.5, 0.5], kx)
    with pytest.raises(ValueError, match="border mode"):
        filters.gaussian_filter(image, 1.0, mode="wrapped")


@pytest.mark.parametrize("iterations", [1, 3, 6])
@pytest.mark.parametrize("square", [False, True])
def test_binary_dilation_matches_scipy(image, iterations, square):
    mask = image > 1.8
    mask[0, 5] = mask[-1, -1] = True  # touching the border
    structure = np.ones((3, 3), bool) if square else None
    ref = ndimage.binary_dilation(mask, structure=structure, iterations=iterations)
    out = filters.binary_dilation(mask, iterations, square=square)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, ref)
    assert not filters.binary_dilation(np.zeros((5, 5), bool), 2).any()


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("size", [3, 7])
def test_maximum_filter_matches_scipy(image, mode, size):
    np.testing.assert_array_equal(filters.maximum_filter(image, size, mode=mode),
                                  ndimage.maximum_filter(image, size=size, mode=mode))
    mask = image > 2.0
    np.testing.assert_array_equal(filters.maximum_filter(mask, size, mode=mode),
                                  ndimage.maximum_filter(mask, size=size, mode=mode))
