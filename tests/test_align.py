"""Resampling of a reference onto a science grid (zsds.core.align), 512^2 TAN-SIP pairs."""

from __future__ import annotations

import numpy as np
import pytest
from alignfactory import sip_wcs, smooth_image

from zsds.core.align import OUTSIDE, _exact_map, pixel_map, resample_to_grid

SHAPE = (512, 512)


@pytest.fixture(scope="module")
def wcs_pair():
    """Science and reference WCSs: 0.37/-0.21 px shift, 0.01 deg rotation, other SIP."""
    return sip_wcs(SHAPE), sip_wcs(SHAPE, rot_deg=0.01, shift=(0.37, -0.21), sip_scale=0.9)


def test_interpolated_map_matches_exact(wcs_pair):
    ws, wr = wcs_pair
    pm = pixel_map(ws, wr, SHAPE, step=64)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(float)
    ex, ey = _exact_map(ws, wr, xx.ravel(), yy.ravel())
    err = np.hypot(pm.x.ravel() - ex, pm.y.ravel() - ey).max()
    assert err < 0.01 and pm.max_error < 0.01
    assert err < 5 * pm.max_error + 1e-6  # the reported error is representative


def test_agrees_with_reproject_bilinear(wcs_pair):
    reproject = pytest.importorskip("reproject")
    ws, wr = wcs_pair
    ref = smooth_image(SHAPE)
    ours = resample_to_grid(ref, wr, ws, SHAPE)
    theirs, foot = reproject.reproject_interp((ref, wr), ws, shape_out=SHAPE, order="bilinear")
    np.testing.assert_array_equal(ours.footprint, foot.astype(bool))
    ok = ours.footprint
    np.testing.assert_allclose(ours.image[ok], theirs[ok], rtol=1e-4)


def test_bad_reference_pixel_contaminates_the_pixels_it_touches(wcs_pair):
    ws, wr = wcs_pair
    mask = np.zeros(SHAPE, np.int16)
    mask[200, 300] = 4
    mask[201, 300] = 1
    delta = np.zeros(SHAPE, np.float32)
    delta[200:202, 300] = 1.0
    out = resample_to_grid(delta, wr, ws, SHAPE, mask=mask)
    touched = out.image > 0
    assert 2 <= touched.sum() <= 9
    f = out.footprint  # outside it the mask is OUTSIDE (all bits)
    np.testing.assert_array_equal((out.mask != 0)[f], touched[f])
    assert set(np.unique(out.mask[touched])) <= {1, 4, 5}
    bool_out = resample_to_grid(delta, wr, ws, SHAPE, mask=mask != 0)
    np.testing.assert_array_equal(bool_out.mask[f], touched[f])
    assert bool_out.mask[~f].all()


def test_variance_footprint_and_outside(wcs_pair):
    ws, _ = wcs_pair
    wr = sip_wcs(SHAPE, shift=(100.0, 0.0))  # reference shifted by 100 px in x
    var = np.full(SHAPE, 7.0, np.float32)
    out = resample_to_grid(np.ones(SHAPE), wr, ws, SHAPE, variance=var,
                           mask=np.zeros(SHAPE, np.int32))
    inside = out.footprint
    assert 0.75 < inside.mean() < 0.85
    np.testing.assert_allclose(out.variance[inside], 7.0, rtol=1e-6)
    assert np.isnan(out.image[~inside]).all() and (out.mask[~inside] == OUTSIDE).all()
    assert (out.mask[inside] == 0).all()
