"""Reference images: co-add kernels, the build stage, Zarr storage, versions, Dask path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS
from numpy.testing import assert_allclose, assert_array_equal

from zsds.config import load_config
from zsds.core import coadd
from zsds.db import ops
from zsds.errors import NoWorkFound
from zsds.io import zarr_store
from zsds.io.paths import ArchiveLayout
from zsds.core import astrometry
from zsds.io.products import read_table
from zsds.stages.refimg import ReferenceParams, build_reference, build_references, psf_complexity

from refimgfactory import make_epochal_archive

KEY = (655, "zr", 13, 3)


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    config = load_config(environ={}, overrides={"archive": {"root": str(root)},
                                                "refcat": {"path": str(tmp_path / "norefcat")}})
    engine = ops.init_db(ops.engine_from_config(config))
    made = make_epochal_archive(root, engine, 6, seed=3)
    return config, engine, made


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- kernels
def test_accumulator_is_the_weighted_mean_without_outliers():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (4, 30, 40)).astype(np.float32)
    sig = np.array([1.0, 2.0, 0.5, 1.5])
    acc = coadd.CoaddAccumulator((30, 40))
    for d, sg in zip(data, sig):
        acc.add(d, sg)
    res = acc.result()
    w = 1 / sig ** 2
    assert_allclose(res.image, np.tensordot(w, data, 1) / w.sum(), rtol=1e-5)
    assert_allclose(res.uncertainty, 1 / np.sqrt(w.sum()), rtol=1e-6)
    assert np.all(res.coverage == 4) and not res.mask.any()


def test_accumulator_rejects_a_single_outlier_and_grows_it():
    ref = np.zeros((20, 20), np.float32)
    acc = coadd.CoaddAccumulator((20, 20), ref, 0.1, nsigma=5, grow=1)
    hit = np.zeros((20, 20), np.float32)
    hit[10, 10] = 100.0
    assert acc.add(hit, 1.0) == 9
    acc.add(np.zeros((20, 20), np.float32), 1.0)
    res = acc.result()
    assert res.image[10, 10] == 0 and res.coverage[10, 10] == 1 and res.coverage[0, 0] == 2


def test_smoothed_rejection_catches_a_faint_outlier_below_the_pixel_threshold():
    """A faint PSF-shaped outlier (peak 3.5 sigma per pixel, ~8 sigma PSF-filtered) passes the
    per-pixel test but not the smoothed one; pure noise is not rejected by either."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = 3.5 * np.exp(-0.5 * ((xx - 30) ** 2 + (yy - 33) ** 2) / 1.1 ** 2)
    noise = rng.normal(0, 1, (64, 64)).astype(np.float32)
    ref = np.zeros((64, 64), np.float32)
    plain = coadd.CoaddAccumulator((64, 64), ref, 0.0, nsigma=5)
    smooth = coadd.CoaddAccumulator((64, 64), ref, 0.0, nsigma=5, smooth_sigma=1.1)
    assert not plain.outliers(noise + blob, 1.0)[33, 30]
    hit = smooth.outliers(noise + blob, 1.0)
    assert hit[33, 30] and hit[33, 27] and not hit[5, 5]
    assert not smooth.outliers(noise, 1.0).any()


def test_psf_complexity_follows_the_number_of_stars():
    assert psf_complexity(58, 2, 2, 25.0) == (1, 0)
    assert psf_complexity(80, 2, 2, 25.0) == (1, 1)
    assert psf_complexity(150, 2, 2, 25.0) == (1, 2)
    assert psf_complexity(300, 2, 1, 25.0) == (2, 1)
    assert psf_complexity(5, 2, 2, 25.0) == (1, 0)


def test_point_source_noise_of_white_noise():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[-7:8, -7:8]
    p = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.2 ** 2)
    noise = coadd.point_source_noise(rng.normal(0, 3.0, (300, 300)), p)
    expect = 3.0 / np.sqrt(np.sum((p / p.sum()) ** 2))
    assert noise == pytest.approx(expect, rel=0.05)


def test_zero_point_scale_and_weight():
    assert coadd.zero_point_scale(26.0, 26.0) == 1.0
    assert coadd.zero_point_scale(27.0, 26.0) == pytest.approx(10 ** -0.4)
    with pytest.raises(ValueError, match="positive"):
        coadd.input_weight(1.0, 0.0)


# --------------------------------------------------------------------------- stage
def test_build_reference_products_rejection_and_depth(archive):
    config, engine, made = archive
    out = build_reference(config, *KEY, min_frames=5, engine=engine)
    assert out["status"] == "built" and out["version"] == 1 and out["n_frames"] == 6
    layout = ArchiveLayout(config.archive.root)
    for sfx in ("refimg.fits", "refunc.fits", "refcov.fits", "refbkg.fits", "refpsfcat.fits",
                "refsexcat.fits", "refpsf.fits", "refimlog.txt"):
        assert layout.ref_path(*KEY, sfx).exists(), sfx
    img = fits.getdata(layout.ref_path(*KEY, "refimg.fits"))
    unc = fits.getdata(layout.ref_path(*KEY, "refunc.fits"))
    cov = fits.getdata(layout.ref_path(*KEY, "refcov.fits"))
    ny, nx = img.shape
    assert np.median(cov[20:-20, 20:-20]) == 6
    # outliers present in one input only leave no 5-sigma residual
    for name, (x, y) in made["outliers"].items():
        xi, yi = int(round(x)), int(round(y))
        box = (img / unc)[yi - 2:yi + 3, xi - 2:xi + 3]
        assert np.nanmax(np.abs(box)) < 5, name
    # depth: flux noise close to the single-epoch noise / sqrt(N) (equal-quality inputs)
    single = made["rows"][0]["sky_rms"] * coadd.zero_point_scale(made["rows"][0]["magzp"], 26.0)
    assert out["flux_noise_dn"] > 0 and np.nanmedian(unc[20:-20, 20:-20]) == pytest.approx(
        single / np.sqrt(6), rel=0.15)


def test_reference_background_is_written_and_used_by_the_subtraction(archive):
    """The co-add's background maps are stored with it (``refbkg``) and the subtraction loads
    them instead of re-estimating: the same background-subtracted reference, within a small
    fraction of the noise; a missing or unreadable ``refbkg`` falls back to the estimate."""
    from zsds.stages import subtract

    config, engine, _ = archive
    build_reference(config, *KEY, min_frames=5, engine=engine)
    layout = ArchiveLayout(config.archive.root)
    ref_path, bkg_path = layout.ref_path(*KEY, "refimg.fits"), layout.ref_path(*KEY, "refbkg.fits")
    with fits.open(bkg_path) as h:
        sky, rms = h["SKY"].data, h["RMS"].data
    stored = subtract._load_image(ref_path, None, "ref")
    raw = np.nan_to_num(fits.getdata(ref_path).astype(np.float32))
    good = ~stored.bad
    assert_allclose(stored.data[good], (raw - sky)[good], atol=1e-3)
    assert_array_equal(stored.sky_rms, rms)
    bkg_path.rename(bkg_path.with_suffix(".moved"))
    estimated = subtract._load_image(ref_path, None, "ref")
    noise = float(np.median(estimated.sky_rms))
    assert np.max(np.abs(stored.data - estimated.data)[good]) < 0.05 * noise
    assert_allclose(stored.sky_rms, estimated.sky_rms, rtol=0.02)
    bkg_path.write_bytes(b"not a FITS file")
    assert_array_equal(subtract._load_image(ref_path, None, "ref").data, estimated.data)


def test_coadd_psf_catalogue_positions_match_the_truth(archive):
    """Positions of the co-add's PSF catalogue against the true star positions (the inputs'
    WCSs are exact): a PSF model with more freedom than its ~35 stars constrain gave
    0.03 px median errors that depend on the pixel phase, or flagged every star."""
    config, engine, made = archive
    build_reference(config, *KEY, min_frames=5, engine=engine)
    pcat = read_table(ArchiveLayout(config.archive.root).ref_path(*KEY, "refpsfcat.fits"))
    xt, yt = made["grid"].world_to_pixel_values(*made["stars"][:2])
    i_s, i_r, _ = astrometry.match_catalogs(np.asarray(pcat["x"], float), np.asarray(pcat["y"], float),
                                            xt, yt, 1.0)
    ok = (np.asarray(pcat["flags"])[i_s] == 0) & (np.asarray(pcat["snr"])[i_s] > 50)
    d = np.hypot(np.asarray(pcat["x"])[i_s] - xt[i_r], np.asarray(pcat["y"])[i_s] - yt[i_r])[ok]
    assert ok.sum() > 50
    assert np.median(d) < 0.02
    assert abs(np.mean((np.asarray(pcat["y"])[i_s] - yt[i_r])[ok])) < 0.02


def test_zarr_round_trip_equals_fits_export(archive):
    config, engine, _ = archive
    build_reference(config, *KEY, min_frames=5, engine=engine)
    layout = ArchiveLayout(config.archive.root)
    store = zarr_store.store_path(layout, KEY[0])
    assert store.name == "field000655.zarr"
    ds = xr.open_zarr(store, group="zr/ccd13/q3/v1")
    with fits.open(layout.ref_path(*KEY, "refimg.fits")) as h:
        assert_array_equal(ds["image"].values, h[0].data)
        w_fits = WCS(h[0].header)
    assert ds["image"].dims == ("y", "x") and ds["image"].encoding["chunks"] == (256, 256)
    assert_array_equal(ds["coverage"].values, fits.getdata(layout.ref_path(*KEY, "refcov.fits")))
    w_zarr = zarr_store.wcs_from_attrs(ds.attrs)
    xs, ys = np.array([0.0, 100.0, 255.0]), np.array([0.0, 50.0, 259.0])
    assert_allclose(w_zarr.pixel_to_world_values(xs, ys), w_fits.pixel_to_world_values(xs, ys),
                    rtol=0, atol=1e-12)
    assert ds.attrs["version"] == 1 and ds.attrs["magzp"] == 26.0
    assert len(zarr_store.open_reference(store, "zr", 13, 3).attrs["inputs"]) > 0


def test_rerun_is_idempotent_and_new_inputs_make_a_new_version(archive):
    config, engine, made = archive
    build_reference(config, *KEY, min_frames=5, engine=engine)
    layout = ArchiveLayout(config.archive.root)
    path = layout.ref_path(*KEY, "refimg.fits")
    before = _md5(path)
    again = build_reference(config, *KEY, min_frames=5, engine=engine)
    assert again["status"] == "unchanged" and again["version"] == 1 and _md5(path) == before
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from reference_images").scalar() == 1
    make_epochal_archive(config.archive.root, engine, 1, seed=9, outliers=False, first=6)
    v2 = build_reference(config, *KEY, min_frames=5, engine=engine)
    assert v2["status"] == "built" and v2["version"] == 2 and v2["n_frames"] == 7
    store = zarr_store.store_path(layout, KEY[0])
    assert zarr_store.current_version(store, "zr", 13, 3) == 2
    assert fits.getheader(path)["REFVERS"] == 2


def test_too_few_frames(archive):
    config, engine, _ = archive
    with pytest.raises(NoWorkFound, match="6 good images, 15 required"):
        build_reference(config, *KEY, engine=engine)
    assert build_references(config, min_frames=15) == []


def test_dask_build_equals_serial(archive, tmp_path):
    from distributed import Client

    config, engine, _ = archive
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        out = build_references(config, min_frames=5, client=client)
    assert [o["status"] for o in out] == ["built"]
    layout = ArchiveLayout(config.archive.root)
    dask_img = fits.getdata(layout.ref_path(*KEY, "refimg.fits"))
    serial = build_reference(config, *KEY, params=ReferenceParams(min_frames=5), engine=engine)
    assert serial["status"] == "unchanged"
    from zsds.stages.refimg import _build, select_inputs
    rows = select_inputs(engine, *KEY, ReferenceParams(min_frames=5))
    redo = _build(config, layout, KEY, rows, 1, ReferenceParams(min_frames=5))
    assert_array_equal(fits.getdata(layout.root / redo["paths"]["refimg.fits"]), dask_img)


def _write_quadrant_reference(args):
    store, ccd, qid = args
    ds = xr.Dataset({name: (("y", "x"), np.full((300, 300), 10 * ccd + qid, np.float32))
                     for name in ("image", "uncertainty", "coverage", "mask")})
    zarr_store.write_reference(store, "zr", ccd, qid, 1, ds)


def test_parallel_reference_writes_keep_every_group_in_the_consolidated_metadata(tmp_path):
    """Eight processes writing the quadrants of one field's store at once (as the Dask tasks
    of ``refimg build`` do): the store's consolidated metadata lists all eight, and each
    opens with xarray at its current version."""
    import json
    import multiprocessing as mp

    store = tmp_path / "field000655.zarr"
    quads = [(store, ccd, qid) for ccd in (13, 14) for qid in (1, 2, 3, 4)]
    with mp.get_context("fork").Pool(8) as pool:
        pool.map(_write_quadrant_reference, quads)
    meta = json.loads((store / ".zmetadata").read_text())["metadata"]
    assert sum(key.endswith("/v1/.zattrs") for key in meta) == 8
    for _, ccd, qid in quads:
        assert zarr_store.current_version(store, "zr", ccd, qid) == 1
        assert float(zarr_store.open_reference(store, "zr", ccd, qid).image[0, 0]) == 10 * ccd + qid
