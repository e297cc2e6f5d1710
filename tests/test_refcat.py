"""Tests of the simulated reference catalogue and the reference-catalogue reader/writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import zsds.io.refcat as io_refcat
from zsds.errors import InputDataError
from zsds.io.refcat import (REFCAT_SCHEMA, angular_separation_deg, apply_proper_motion,
                            read_refcat, refcat_files_for_cone, write_refcat)
from zsds.sim.refcat import CALIBRATION_FIELD_655, expected_counts_per_deg2, simulate_refcat

SPEC = REFCAT_SCHEMA.names


def _radius_for_area(area_deg2: float) -> float:
    """Radius (deg) of a spherical cap of the given area."""
    return float(np.degrees(np.arccos(1.0 - area_deg2 * (np.pi / 180.0) ** 2 / (2.0 * np.pi))))


def _in_cone(df, ra, dec, radius):
    return df[angular_separation_deg(df["ra"], df["dec"], ra, dec) <= radius]


@pytest.fixture(scope="module")
def field655():
    c = CALIBRATION_FIELD_655
    radius = _radius_for_area(c["area_deg2"])
    cat = simulate_refcat([(c["ra"], c["dec"], radius)], seed=655)
    return cat, _in_cone(cat, c["ra"], c["dec"], radius)


# --------------------------------------------------------------------------- simulation

def test_simulation_is_deterministic_and_region_independent():
    small = simulate_refcat([(120.0, 20.0, 0.1)], seed=7, mag_limit_r=21.0)
    again = simulate_refcat([(120.0, 20.0, 0.1)], seed=7, mag_limit_r=21.0)
    big = simulate_refcat([(120.0, 20.0, 0.4), (123.0, 20.0, 0.1)], seed=7, mag_limit_r=21.0)
    other = simulate_refcat([(120.0, 20.0, 0.1)], seed=8, mag_limit_r=21.0)
    pd.testing.assert_frame_equal(small, again)
    assert len(big) > 2 * len(small) > 0
    assert big["source_id"].is_unique
    sub = big.set_index("source_id").loc[small["source_id"]].reset_index()
    pd.testing.assert_frame_equal(sub, small)
    assert not np.array_equal(other["r"].to_numpy(), small["r"].to_numpy())


def test_spec_dtypes_and_nulls(field655):
    cat, _ = field655
    expected = {f.name: np.dtype(f.type.to_pandas_dtype()) for f in REFCAT_SCHEMA}
    assert {c: cat[c].dtype for c in SPEC} == expected
    all_null = cat[["g", "r", "i"]].isna().all(axis=1)
    assert 0.005 < all_null.mean() < 0.02
    assert cat.loc[all_null, "true_r"].notna().all()
    faint = cat["true_r"] > 20.0
    assert cat.loc[faint, "g"].isna().mean() > cat.loc[~faint, "g"].isna().mean()
    err = cat["r_err"]
    assert err[cat["r"].between(15, 16)].median() < 0.01
    assert 0.05 < err[cat["r"].between(21.3, 21.7)].median() < 0.2


def test_field655_counts_match_calibration(field655):
    c = CALIBRATION_FIELD_655
    _, inside = field655
    measured = np.array([(inside["r"] < m).sum() for m in c["mags"]])
    model = expected_counts_per_deg2(c["b"], c["mags"], l_deg=c["l"], ebv=c["ebv"]) * c["area_deg2"]
    target = np.array(c["counts"])
    print("field 655 r<15..19: simulated", measured.tolist(), "model", np.round(model).tolist(),
          "target", target.tolist())
    # The sampled catalogue follows its model (Poisson scatter).
    np.testing.assert_allclose(measured, model, rtol=0.12)
    # The model is normalised so that the *image* of the quadrant, measured as the real ZTF
    # image was, matches the real counts (tests/test_simulator.py, benchmarks/sim_fidelity.py);
    # crowding and deblending add ~20% there, so the catalogue sits below the target.
    assert np.all((measured > 0.5 * target) & (measured < 1.0 * target))


def test_ccd13_q3_footprint_counts_match_calibration():
    """The same target counted on the real footprint of CCD 13 q3 of field 655 (b ~ -14)."""
    from zsds.camera import load_camera

    c = CALIBRATION_FIELD_655
    cam = load_camera()
    fld = cam.field(655)
    wcs = cam.nominal_wcs(13, 3, fld.ra, fld.dec)
    ny, nx = 3080, 3072
    ra0, dec0 = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    cat = simulate_refcat([(float(ra0), float(dec0), 0.65)], seed=13, mag_limit_r=19.5)
    x, y = wcs.world_to_pixel_values(cat["ra"].to_numpy(), cat["dec"].to_numpy())
    on = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    measured = np.array([(cat.loc[on, "r"] < m).sum() for m in c["mags"]])
    print("field 655 CCD13 q3 footprint r<15..19:", measured.tolist())
    target = np.array(c["counts"])
    assert np.all((measured > 0.6 * target) & (measured < 1.1 * target))


def test_density_increases_toward_plane():
    lats = [90.0, 60.0, 30.0, 15.0, 5.0]
    n20 = [expected_counts_per_deg2(b, [20.0], l_deg=90.0, galaxies=False)[0] for b in lats]
    assert np.all(np.diff(n20) > 0)
    assert 1000 < n20[0] < 3000          # stars per deg^2 to r < 20 at the pole
    assert n20[-1] > 20 * n20[0]
    # faint-end slope shallower at high latitude
    slope = [np.log10(np.divide(*expected_counts_per_deg2(b, [21.0, 19.0], 90.0, 0.0, False)))
             for b in (90.0, 10.0)]
    assert slope[0] < slope[1]
    pole = simulate_refcat([(192.86, 27.13, 0.2)], seed=1, mag_limit_r=20.0)
    plane = simulate_refcat([(300.0, 30.0, 0.2)], seed=1, mag_limit_r=20.0)  # b ~ -2.4
    assert len(plane) > 10 * len(pole)


def test_colours_proper_motions_and_galaxies(field655):
    cat, _ = field655
    stars, gals = cat[~cat["galaxy"]], cat[cat["galaxy"]]
    gr = stars["true_g"] - stars["true_r"]
    assert 0.3 < gr[stars["true_r"] < 20.0].median() < 1.2   # the stars the camera detects
    red_bright = (gr[stars["true_r"].between(14, 17)] > 1.2).mean()
    red_faint = (gr[stars["true_r"].between(20, 21)] > 1.2).mean()
    assert red_faint > 2 * red_bright
    ri = stars["true_r"] - stars["true_i"]
    assert np.corrcoef(gr, ri)[0, 1] > 0.7              # the stellar locus
    pm = np.hypot(stars["pmra"], stars["pmdec"])
    assert 2.0 < pm[stars["r"] < 17].median() < 15.0
    assert pm[stars["r"] < 17].median() > pm[stars["r"] > 20].median()
    assert pm.max() > 50.0
    assert (gals["pmra"] == 0).all() and (gals["pmdec"] == 0).all()
    assert (gals["gal_hlr_arcsec"] > 0).all() and (stars["gal_hlr_arcsec"] == 0).all()
    assert gals.loc[gals["true_r"] < 19, "gal_hlr_arcsec"].median() > \
        gals.loc[gals["true_r"] > 21, "gal_hlr_arcsec"].median()
    ggr = gals["true_g"] - gals["true_r"]
    assert 0.3 < ggr.median() < 1.2
    per_deg2 = (gals["true_r"] < 21.5).sum() / (2.0 * CALIBRATION_FIELD_655["area_deg2"])
    assert 500 < per_deg2 < 10000


# --------------------------------------------------------------------------- I/O

@pytest.fixture(scope="module")
def small_cat():
    return simulate_refcat([(10.0, 45.0, 0.3)], seed=3, mag_limit_r=20.0)


def test_write_read_round_trip(small_cat, tmp_path):
    files = write_refcat(small_cat, tmp_path / "refcat")
    assert files and all(f.exists() for f in files)
    assert pq.ParquetFile(files[0]).metadata.row_group(0).num_rows <= 20_000
    got = read_refcat(tmp_path / "refcat", 10.0, 45.0, 0.2)
    want = _in_cone(small_cat, 10.0, 45.0, 0.2).sort_values("source_id")[SPEC]
    assert list(got.columns) == SPEC
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))
    # idempotent re-write; merging two halves gives the same dataset
    write_refcat(small_cat, tmp_path / "refcat")
    pd.testing.assert_frame_equal(read_refcat(tmp_path / "refcat", 10.0, 45.0, 0.2), got)
    half = small_cat["source_id"] % 2 == 0
    write_refcat(small_cat[half], tmp_path / "halves")
    write_refcat(small_cat[~half], tmp_path / "halves")
    pd.testing.assert_frame_equal(read_refcat(tmp_path / "halves", 10.0, 45.0, 0.2), got)
    extra = read_refcat(tmp_path / "refcat", 10.0, 45.0, 0.2, columns=["source_id", "galaxy"])
    assert list(extra.columns) == ["source_id", "galaxy"] and len(extra) == len(got)


@pytest.mark.parametrize("centre", [(0.05, 10.0), (359.9, -5.0), (30.0, 89.9)])
def test_read_foreign_single_file(centre, tmp_path):
    ra0, dec0 = centre
    cat = simulate_refcat([(ra0, dec0, 0.35)], seed=5, mag_limit_r=19.0)
    foreign = cat.sample(frac=1.0, random_state=1)[SPEC[::-1]].copy()
    foreign["g"] = foreign["g"].astype("float64")
    foreign["phot_extra"] = "x"
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.Table.from_pandas(foreign, preserve_index=False), path, row_group_size=300)
    got = read_refcat(path, ra0, dec0, 0.25)
    want = _in_cone(cat, ra0, dec0, 0.25).sort_values("source_id")[SPEC].reset_index(drop=True)
    assert len(want) > 50
    assert "phot_extra" not in got.columns and got["g"].dtype == np.float32
    pd.testing.assert_frame_equal(got, want)


def test_missing_path_or_column_raises(small_cat, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputDataError, match="nowhere"):
        read_refcat(missing, 10.0, 45.0, 0.1)
    path = tmp_path / "nopm.parquet"
    pq.write_table(pa.Table.from_pandas(small_cat.drop(columns=["pmdec"]), preserve_index=False),
                   path)
    with pytest.raises(InputDataError, match="pmdec") as info:
        read_refcat(path, 10.0, 45.0, 0.1)
    assert str(path) in str(info.value)
    assert len(read_refcat(path, 10.0, 45.0, 0.1, columns=["source_id", "ra", "dec", "r"])) > 0


def test_small_cone_opens_few_files(tmp_path, monkeypatch):
    cat = simulate_refcat([(150.0, 60.0, 3.0)], seed=2, mag_limit_r=14.0)
    write_refcat(cat, tmp_path / "rc")
    total = len(pads.dataset(str(tmp_path / "rc"), format="parquet").files)
    opened = []
    real = io_refcat.ds.dataset

    def spy(source, *args, **kwargs):
        opened.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(io_refcat.ds, "dataset", spy)
    got = read_refcat(tmp_path / "rc", 150.0, 60.0, 0.3)
    assert total >= 6
    assert len(opened) == 1 and 1 <= len(opened[0]) <= 4
    assert len(refcat_files_for_cone(tmp_path / "rc", 150.0, 60.0, 0.3)) == len(opened[0])
    assert set(got["source_id"]) == set(_in_cone(cat, 150.0, 60.0, 0.3)["source_id"])


def test_apply_proper_motion():
    df = pd.DataFrame({"ra": [10.0, 359.99999, 50.0], "dec": [0.0, 20.0, 89.0],
                       "ref_epoch": [2016.0] * 3,
                       "pmra": np.array([0.0, 3600.0, np.nan], np.float32),
                       "pmdec": np.array([1000.0, 0.0, np.nan], np.float32)})
    ra, dec = apply_proper_motion(df, 2026.0)
    assert dec[0] == pytest.approx(10.0 / 3600.0, abs=1e-9) and ra[0] == pytest.approx(10.0)
    assert ra[1] == pytest.approx((359.99999 + 36.0 / np.cos(np.radians(20.0)) / 3600.0) % 360,
                                  abs=1e-7)
    assert 0.0 <= ra[1] < 1.0
    assert (ra[2], dec[2]) == pytest.approx((50.0, 89.0))
