"""Tests of zsds.core.ephemeris (two-body ephemerides) and zsds.sim.asteroids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import astropy.units as u
from astropy.coordinates import get_body_barycentric
from astropy.time import Time
from astropy.utils import iers
from scipy.optimize import brentq

from zsds.core import ephemeris as eph
from zsds.sim.asteroids import ORBIT_COLUMNS, public_orbit_table, simulate_asteroids

JD0 = 2461000.75            # 2025-11-21 06:00 UTC, night-time at Palomar
ARCSEC = 1.0 / 3600.0


def _sep_arcsec(ra1, dec1, ra2, dec2):
    """Angular separation (arcsec) of ICRS positions in degrees (haversine)."""
    ra1, dec1, ra2, dec2 = (np.deg2rad(np.asarray(x, float)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(h))) * 3600.0


def _random_elements(rng, n, e_max=0.95):
    return {"epoch_mjd": np.full(n, 61000.0), "a": rng.uniform(0.5, 5.0, n),
            "e": rng.uniform(0.01, e_max, n), "i": rng.uniform(1.0, 179.0, n),
            "node": rng.uniform(0, 360, n), "peri": rng.uniform(0, 360, n),
            "M": rng.uniform(0, 360, n)}


# --------------------------------------------------------------------------- Kepler, elements

@pytest.mark.parametrize("e", [0.0, 0.3, 0.7, 0.95])
def test_kepler_solver_matches_bracketing_root(e):
    M = np.linspace(-12.0, 12.0, 241)
    E = eph.solve_kepler(M, e)
    ref = np.array([brentq(lambda x, m=m: x - e * np.sin(x) - m, m - 4, m + 4, xtol=1e-15)
                    for m in M])
    assert np.max(np.abs(E - ref)) < 1e-12


def test_kepler_rejects_hyperbolic():
    with pytest.raises(ValueError, match="eccentricity"):
        eph.solve_kepler(1.0, 1.2)


def test_circular_orbit_period_and_hand_position():
    a = 2.0
    el = {"epoch_mjd": 61000.0, "a": a, "e": 0.0, "i": 0.0, "node": 0.0, "peri": 0.0,
          "M": 90.0}
    period = 2 * np.pi * np.sqrt(a**3 / eph.GM_SUN)           # days
    r, v = eph.propagate_two_body(el, np.array([61000.0, 61000.0 + period,
                                                61000.0 + period / 4]))
    eps = np.deg2rad(84381.448 / 3600.0)
    # at M = 90 deg the object is on the ecliptic y axis: (0, a cos eps, a sin eps) in ICRS
    assert np.allclose(r[0, 0], [0.0, a * np.cos(eps), a * np.sin(eps)], atol=1e-13)
    # speed sqrt(GM/a), moving towards -x
    vc = np.sqrt(eph.GM_SUN / a)
    assert np.allclose(v[0, 0], [-vc, 0.0, 0.0], atol=1e-15)
    # one period later: back; a quarter period later: on the -x axis
    assert np.max(np.abs(r[0, 1] - r[0, 0])) < 1e-11
    assert np.allclose(r[0, 2], [-a, 0.0, 0.0], atol=1e-11)


def test_eccentric_orbit_period_and_energy():
    rng = np.random.default_rng(3)
    el = _random_elements(rng, 200)
    period = 2 * np.pi * np.sqrt(el["a"] ** 3 / eph.GM_SUN)
    r0, v0 = eph.state_from_elements(el)
    r1, v1 = eph.propagate_two_body(el, (el["epoch_mjd"] + period)[:, None])
    assert np.max(np.abs(r1[:, 0] - r0)) < 1e-10
    # vis-viva energy conserved at an arbitrary time
    r2, v2 = eph.propagate_two_body(el, 61000.0 + 123.4)
    en = 0.5 * np.sum(v2**2, 1) - eph.GM_SUN / np.linalg.norm(r2, axis=1)
    assert np.allclose(en, -eph.GM_SUN / (2 * el["a"]), rtol=1e-12, atol=0)


def test_elements_state_round_trip():
    rng = np.random.default_rng(4)
    el = _random_elements(rng, 1000)
    r, v = eph.state_from_elements(el)
    back = eph.elements_from_state(r, v, el["epoch_mjd"])
    assert np.max(np.abs(back["a"] - el["a"]) / el["a"]) < 1e-12
    assert np.max(np.abs(back["e"] - el["e"])) < 1e-12
    for key in ("i", "node", "peri", "M"):
        d = (back[key] - el[key] + 180.0) % 360.0 - 180.0
        assert np.max(np.abs(d)) < 1e-10, key
    r2, v2 = eph.state_from_elements(back)
    assert np.max(np.abs(r2 - r)) < 1e-12 and np.max(np.abs(v2 - v)) < 1e-14


def test_missing_element_column_is_named():
    with pytest.raises(Exception, match="'node'|node"):
        eph.propagate_two_body({"epoch_mjd": 0, "a": 1, "e": 0, "i": 0, "peri": 0, "M": 0},
                               0.0)


# --------------------------------------------------------------------------- observer

def test_observer_distance_and_topocentric_offset():
    jd = JD0 + np.linspace(0.0, 365.25, 60)
    r, v = eph.observer_state(jd)
    d = np.linalg.norm(r, axis=1)
    assert d.min() > 0.983 and d.max() < 1.017
    assert d.max() - d.min() > 0.03                   # perihelion/aphelion both sampled
    speed_kms = np.linalg.norm(v, axis=1) * 149597870.7 / 86400.0
    assert np.all((speed_kms > 28.5) & (speed_kms < 30.8))
    with iers.conf.set_temp("auto_download", False):
        tdb = Time(jd, format="jd", scale="utc").tdb
        geo = (get_body_barycentric("earth", tdb, ephemeris="builtin")
               - get_body_barycentric("sun", tdb, ephemeris="builtin")).xyz.to_value(u.km).T
    off = np.linalg.norm(r * 149597870.7 - geo, axis=1)
    # Palomar: geocentric radius ~6371.7 km at 33.36 deg latitude plus 1.67 km altitude
    assert np.all((off > 6368.0) & (off < 6377.0))


# --------------------------------------------------------------------------- ephemerides

def test_ephemeris_matches_astropy_planet():
    """Independent check: Mars from astropy's built-in ephemeris, light time by hand."""
    t_el = Time(JD0 - 1.0, format="jd", scale="utc").tdb

    def mars_helio(t):
        return (get_body_barycentric("mars", t, ephemeris="builtin")
                - get_body_barycentric("sun", t, ephemeris="builtin")).xyz.to_value(u.au)

    # astropy's built-in (ERFA plan94) Mars velocity is only good to ~1e-6 au/day, so the
    # osculating state takes a central difference of its positions (h = 0.01 day)
    r0 = mars_helio(t_el)
    v0 = (mars_helio(t_el + 0.01 * u.day) - mars_helio(t_el - 0.01 * u.day)) / 0.02
    el = pd.DataFrame(eph.elements_from_state(r0, v0, t_el.mjd))
    el["designation"], el["H"], el["G"] = "mars", -1.5, 0.15
    jd = JD0 + np.array([0.0, 0.25])
    got = eph.ephemerides(el, jd)

    # expectation computed only with astropy: Mars(t - tau) - (Earth(t) + site(t))
    with iers.conf.set_temp("auto_download", False):
        t = Time(jd, format="jd", scale="utc")
        site = eph.PALOMAR.get_gcrs_posvel(t)[0].xyz.to_value(u.au).T
        obs = get_body_barycentric("earth", t.tdb, ephemeris="builtin").xyz.to_value(u.au).T
        obs = obs + site
        tau = np.zeros(jd.size)
        for _ in range(4):
            tm = t.tdb - tau * u.day
            pos = get_body_barycentric("mars", tm, ephemeris="builtin").xyz.to_value(u.au).T
            tau = np.linalg.norm(pos - obs, axis=1) / eph.C_AU_PER_DAY
        # finite-difference rate over +/- 30 s
        pos_dt = []
        for dt in (-30.0, 30.0):
            t2 = t + dt * u.s
            s2 = eph.PALOMAR.get_gcrs_posvel(t2)[0].xyz.to_value(u.au).T
            o2 = get_body_barycentric("earth", t2.tdb, ephemeris="builtin").xyz.to_value(u.au).T
            p2 = get_body_barycentric("mars", t2.tdb - tau * u.day,
                                      ephemeris="builtin").xyz.to_value(u.au).T
            pos_dt.append(p2 - o2 - s2)
    rho = pos - obs
    ra = np.rad2deg(np.arctan2(rho[:, 1], rho[:, 0])) % 360
    dec = np.rad2deg(np.arcsin(rho[:, 2] / np.linalg.norm(rho, axis=1)))
    sep = _sep_arcsec(got["ra"], got["dec"], ra, dec)
    # measured: 0.03 mas and 9e-9 au after 1.25 days (two-body vs plan94 perturbations)
    assert np.max(sep) < 1e-3, sep
    assert np.allclose(got["delta_au"], np.linalg.norm(rho, axis=1), rtol=1e-8, atol=0)
    dra = ((np.rad2deg(np.arctan2(pos_dt[1][:, 1], pos_dt[1][:, 0]))
            - np.rad2deg(np.arctan2(pos_dt[0][:, 1], pos_dt[0][:, 0])) + 180) % 360 - 180)
    dra_cosdec = dra * np.cos(np.deg2rad(dec)) / (60.0 / 86400.0)
    # rates (including the site's diurnal motion) agree to 1e-8 relative (measured)
    assert np.allclose(got["dra_cosdec"], dra_cosdec, rtol=1e-6, atol=0)


def test_light_time_shift_has_expected_size():
    rng = np.random.default_rng(5)
    el = pd.DataFrame(_random_elements(rng, 50, e_max=0.3))
    el["a"] = rng.uniform(2.1, 3.3, 50)
    el["designation"] = [f"T{k}" for k in range(50)]
    el["H"], el["G"] = 15.0, 0.15
    with_lt = eph.ephemerides(el, JD0)
    no_lt = eph.ephemerides(el, JD0, light_time=False)
    shift = _sep_arcsec(with_lt["ra"], with_lt["dec"], no_lt["ra"], no_lt["dec"])
    # expected: transverse heliocentric motion of the object during the light time / delta
    t = eph.jd_utc_to_mjd_tdb(JD0)
    o_r, _ = eph.observer_state(JD0)
    r, v = eph.propagate_two_body(el, t[0])
    rho = r - o_r
    delta = np.linalg.norm(rho, axis=1)
    los = rho / delta[:, None]
    v = v + eph.sun_barycentric_velocity(JD0)              # light travels in the SSB frame
    v_perp = np.linalg.norm(v - np.sum(v * los, 1)[:, None] * los, axis=1)
    expected = np.rad2deg(v_perp * (delta / eph.C_AU_PER_DAY) / delta) * 3600.0
    assert np.all(expected > 5.0)                      # tens of arcsec for main-belt objects
    assert np.allclose(shift, expected, rtol=1e-4)          # measured 1.8e-5


def test_ephemerides_table_shape_and_magnitude():
    rng = np.random.default_rng(6)
    el = pd.DataFrame(_random_elements(rng, 7, e_max=0.3))
    el["designation"] = [f"T{k}" for k in range(7)]
    el["H"], el["G"] = 15.0, 0.15
    jd = JD0 + np.linspace(0, 0.2, 5)
    tab = eph.ephemerides(el, jd, chunk_size=3)
    assert len(tab) == 35
    assert list(tab["designation"][:5]) == ["T0"] * 5
    assert np.allclose(tab["jd"][:5], jd)
    # at zero phase the H,G magnitude is H + 5 log10(r delta)
    assert np.isclose(eph.hg_magnitude(15.0, 0.15, 2.0, 1.0, 0.0), 15.0 + 5 * np.log10(2.0))
    assert np.allclose(tab["mag_v"], eph.hg_magnitude(15.0, 0.15, tab["r_au"], tab["delta_au"],
                                                      tab["phase_deg"]))
    assert np.all(tab["mag_v"] > 15.0 + 5 * np.log10(tab["r_au"] * tab["delta_au"]))


# --------------------------------------------------------------------------- simulation

POINTINGS = [(150.0, 20.0, 3.5), (30.0, -10.0, 3.5), (250.0, 70.0, 3.5),
             (200.0, -5.0, 3.5, JD0 + 0.1)]


@pytest.fixture(scope="module")
def population():
    return simulate_asteroids(POINTINGS, JD0 - 0.2, JD0 + 0.2, seed=11, n_mba=120, n_nea=40,
                              include_construction=True)


def test_simulation_is_deterministic_and_well_formed(population):
    again = simulate_asteroids(POINTINGS, JD0 - 0.2, JD0 + 0.2, seed=11, n_mba=120, n_nea=40,
                               include_construction=True)
    pd.testing.assert_frame_equal(population, again)
    other = simulate_asteroids(POINTINGS, JD0 - 0.2, JD0 + 0.2, seed=12, n_mba=120, n_nea=40)
    assert not np.allclose(other["a"], population["a"])
    assert population["designation"].is_unique and len(population) == 160
    assert set(ORBIT_COLUMNS + ["population", "known"]) <= set(population.columns)
    assert population["known"].sum() == 128
    pub = public_orbit_table(population)
    assert list(pub.columns) == ORBIT_COLUMNS and len(pub) == 128


def test_simulated_orbits_match_populations(population):
    mba = population[population["population"] == "MBA"]
    nea = population[population["population"] == "NEA"]
    assert len(mba) == 120 and len(nea) == 40
    assert mba["a"].between(2.1 - 1e-9, 3.3 + 1e-9).all() and (mba["e"] < 0.3).all()
    assert (nea["a"] * (1 - nea["e"]) < 1.3).all() and (nea["e"] < 0.95).all()
    assert mba["H"].between(12, 18).all() and nea["H"].between(18, 24).all()
    assert (population["epoch_mjd"] == population["epoch_mjd"].iloc[0]).all()


def test_simulated_objects_are_where_they_were_put(population):
    for jd_ref, grp in population.groupby("jd_ref"):
        tab = eph.ephemerides(grp, jd_ref)
        sep = _sep_arcsec(tab["ra"], tab["dec"], grp["ra_ref"], grp["dec_ref"])
        assert np.max(sep) < 1.0, np.max(sep)
        assert np.allclose(tab["delta_au"], grp["delta_ref_au"], rtol=1e-9)
        # inside the pointing circles
        k = grp["pointing_index"].to_numpy()
        centre = np.array([p[:2] for p in POINTINGS])[k]
        assert np.all(_sep_arcsec(tab["ra"], tab["dec"], centre[:, 0], centre[:, 1])
                      <= 3.5 * 3600 + 1e-6)


def test_simulated_brightness_and_streakers(population):
    rows = []
    for jd_ref, grp in population.groupby("jd_ref"):
        tab = eph.ephemerides(grp, jd_ref)
        tab["population"] = grp["population"].to_numpy()
        rows.append(tab)
    tab = pd.concat(rows)
    detectable = tab["mag_v"].between(16.0, 20.5)
    assert detectable.mean() > 0.7 and (tab["mag_v"] > 20.5).any()
    rate = np.hypot(tab["dra_cosdec"], tab["ddec"])
    nea = (tab["population"] == "NEA").to_numpy()
    assert (rate[nea] > 1.2).sum() >= 3                      # streaks > 10 px in 30 s
    assert np.median(rate[~nea]) < 0.6                        # main belt: ~0.25 deg/day
