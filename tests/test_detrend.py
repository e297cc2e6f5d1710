"""Cosmic-ray flagging (zsds.core.detrend): hits are found, stars and noise are not flagged."""

import numpy as np
import pytest
from scipy.special import erf

from zsds.core.detrend import coarse_sky, cosmic_ray_mask

SKY, GAIN, RN = 150.0, 6.0, 10.0


def _star(shape, x, y, flux, fwhm):
    """Pixel-integrated Gaussian, DN."""
    s = fwhm / 2.3548 * np.sqrt(2.0)
    yy, xx = np.arange(shape[0]), np.arange(shape[1])
    fx = 0.5 * (erf((xx + 0.5 - x) / s) - erf((xx - 0.5 - x) / s))
    fy = 0.5 * (erf((yy + 0.5 - y) / s) - erf((yy - 0.5 - y) / s))
    return flux * np.outer(fy, fx)


def _scene(fwhm, seed=3, n_stars=400, n_hits=30, shape=(600, 600)):
    rng = np.random.default_rng(seed)
    truth = np.full(shape, SKY)
    stars = rng.uniform(10, shape[1] - 10, (n_stars, 2))
    for (x, y), f in zip(stars, 10 ** rng.uniform(3, 5.5, n_stars)):
        truth += _star(shape, x, y, f, fwhm)
    hits = np.zeros(shape, bool)
    for _ in range(n_hits):  # tracks of 1-6 pixels, 60-400 DN per pixel
        x, y = rng.uniform(20, shape[1] - 20, 2)
        length, angle = rng.uniform(0, 6), rng.uniform(0, np.pi)
        for t in np.linspace(0, length, int(length * 2) + 1):
            hits[int(y + t * np.sin(angle)), int(x + t * np.cos(angle))] = True
    truth[hits] += rng.uniform(60, 400, hits.sum())
    var = truth / GAIN + (RN / GAIN) ** 2
    image = (truth + rng.normal(0, np.sqrt(var))).astype(np.float32)
    return image, var.astype(np.float32), hits, stars


@pytest.mark.parametrize("fwhm", [1.3, 1.8, 3.0])
def test_hits_are_found_and_stars_are_not(fwhm):
    image, var, hits, stars = _scene(fwhm)
    flagged = cosmic_ray_mask(image, var)
    from scipy import ndimage
    tracks, n = ndimage.label(hits, structure=np.ones((3, 3)))
    found = ndimage.maximum(flagged, tracks, np.arange(1, n + 1))
    assert np.mean(found) >= 0.95  # hits found
    assert (flagged & hits).sum() >= 0.85 * hits.sum()  # and most of their pixels
    # no star core flagged unless a hit landed on it
    cores = np.round(stars).astype(int)
    clean = ~hits[cores[:, 1], cores[:, 0]]
    assert flagged[cores[clean, 1], cores[clean, 0]].sum() == 0
    # few flags away from hits (the one-pixel growth around them is allowed)
    near_hits = ndimage.binary_dilation(hits, iterations=1)
    assert (flagged & ~near_hits).sum() <= 3


def test_pure_noise_and_bad_pixels_give_no_flags():
    rng = np.random.default_rng(5)
    var = np.full((500, 500), SKY / GAIN + (RN / GAIN) ** 2, np.float32)
    image = (SKY + rng.normal(0, np.sqrt(var))).astype(np.float32)
    bad = np.zeros(image.shape, bool)
    image[100, 100] = 5e4  # a hot pixel, known from the bad-pixel mask
    image[:, 300] = 0.0  # a dead column
    bad[100, 100] = bad[:, 300] = True
    assert not cosmic_ray_mask(image, var, bad).any()
    # without the bad-pixel mask the hot pixel is (rightly) as sharp as a hit
    assert cosmic_ray_mask(image, var)[100, 100]


def test_hits_next_to_saturation_are_left_to_the_saturation_flag():
    image, var, hits, _ = _scene(1.8, n_hits=0)
    image[200:203, 200] += 3000.0
    sat = np.zeros(image.shape, bool)
    sat[201, 201] = True
    assert not cosmic_ray_mask(image, var, saturated=sat)[200:203, 200].any()
    assert cosmic_ray_mask(image, var)[200:203, 200].all()


def test_coarse_sky_follows_a_gradient():
    yy, xx = np.mgrid[:700, :650]
    sky = (100 + 0.05 * xx + 0.02 * yy).astype(np.float32)
    est = coarse_sky(sky)
    assert est.shape == sky.shape
    assert np.abs(est - sky)[40:-40, 40:-40].max() < 1.0
