"""The camera simulator: format, determinism and fidelity against its truth (issue 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from zsds.io.raw import read_raw, validate_raw
from zsds.sim import checks
from zsds.sim.survey import SimulationSpec, simulate

SHAPE = (1030, 1024)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    counts = simulate(SimulationSpec(outdir=out, fields=[655], ccds=[13], quads=[3], quad_shape=SHAPE,
                                     filters=["zr"], exposures_per_night=2, n_bias=2, n_flat=2,
                                     seeing_arcsec=2.2, seed=5, n_mba=5, n_nea=1))
    return out, counts


def _object_quadrant(out):
    return checks.load_truth_quadrant(out, 13, 3)


def test_every_simulated_file_is_valid(sim):
    out, counts = sim
    files = sorted((out / "raw").rglob("*.fits.fz"))
    assert len(files) == counts["raw_files"] == 6
    for f in files:
        assert validate_raw(f) == [], f


def test_outputs_follow_the_specs(sim):
    out, _ = sim
    sched = pd.read_csv(out / "schedule.csv")
    assert list(sched.columns) == ["expid", "obsjd", "field_id", "filter", "exptime", "imgtype",
                                   "program_id"]
    assert sched["expid"].is_unique and sched["obsjd"].is_monotonic_increasing
    ast = pd.read_csv(out / "asteroids.csv")
    assert {"designation", "epoch_mjd", "a", "e", "i", "node", "peri", "M", "H", "G"} <= set(ast.columns)
    raw_names = {p.name for p in (out / "raw").rglob("*.fits.fz")}
    assert any(n.endswith("_bi_c13_b.fits.fz") for n in raw_names)
    assert any(n.endswith("_zr_c13_f.fits.fz") for n in raw_names)
    assert any("_000655_zr_c13_o" in n for n in raw_names)
    for p in (out / "raw").rglob("*.fits.fz"):  # archive layout raw/YYYY/MMDD/ffffff/
        assert p.parent.name == p.name[12:18] and p.parent.parent.name == p.name[8:12]


def test_simulation_is_deterministic(sim, tmp_path):
    out, _ = sim
    again = tmp_path / "again"
    simulate(SimulationSpec(outdir=again, fields=[655], ccds=[13], quads=[3], quad_shape=SHAPE,
                            filters=["zr"], exposures_per_night=2, n_bias=2, n_flat=2,
                            seeing_arcsec=2.2, seed=5, n_mba=5, n_nea=1))
    for p in (out / "raw").rglob("*_o.fits.fz"):
        a = read_raw(p).quadrants[2].data
        b = read_raw(again / p.relative_to(out)).quadrants[2].data
        assert np.array_equal(a, b)


def test_background_noise_matches_poisson_and_read_noise(sim):
    _, quad, img, _ = _object_quadrant(sim[0])
    noise = checks.background_noise(img, quad.header["GAIN"], quad.header["READNOI"])
    assert abs(noise.ratio - 1) < 0.03, noise


def test_psf_fwhm_of_isolated_stars_matches_truth(sim):
    _, _, img, truth = _object_quadrant(sim[0])
    fw = checks.isolated_star_fwhm(img, truth, sky_rms=5.0, max_stars=25)
    assert len(fw) >= 8
    assert abs(np.median(fw.fwhm_fit / fw.fwhm_true) - 1) < 0.05


def test_detections_above_10_sigma_match_the_catalogue(sim):
    row, quad, img, truth = _object_quadrant(sim[0])
    noise = checks.background_noise(img, quad.header["GAIN"], quad.header["READNOI"])
    fwhm = float(np.median(truth.loc[truth.kind == "star", "fwhm_px"]))
    nea = checks.noise_equivalent_area(fwhm, float(row.true_beta))
    n_det, n_true, _ = checks.detections_above_limit(img, truth, noise.rms, fwhm, nea_px=nea)
    assert n_true > 300
    assert abs(n_det / n_true - 1) < 0.05, (n_det, n_true)


def test_detector_effects_are_present(sim):
    out, _ = sim
    with fits.open(out / "truth" / "detector" / "ccd13_q3.fits") as det:
        defects = det["DEFECTS"].data
        assert (defects & 1).any() and (defects & 2).any() and (defects & 4).any()
    exp = pd.read_parquet(out / "truth" / "exposures.parquet")
    obj = exp[(exp.imgtype == "object") & ~exp.blank]
    # the header WCS is approximate: wrong, but by no more than 60 arcsec
    assert (obj.true_header_error_arcsec > 0.5).all() and (obj.true_header_error_arcsec <= 60).all()
    # the overscan follows the floating bias of each row
    raw = read_raw(out / obj.iloc[0].raw_path)
    bias = pd.read_parquet(out / "truth" / "floating_bias.parquet")
    rows = bias[(bias.expid == obj.iloc[0].expid) & (bias.qid == 3)].iloc[0]["bias_rows"]
    os_mean = raw.quadrants[2].overscan[:, 2:-2].mean(axis=1)
    assert np.corrcoef(os_mean, rows)[0, 1] > 0.9
    assert np.ptp(rows) > 2.0  # it floats


def test_saturated_stars_bleed_along_columns(tmp_path):
    from zsds.sim import render
    img = np.zeros((200, 50), np.float32)
    img[100, 25] = 500_000.0
    sat = render.bleed_columns(img, 100_000.0)
    assert img.sum() == pytest.approx(500_000.0)
    assert sat[:, 25].sum() == 5 and not sat[:, 24].any()


def test_realism_counts_against_the_real_ztf_quadrant(tmp_path_factory):
    """Field 655, CCD 13, q3, r band at 2.6 px FWHM, measured as the real 2020-09-24 image was
    (sep 5 sigma, 5 px, 8 px apertures): counts within 25% at 15-19 mag, noise-to-sky within 15%.

    A 1536 x 1540 centre part of the quadrant keeps the test quick; counts scale with area.
    """
    out = tmp_path_factory.mktemp("realism")
    simulate(SimulationSpec(outdir=out, fields=[655], ccds=[13], quads=[3], quad_shape=(1540, 1536),
                            filters=["zr"], exposures_per_night=1, n_bias=0, n_flat=0,
                            seeing_arcsec=2.63, seed=1, n_mba=0, n_nea=0, n_transients=0,
                            source_truth=False))
    exp = pd.read_parquet(out / "truth" / "exposures.parquet")
    row = exp[(exp.imgtype == "object") & (exp.qid == 3)].iloc[0]
    quad = read_raw(out / row.raw_path).quadrants[2]
    os_level = np.median(quad.overscan[:, 2:-2].astype(np.float32), axis=1)
    img = quad.data.astype(np.float32) - os_level[:, None]
    _, counts, sky, rms = checks.source_counts_by_mag(img, float(row.true_zp_quadrant))
    scale = quad.data.size / (3072 * 3080)
    real = np.array([685, 1332, 2510, 4183, 6320]) * scale
    np.testing.assert_allclose(counts, real, rtol=0.25)
    noise_to_sky = (rms / np.sqrt(sky)) / (5.9 / np.sqrt(157.0))
    assert abs(noise_to_sky - 1) < 0.15


def test_schedule_spreads_nights_and_scatters_visits():
    from zsds.sim.schedule import make_schedule

    sched = make_schedule("20261121", 6, [655], {655: (58.0, 33.0)}, ["zr"], 5, seed=3,
                          n_bias=0, n_flat=0, span_days=90, scatter_visits=True)
    nights = sorted(sched["night"].unique())
    assert nights[0] == "20261121" and len(nights) == 6
    days = pd.to_datetime(nights).to_series().diff().dt.days.dropna()
    assert days.max() > 1 and days.sum() < 90          # spread, within the span
    gaps = sched.groupby("night")["obsjd"].diff().dropna() * 86400
    assert gaps.min() >= 45 - 1e-3                      # never closer than the cadence
    assert gaps.std() > 60                              # and not evenly spaced
    even = make_schedule("20261121", 2, [655], {655: (58.0, 33.0)}, ["zr"], 5, seed=3,
                         n_bias=0, n_flat=0)
    steps = even.assign(step=even.groupby("night")["obsjd"].diff()).dropna()
    assert (steps.groupby("night")["step"].agg(np.ptp) * 86400 < 1).all()


def test_quiet_nights_keep_transients_out_of_the_first_nights(tmp_path):
    spec = SimulationSpec(outdir=tmp_path, nights=2, fields=[655], ccds=[13], quads=[3],
                          quad_shape=(260, 256), filters=["zr"], exposures_per_night=2, n_bias=0,
                          n_flat=0, seed=8, n_mba=0, n_nea=0, n_transients=12, quiet_nights=1)
    simulate(spec)
    tr = pd.read_parquet(tmp_path / "truth" / "transients.parquet")
    exp = pd.read_parquet(tmp_path / "truth" / "exposures.parquet")
    first_end = exp.loc[exp["night"] == "20261121", "obsjd"].max()
    assert (tr["t_explode_jd"] > first_end).all() and (tr["t_peak_jd"] >= tr["t_explode_jd"]).all()
    hosts = tr.loc[tr["host_source_id"] > 0, "host_source_id"]
    assert hosts.is_unique and len(hosts) > 0          # one transient per host galaxy
    kinds = {night: set() for night in ("20261121", "20261122")}
    for f in (tmp_path / "truth" / "sources").glob("*/*.parquet"):
        kinds[f.parent.name] |= set(pd.read_parquet(f, columns=["kind"])["kind"])
    assert "transient" not in kinds["20261121"] and "transient" in kinds["20261122"]


def test_twin_without_cosmic_rays_differs_only_at_the_tracks(tmp_path):
    kw = dict(fields=[655], ccds=[13], quads=[3], quad_shape=SHAPE, filters=["zr"],
              exposures_per_night=1, n_bias=0, n_flat=0, seed=9, n_mba=0, n_nea=0, n_transients=0)
    simulate(SimulationSpec(outdir=tmp_path / "a", **kw))
    simulate(SimulationSpec(outdir=tmp_path / "b", cosmic_rays=False, **kw))
    crs = pd.read_parquet(tmp_path / "a" / "truth" / "cosmic_rays.parquet")
    crs = crs[crs["qid"] == 3]
    assert len(crs) > 0 and not (tmp_path / "b" / "truth" / "cosmic_rays.parquet").exists()
    (raw,) = (tmp_path / "a" / "raw").rglob("*_o.fits.fz")
    (raw_b,) = (tmp_path / "b" / "raw").rglob("*_o.fits.fz")
    a = read_raw(raw).quadrants[2].data.astype(float)
    b = read_raw(raw_b).quadrants[2].data.astype(float)
    diff = np.abs(a - b) > 0
    assert diff.any()
    yy, xx = np.nonzero(diff)
    # every differing pixel lies on a track (start + up to its length), CTI trails and bleeds included
    near = np.zeros(diff.shape, bool)
    for r in crs.itertuples():
        x0, y0, n = int(r.x0), int(r.y0), int(np.ceil(r.length)) + 4
        near[max(y0 - n, 0):y0 + n + 1, max(x0 - n, 0):x0 + n + 1] = True
    assert near[yy, xx].all()
