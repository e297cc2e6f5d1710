"""A small synthetic archive for the archive-API tests (zsds.api), built in about a second.

One readout quadrant (field 700, CCD 5, quadrant 2; 128 x 128 pixels of 1") observed at six
epochs of programs 1, 2 and 3, with every product the API serves: science, mask and difference
images with a PSF-convolved transient of known flux, a reference image, a raw file,
candidates and their alerts (with histories mixing programs), and a lightcurve store.

Epochs (``now_jd = J0 + 10``, proprietary period 365 days):

====  ============  =======  =====================================
name  obsjd         program  visible to anonymous
====  ============  =======  =====================================
e0    J0 - 400      2        yes (older than the proprietary period)
e1    J0            1        yes
e2    J0 + 1        1        yes
e3    J0 + 2        2        no (partner only)
e4    J0 + 3        3        no (Caltech only)
e5    J0 + 4        1        yes
====  ============  =======  =====================================

Lightcurve objects: ``A`` (detections e1, e2, e5), ``B`` (all six epochs), ``C`` (e3 only)
and ``N_FILLER`` public objects (e1, e2).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from conftest import archive_config

J0 = 2461000.7
NOW_JD = J0 + 10.0
FIELD, CCD, QID, FC = 700, 5, 2, "zr"
RCID = (CCD - 1) * 4 + QID - 1
CENTRE = (150.0, 20.0)
SHAPE = (128, 128)
PSF_SIGMA = 1.5
TRANSIENT_FLUX = 2000.0
NOISE = 5.0
N_FILLER = 20
EPOCHS = (("e0", J0 - 400.0, 2), ("e1", J0, 1), ("e2", J0 + 1, 1), ("e3", J0 + 2, 2),
          ("e4", J0 + 3, 3), ("e5", J0 + 4, 1))


@dataclass
class ApiArchive:
    """What the tests need to know about the synthetic archive."""

    root: Path
    config: object
    epochs: dict = field(default_factory=dict)      # name -> {pid, obsjd, programid, path, expid}
    transient: tuple = (0.0, 0.0)
    objects: dict = field(default_factory=dict)     # name -> (oid, ra, dec)
    candids: dict = field(default_factory=dict)     # epoch name -> candid
    reference_path: str = ""
    raw_path: str = ""

    def product(self, epoch: str, suffix: str) -> str:
        return self.epochs[epoch]["path"].replace("sciimg.fits", suffix)


def _wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(CENTRE)
    w.wcs.crpix = [SHAPE[1] / 2 + 0.5, SHAPE[0] / 2 + 0.5]
    w.wcs.cdelt = [-1 / 3600.0, 1 / 3600.0]
    return w


def _psf(size: int = 25, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / (2 * PSF_SIGMA**2))
    return p / p.sum()


def _footprint(w: WCS) -> list:
    ny, nx = SHAPE
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [nx - 0.5, ny - 0.5], [-0.5, ny - 0.5]])
    return w.all_pix2world(corners, 0).tolist()


def _diff_image(w: WCS, rng, ra: float, dec: float) -> np.ndarray:
    img = rng.normal(0.0, NOISE, SHAPE)
    x, y = w.all_world2pix(ra, dec, 0)
    xi, yi = int(round(float(x))), int(round(float(y)))
    stamp = _psf(25, float(x) - xi, float(y) - yi) * TRANSIENT_FLUX
    img[yi - 12:yi + 13, xi - 12:xi + 13] += stamp
    return img.astype(np.float32)


def _header(w: WCS, extra: dict) -> fits.Header:
    h = w.to_header()
    for k, v in extra.items():
        h[k] = v
    return h


def _write_products(arc: ApiArchive, w: WCS, rng) -> None:
    from zsds.io.products import write_image

    for name, ep in arc.epochs.items():
        sci = arc.root / ep["path"]
        keys = {"OBSJD": ep["obsjd"], "FILTER": FC, "FIELDID": FIELD, "CCD_ID": CCD, "QID": QID,
                "PROGRMID": ep["programid"], "MAGZP": 26.0, "EXPTIME": 30.0}
        write_image(sci, (rng.normal(100, NOISE, SHAPE)).astype(np.float32), _header(w, keys))
        mask = np.zeros(SHAPE, np.int16)
        mask[0, :] = 1 << 14  # EDGE, not a bad-pixel bit
        write_image(sci.with_name(sci.name.replace("sciimg", "mskimg")), mask)
        keys.update(DIFMGLIM=21.0, BUNIT="DN")
        write_image(sci.with_name(sci.name.replace("sciimg.fits", "scimrefdiffimg.fits.fz")),
                    _diff_image(w, rng, *arc.transient), _header(w, keys), compress=True)
        write_image(sci.with_name(sci.name.replace("sciimg.fits", "diffimgpsf.fits")),
                    _psf().astype(np.float32))


def _db_rows(arc: ApiArchive, w: WCS, engine) -> None:
    from zsds.db import schema as s

    fp = json.dumps(_footprint(w))
    with engine.begin() as conn:
        for i, (name, ep) in enumerate(arc.epochs.items()):
            conn.execute(s.exposures.insert().values(
                expid=ep["expid"], night=ep["filefracday"][:8], filefracday=ep["filefracday"],
                obsjd=ep["obsjd"], imgtype="object", filter_code=FC, filterid=2, field_id=FIELD,
                programid=ep["programid"], exptime=30.0, airmass=1.2, ra=CENTRE[0], dec=CENTRE[1]))
            conn.execute(s.science_images.insert().values(
                expid=ep["expid"], ccd_id=CCD, qid=QID, rcid=RCID, pid=ep["pid"],
                night=ep["filefracday"][:8], filefracday=ep["filefracday"], obsjd=ep["obsjd"],
                field_id=FIELD, filter_code=FC, programid=ep["programid"], path=ep["path"],
                status=1, infobits=0, magzp=26.0, magzpunc=0.01, magzprms=0.02, clrcoeff=0.1,
                clrcounc=0.01, maglim=21.0 - 0.1 * i, seeing_arcsec=1.5 + 0.2 * i, sky=100.0,
                sky_rms=NOISE, n_sources=100, n_calibrators=40, astrom_rms_ra=0.05,
                astrom_rms_dec=0.05, airmass=1.2, ra=CENTRE[0], dec=CENTRE[1],
                radius_deg=float(np.max([np.hypot((a - CENTRE[0]) * np.cos(np.radians(CENTRE[1])),
                                                  b - CENTRE[1]) for a, b in _footprint(w)])),
                footprint=fp))
        e3 = arc.epochs["e3"]
        raw = arc.raw_path
        conn.execute(s.raw_files.insert().values(
            expid=e3["expid"], ccd_id=CCD, filename=Path(raw).name, path=raw, sha256="0" * 64,
            size_bytes=(arc.root / raw).stat().st_size, night=e3["filefracday"][:8], imgtype="object",
            filter_code=FC))
        conn.execute(s.reference_images.insert().values(
            field_id=FIELD, filter_code=FC, ccd_id=CCD, qid=QID, version=1, path=arc.reference_path,
            n_frames=2, jd_start=J0, jd_end=J0 + 2, inputs=json.dumps([arc.epochs["e1"]["pid"],
                                                                     arc.epochs["e3"]["pid"]])))


def _candidates(arc: ApiArchive, engine) -> None:
    """A candidate at the transient in every epoch, and alerts for e3 and e5 with histories."""
    from zsds.alerts.archive import archive_file, write_alerts
    from zsds.alerts.ids import make_candid
    from zsds.alerts.packet import make_alert, serialize_alert
    from zsds.db import schema as s
    from zsds.io.paths import night_of_jd

    ra, dec = arc.transient
    records = {}
    with engine.begin() as conn:
        conn.execute(s.objects.insert().values(object_id="ZTF26aaaaaaa", ra=ra, dec=dec, ndet=6))
        for name, ep in arc.epochs.items():
            candid = make_candid(ep["pid"], 1)
            arc.candids[name] = candid
            rec = dict(candid=candid, pid=ep["pid"], jd=ep["obsjd"], ra=ra, dec=dec, fid=2,
                       programid=ep["programid"], isdiffpos="t", magpsf=17.7, sigmapsf=0.01,
                       diffmaglim=21.0, rb=0.9, field=FIELD, rcid=RCID)
            records[name] = rec
            conn.execute(s.candidates.insert().values(
                candid=candid, pid=ep["pid"], expid=ep["expid"], ccd_id=CCD, qid=QID,
                object_id="ZTF26aaaaaaa", jd=ep["obsjd"], ra=ra, dec=dec, isdiffpos=True,
                magpsf=17.7, sigmapsf=0.01, scorr=50.0, rb=0.9, fid=2, programid=ep["programid"],
                diffmaglim=21.0, payload=json.dumps(rec)))
    cutout = np.zeros((63, 63), np.float32)
    for name, history in (("e5", ("e1", "e2", "e3", "e4")), ("e3", ("e1", "e2"))):
        rec = records[name]
        prv = [dict(records[h], rbversion="t") for h in history]
        packet = make_alert(rec, (cutout, cutout, cutout), prv_candidates=prv, object_id="ZTF26aaaaaaa")
        path = archive_file(arc.root, night_of_jd(rec["jd"]), rec["programid"], rec["pid"])
        write_alerts(path, [(rec["candid"], serialize_alert(packet))])


def _lightcurves(arc: ApiArchive, w: WCS, rng) -> None:
    from zsds.core import lcmatch, lcmetrics
    from zsds.io.lcstore import LightcurveStore, healpix29, part_key
    from zsds.stages.lightcurves import OBJECT_COLUMNS, detection_schema, object_schema

    store = LightcurveStore(arc.root / "lightcurves")
    store.create(14)
    ra0, dec0 = CENTRE
    names = ["A", "B", "C"] + [f"F{i}" for i in range(N_FILLER)]
    pos = {"A": (ra0 + 0.004, dec0 + 0.003), "B": (ra0 - 0.005, dec0 - 0.002), "C": (ra0 + 0.002, dec0 - 0.006)}
    for n in names[3:]:
        pos[n] = (ra0 + rng.uniform(-0.012, 0.012), dec0 + rng.uniform(-0.012, 0.012))
    epochs_of = {"A": ["e1", "e2", "e5"], "B": [e for e, *_ in EPOCHS], "C": ["e3"]}
    oids = lcmatch.make_oid(FIELD, CCD, QID, FC, np.arange(1, len(names) + 1))
    ra = np.array([pos[n][0] for n in names])
    dec = np.array([pos[n][1] for n in names])
    objects = pd.DataFrame({"oid": oids, "ra": ra, "dec": dec, "_healpix_29": healpix29(ra, dec)})
    extra = {n: 0 for n, *_ in OBJECT_COLUMNS[4:]}
    extra.update(field_id=FIELD, ccd_id=CCD, qid=QID, rcid=RCID, filter_code=FC, filterid=2, ref_mag=18.0)
    extra.update({m: 1.0 for m in lcmetrics.metric_names()})
    objects = pd.concat([objects, pd.DataFrame(extra, index=objects.index)], axis=1)
    rows = []
    for oid, n, h in zip(oids, names, objects["_healpix_29"]):
        for e in epochs_of.get(n, ["e1", "e2"]):
            ep = arc.epochs[e]
            x, y = w.all_world2pix(pos[n][0], pos[n][1], 0)
            rows.append(dict(oid=oid, _healpix_29=h, pid=ep["pid"], expid=ep["expid"],
                             mjd=ep["obsjd"] - 2400000.5, night=ep["filefracday"][:8],
                             mag=18.0 + 0.01 * len(rows), mag_err=0.02, mag_raw=18.0, zp_corr=0.0,
                             flux=1000.0, flux_err=20.0, catflags=32768 if e == "e2" and n == "A" else 0,
                             ra=pos[n][0], dec=pos[n][1], x=float(x), y=float(y), chi2=1.0,
                             sharpness=0.0, sep_arcsec=0.1))
    dets = pd.DataFrame(rows)
    schemas = {"objects": object_schema(), "detections": detection_schema()}
    part = part_key(FIELD, FC, CCD, QID)
    new = store.write_part(part, objects, dets, pd.DataFrame({"pid": [1]}), schemas)
    store.finalize(new, [part], schemas)
    arc.objects = {n: (int(o), float(r), float(d)) for n, o, r, d in zip(names, oids, ra, dec)}


def build_api_archive(base: Path, seed: int = 3) -> ApiArchive:
    """Build the synthetic archive under ``base`` (see the module docstring)."""
    from zsds.alerts.ids import make_pid
    from zsds.db.ops import engine_from_config
    from zsds.io.paths import ArchiveLayout, filefracday_from_jd
    from zsds.io.products import write_image

    rng = np.random.default_rng(seed)
    root = base / "archive"
    config = archive_config(root, base / "refcat")
    layout = ArchiveLayout(root)
    arc = ApiArchive(root=root, config=config, transient=(CENTRE[0] + 0.003, CENTRE[1] + 0.004))
    for i, (name, jd, prog) in enumerate(EPOCHS):
        ffd = filefracday_from_jd(jd)
        path = layout.sci_path(ffd, FIELD, FC, CCD, QID, "sciimg.fits").relative_to(root).as_posix()
        arc.epochs[name] = dict(pid=make_pid(ffd, RCID), obsjd=jd, programid=prog, path=path,
                                expid=90000000 + i, filefracday=ffd)
    w = _wcs()
    _write_products(arc, w, rng)
    ref = layout.ref_path(FIELD, FC, CCD, QID, "refimg.fits")
    write_image(ref, rng.normal(100, 1, SHAPE).astype(np.float32), _header(w, {"MAGZP": 26.0}))
    arc.reference_path = ref.relative_to(root).as_posix()
    raw = layout.raw_path(f"ztf_{arc.epochs['e3']['filefracday']}_{FIELD:06d}_{FC}_c{CCD:02d}_o.fits.fz")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    arc.raw_path = raw.relative_to(root).as_posix()
    engine = engine_from_config(config)
    _db_rows(arc, w, engine)
    _candidates(arc, engine)
    _lightcurves(arc, w, rng)
    engine.dispose()
    return arc


@contextmanager
def serve(app):
    """``app`` on uvicorn in a background thread on a free 127.0.0.1 port; yields the base URL."""
    import threading
    import time

    import uvicorn

    from kafkabroker import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
