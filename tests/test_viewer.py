"""The web viewer (zsds.api.viewer): lightcurve and candidate pages in headless Chromium, and
their JSON data endpoints.

Browser tests drive Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/setup``)
through Playwright against uvicorn on a free local port. Data: the synthetic archive of the API
tests (``apifactory``: six epochs of programs 1-3, clock fixed at ``NOW_JD``) and, for real
cutouts and photometry, the small processed archive (``processed_archive`` in conftest.py).
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from apifactory import serve, NOW_JD, build_api_archive

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

from fastapi.testclient import TestClient  # noqa: E402

from zsds.api.access import ANONYMOUS, Principal, is_visible, issue_token  # noqa: E402
from zsds.api.app import create_app  # noqa: E402
from zsds.api.context import build_context  # noqa: E402

COLOURS = {"zg": (0x1f, 0x9e, 0x3a), "zr": (0xd6, 0x27, 0x28), "zi": (0x7b, 0x3f, 0xa0)}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arc(tmp_path_factory):
    return build_api_archive(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def ctx(arc):
    ctx = build_context(arc.config)
    ctx.now_jd = lambda: NOW_JD
    return ctx


@pytest.fixture(scope="module")
def server(ctx):
    """The app on uvicorn in a background thread (127.0.0.1, a free port); the base URL."""
    with serve(create_app(context=ctx)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: run .ci/setup (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, url: str, token: str | None = None):
    page = browser.new_page(viewport={"width": 900, "height": 1600}, device_scale_factor=1)
    if token:
        page.add_init_script(f"window.sessionStorage.setItem('zsds-token', {token!r});")
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    return page


def _sql(config, query: str) -> pd.DataFrame:
    eng = sa.create_engine(config.database_url)
    try:
        return pd.read_sql(query, eng)
    finally:
        eng.dispose()


def _expected(config, oid: int, principal: Principal, now_jd: float, days: float):
    """Visible detections of ``oid`` and visible image pids, straight from the store and DB."""
    dets = pd.read_parquet(Path(config.archive.root) / "lightcurves" / "detections" / "dataset")
    dets = dets[dets["oid"] == oid]
    images = _sql(config, "select pid, programid, obsjd, status from science_images")
    vis = images[[is_visible(principal, p, j, now_jd, days)
                  for p, j in zip(images["programid"], images["obsjd"])]]
    return dets[dets["pid"].isin(vis["pid"])], vis


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _colour_mask(img: np.ndarray, rgb, tol: int = 3) -> np.ndarray:
    return np.all(np.abs(img - np.asarray(rgb)) <= tol, axis=-1)


# ---------------------------------------------------------------------------------------
# browser
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["A", "B"])
def test_lightcurve_page_draws_the_visible_points(name, arc, ctx, server, browser):
    oid = arc.objects[name][0]
    dets, vis = _expected(arc.config, oid, ANONYMOUS, NOW_JD, ctx.proprietary_days)
    limits = set(vis.loc[vis["status"] == 1, "pid"]) - set(dets["pid"])
    assert len(dets) >= 3
    page = _open(browser, f"{server}/viewer/object/{oid}")
    assert page.get_attribute("body", "data-error") is None
    circles = page.locator("svg.lc circle.pt")
    assert circles.count() == len(dets)                       # one marker per visible detection
    assert page.locator("svg.lc path.ul").count() == len(limits)
    assert page.locator("svg.lc line.err").count() == len(dets)
    svg = page.locator("svg.lc")
    box = svg.bounding_box()
    img = _pixels(svg.screenshot())
    centres = page.eval_on_selector_all(
        "svg.lc circle.pt", "els => els.map(e => { const b = e.getBoundingClientRect();"
        " return [b.x + b.width / 2, b.y + b.height / 2, e.getAttribute('data-filter')]; })")
    rgb = COLOURS["zr"]
    for x, y, filt in centres:                                # every marker is painted
        assert filt == "zr"
        px = img[int(round(y - box["y"])), int(round(x - box["x"]))]
        assert np.all(np.abs(px - rgb) <= 3), (px, rgb)
    area = page.locator("svg.lc g.axes rect").first.bounding_box()    # the plotting area
    x0, y0 = int(area["x"] - box["x"]), int(area["y"] - box["y"])
    mask = _colour_mask(img[y0:y0 + int(area["height"]), x0:x0 + int(area["width"])], rgb)
    _, n_blobs = ndimage.label(mask)
    assert 1 <= n_blobs <= len(dets) and mask.sum() >= 30     # filled discs, not stray pixels
    legend = _colour_mask(img, rgb).sum() - mask.sum()
    assert 0 < legend <= 100                                  # the legend swatch, outside
    flagged = int((dets["catflags"] != 0).sum())
    assert page.locator("svg.lc circle.pt.flagged").count() == flagged
    page.close()


def test_hidden_object_draws_nothing(arc, server, browser):
    oid = arc.objects["C"][0]                                 # detected only in program-2 epoch e3
    page = _open(browser, f"{server}/viewer/object/{oid}")
    assert "404" in (page.get_attribute("body", "data-error") or "")
    assert page.locator("circle.pt").count() == 0
    img = _pixels(page.screenshot(full_page=True))
    assert not _colour_mask(img, COLOURS["zr"]).any()         # no marker pixels anywhere
    page.close()


def test_token_reveals_epochs_periodogram_and_folded_view(arc, ctx, server, browser):
    token = issue_token(ctx.engine, "viewer-partner", [2, 3])
    partner = Principal("viewer-partner", frozenset({1, 2, 3}))
    oid = arc.objects["B"][0]
    dets, _ = _expected(arc.config, oid, partner, NOW_JD, ctx.proprietary_days)
    assert len(dets) == 6
    page = _open(browser, f"{server}/viewer/object/{oid}", token=token)
    assert page.get_attribute("body", "data-error") is None
    assert page.locator("svg.lc circle.pt").count() == len(dets)
    assert page.locator("svg.pg path.pgline").count() == 1
    assert page.locator("svg.fold circle.pt-fold").count() == len(dets)
    api = TestClient(create_app(context=ctx)).get(
        f"/viewer/api/lightcurve?oid={oid}", headers={"Authorization": f"Bearer {token}"}).json()
    best = api["periodogram"]["best_period"]
    assert float(page.input_value("#period")) == pytest.approx(best, rel=1e-6)
    phases = page.eval_on_selector_all("svg.fold circle.pt-fold",
                                       "els => els.map(e => +e.getAttribute('data-x'))")
    t0 = dets["mjd"].min()
    expected = np.sort(((dets["mjd"] - t0) / float(page.input_value("#period"))) % 1.0)
    np.testing.assert_allclose(np.sort(phases), expected, atol=1e-6)
    page.fill("#period", "0.5")
    page.click("#fold")
    again = page.eval_on_selector_all("svg.fold circle.pt-fold",
                                      "els => els.map(e => +e.getAttribute('data-x'))")
    np.testing.assert_allclose(np.sort(again), np.sort(((dets["mjd"] - t0) / 0.5) % 1.0), atol=1e-6)
    page.close()


def test_candidate_page_shows_three_cutouts_and_history(arc, ctx, server, browser):
    candid = arc.candids["e5"]
    page = _open(browser, f"{server}/viewer/candidate/{candid}")
    assert page.get_attribute("body", "data-error") is None
    for kind in ("science", "reference", "difference"):
        assert page.eval_on_selector(f"#cutout-{kind}", "e => e.naturalWidth") == 63 * 4
    hist = _sql(arc.config, "select programid, jd from candidates where object_id = 'ZTF26aaaaaaa'")
    n_visible = sum(is_visible(ANONYMOUS, p, j, NOW_JD, ctx.proprietary_days)
                    for p, j in zip(hist["programid"], hist["jd"]))
    assert page.locator("svg.hist circle.pt").count() == n_visible < len(hist)
    assert str(candid) in page.inner_text("table.fields")     # 64-bit id shown exactly
    page.close()


# ---------------------------------------------------------------------------------------
# JSON endpoints
# ---------------------------------------------------------------------------------------
def test_viewer_api_applies_access_rules(arc, ctx):
    client = TestClient(create_app(context=ctx))
    oid = arc.objects["B"][0]
    data = client.get(f"/viewer/api/lightcurve?oid={oid}").json()
    hidden = {arc.epochs[e]["pid"] for e in ("e3", "e4")}
    assert hidden.isdisjoint(d["pid"] for d in data["detections"])
    assert hidden.isdisjoint(u["pid"] for u in data["upper_limits"])
    a_oid, ra, dec = arc.objects["A"]
    cone = client.get(f"/viewer/api/lightcurve?ra={ra}&dec={dec}&radius=1").json()
    assert [o["oid"] for o in cone["objects"]] == [a_oid]
    assert [u["pid"] for u in cone["upper_limits"]] == [arc.epochs["e0"]["pid"]]
    assert cone["upper_limits"][0]["maglim"] == pytest.approx(21.0)
    empty = client.get("/viewer/api/lightcurve?ra=10&dec=-10&radius=2")     # nothing there
    assert empty.status_code == 200
    assert empty.json()["detections"] == [] and empty.json()["periodogram"] is None
    assert client.get(f"/viewer/api/candidate/{arc.candids['e3']}").status_code == 401
    assert client.get(f"/viewer/api/cutout/{arc.candids['e4']}/science.png").status_code == 401
    assert client.get("/viewer/api/candidate/1").status_code == 404
    assert client.get("/viewer/api/lightcurve").status_code == 400
    assert client.get(f"/viewer/api/lightcurve?oid={oid}&ra=1&dec=2").status_code == 400
    assert client.get("/viewer/static/secret.py").status_code == 404
    page = client.get("/viewer/lightcurve?ra=150&dec=20")
    assert page.status_code == 200 and "viewer.js" in page.text
    assert client.get("/viewer/static/viewer.js").headers["content-type"].startswith("text/javascript")


@pytest.fixture(scope="module")
def processed_client(processed_archive):
    ctx = build_context(processed_archive)
    ctx.now_jd = lambda: 1e7                                  # everything public
    return processed_archive, TestClient(create_app(context=ctx))


def test_cutouts_are_the_subtraction_stamps(processed_client):
    from zsds.alerts.ids import split_candid
    from zsds.stages.subtract import read_cutouts

    config, client = processed_client
    cands = _sql(config, "select c.candid, s.path from candidates c join science_images s "
                         "on s.pid = c.pid order by c.candid")
    assert len(cands)
    for candid, path in zip(cands["candid"], cands["path"]):     # a stamp away from the edges
        cube = read_cutouts(Path(config.archive.root) / path.replace("sciimg.fits", "diffimcutouts.fits"))
        stamps = dict(zip(("science", "reference", "difference"), cube[split_candid(int(candid))[1]]))
        if all(np.isfinite(a).all() for a in stamps.values()):
            break
    else:
        pytest.fail("every candidate stamp has NaN pixels")
    pngs = {}
    for kind in stamps:
        r = client.get(f"/viewer/api/cutout/{candid}/{kind}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        pngs[kind] = _pixels(r.content)[:, :, 0][::-1][::4, ::4]   # north up; one pixel per stamp pixel
        assert pngs[kind].shape == (63, 63)
    for kind, stamp in stamps.items():          # each PNG shows its own stamp (rank order kept)
        corr = {k: spearmanr(stamp.ravel(), png.ravel())[0] for k, png in pngs.items()}
        assert max(corr, key=corr.get) == kind and corr[kind] > 0.95, corr


def test_processed_lightcurve_matches_the_store(processed_client):
    config, client = processed_client
    dets = pd.read_parquet(Path(config.archive.root) / "lightcurves" / "detections" / "dataset")
    oid = int(dets.groupby("oid").size().idxmax())
    data = client.get(f"/viewer/api/lightcurve?oid={oid}").json()
    mine = dets[dets["oid"] == oid]
    assert sorted(d["pid"] for d in data["detections"]) == sorted(mine["pid"])
    np.testing.assert_allclose(sorted(d["mag"] for d in data["detections"]), sorted(mine["mag"]))
    good = _sql(config, "select pid from science_images where status = 1")
    limit_pids = {u["pid"] for u in data["upper_limits"]}
    assert limit_pids.isdisjoint(mine["pid"]) and limit_pids <= set(good["pid"])
    assert len(limit_pids) + len(set(mine["pid"]) & set(good["pid"])) == len(good)  # one quadrant
    pg = data["periodogram"]
    assert pg is not None and pg["oid"] == oid and len(pg["power"]) == len(pg["frequency"]) > 10
    assert pg["best_power"] == pytest.approx(max(pg["power"]))
