"""Archive curation on a small processed archive: checksums recorded by the writers, data
releases (``zsds release create``), integrity checks (``zsds archive verify``) and ``zsds export``.

The processed archive (``processed_archive`` in conftest.py) is copied once for this module;
tests that damage a file restore it before they end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from astropy.table import Table
from typer.testing import CliRunner

from conftest import archive_config
from dbfixtures import db_url, engine  # noqa: F401  (fixtures)
from zsds.archive.verify import (expected_checksums, file_sha256, forget_missing,
                                 record_checksums, verify_archive)
from zsds.cli import app
from zsds.errors import ZsdsError


@pytest.fixture(scope="module")
def archive(processed_archive, tmp_path_factory):
    """A private copy of the processed archive, with every checksum recorded and release dr1."""
    src = Path(processed_archive.archive.root)
    root = tmp_path_factory.mktemp("curation") / "archive"
    shutil.copytree(src, root, symlinks=True)
    config = archive_config(root, processed_archive.refcat_path)
    env = {"ZSDS__ARCHIVE__ROOT": str(root), "ZSDS__REFCAT__PATH": str(config.refcat_path)}
    return root, config, env


def zsds(env, *args):
    """Run a zsds command in-process; a ZsdsError is left in ``result.exception`` (the console
    script prints it and exits 2), any other exception is raised."""
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, (SystemExit, ZsdsError)):
        raise result.exception
    return result


def _sql(config, query) -> pd.DataFrame:
    eng = sa.create_engine(config.database_url)
    try:
        return pd.read_sql(query, eng)
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def released(archive):
    root, config, env = archive
    (root / "reports").mkdir(exist_ok=True)  # a file no writer recorded (hand-made report)
    (root / "reports" / "notes.txt").write_text("seeing was poor after 3 am\n")
    unrecorded = zsds(env, "archive", "verify")
    recorded = zsds(env, "archive", "verify", "--record")
    release = zsds(env, "release", "create", "dr1", "--description", "first release")
    return unrecorded, recorded, release


def test_writers_record_checksums_of_their_products(archive):
    _, config, _ = archive
    recorded = set(_sql(config, "select path from product_checksums")["path"])
    sci = _sql(config, "select path from science_images")["path"]
    assert len(sci) and all(p in recorded for p in sci)
    assert all(p.replace("sciimg.fits", "psfcat.fits") in recorded for p in sci)
    refs = _sql(config, "select path, zarr_group from reference_images")
    assert len(refs) and all(p in recorded for p in refs["path"])
    assert all(any(r.startswith(g + "/image/") for r in recorded) for g in refs["zarr_group"])
    assert any(p.endswith("_scimrefdiffimg.fits.fz") for p in recorded)
    alerts = [p.relative_to(config.archive.root).as_posix()
              for p in (Path(config.archive.root) / "alerts").rglob("*.avro")]
    assert alerts and all(p in recorded for p in alerts)  # recorded by run-night as written
    index = pd.read_csv(Path(config.archive.root) / "lightcurves" / "partition_index.csv")
    assert all("lightcurves/" + p in recorded for p in index["path"])
    for p in list(recorded)[:50]:                   # what was recorded is what is on disk
        row = _sql(config, f"select sha256 from product_checksums where path = '{p}'")
        assert row["sha256"][0] == file_sha256(Path(config.archive.root) / p)


def test_verify_record_covers_every_file(released, archive):
    unrecorded, recorded, _ = released
    assert unrecorded.exit_code == 0, unrecorded.output
    assert "without a checksum" in unrecorded.output          # reports/notes.txt, before --record
    assert recorded.exit_code == 0, recorded.output
    assert "newly recorded" in recorded.output and "0 damaged" in recorded.output
    again = zsds(archive[2], "archive", "verify")
    assert again.exit_code == 0 and "without a checksum" not in again.output


def test_release_manifest_lists_checksummed_snapshot(released, archive):
    root, config, env = archive
    result = released[2]
    assert result.exit_code == 0, result.output
    rel = root / "releases" / "dr1"
    m = json.loads((rel / "manifest.json").read_text())
    assert m["name"] == "dr1" and m["version"] == 1 and m["format"] == "zsds-release/1"
    assert m["description"] == "first release" and m["zsds_version"]
    files = {f["path"]: f for f in m["files"]}
    assert m["totals"]["files"] == len(files)
    for path, f in files.items():
        assert (rel / path).stat().st_size == f["size"]
        assert file_sha256(rel / path) == f["sha256"]
    good = _sql(config, "select path from science_images where status = 1")["path"]
    assert m["provenance"]["science_images"] == len(good) > 0
    for p in good:
        assert p.replace("sciimg.fits", "psfcat.fits") in files
        assert p.replace("sciimg.fits", "sexcat.fits") in files
    refs = _sql(config, "select path from reference_images where status = 'valid'")["path"]
    assert all(p.replace("refimg.fits", "refpsfcat.fits") in files for p in refs)
    index = pd.read_csv(root / "lightcurves" / "partition_index.csv")
    assert all("lightcurves/" + p in files for p in index["path"])
    assert m["provenance"]["lightcurve_detections"] == int(index.loc[index["table"] == "detections",
                                                                       "n_rows"].sum())
    images = pd.read_parquet(rel / "tables" / "science_images.parquet")
    assert sorted(images["path"]) == sorted(good)
    # hard links: the release shares the archive's bytes without a copy
    some = next(p for p in files if p.endswith("psfcat.fits"))
    assert os.stat(rel / some).st_ino == os.stat(root / some).st_ino


def test_release_is_immutable(released, archive):
    root, _, env = archive
    again = zsds(env, "release", "create", "dr1")
    assert again.exit_code != 0 and "already exists" in str(again.exception or again.output)
    bad = zsds(env, "release", "create", "../evil")
    assert bad.exit_code != 0 and not (root / "evil").exists()
    listing = zsds(env, "release", "list")
    assert listing.output.startswith("dr1\tversion 1")
    # an archive product rewritten by a writer (new file, rename) leaves the release alone
    m = json.loads((root / "releases" / "dr1" / "manifest.json").read_text())
    entry = next(f for f in m["files"] if f["path"].endswith("psfcat.fits"))
    src = root / entry["path"]
    original = src.read_bytes()
    tmp = src.with_name(".rewrite.tmp")
    tmp.write_bytes(original[:-10] + b"0123456789")
    os.replace(tmp, src)
    try:
        assert file_sha256(root / "releases" / "dr1" / entry["path"]) == entry["sha256"]
        assert zsds(env, "archive", "verify", "--release", "dr1").exit_code == 0
    finally:
        src.write_bytes(original)


_PRODUCTS = {   # product type -> glob under the archive root
    "raw": "raw/**/*_o.fits.fz",
    "calibration": "cal/**/*_bias.fits",
    "calibration_unc": "cal/**/*_hifreqflatunc.fits",
    "science_image": "sci/**/*_sciimg.fits",
    "mask": "sci/**/*_mskimg.fits",
    "psf_catalogue": "sci/**/*_psfcat.fits",
    "aperture_catalogue": "sci/**/*_sexcat.fits",
    "difference_image": "sci/**/*_scimrefdiffimg.fits.fz",
    "cutouts": "sci/**/*_diffimcutouts.fits",
    "reference_fits": "ref/**/*_refimg.fits",
    "reference_catalogue": "ref/**/*_refpsfcat.fits",
    "zarr_chunk": "ref/**/image/0.0",
    "lightcurve_parquet": "lightcurves/detections/dataset/**/*.parquet",
    "alert_avro": "alerts/**/*.avro",
    "release_file": "releases/dr1/sci/**/*_psfcat.fits",
    "release_table": "releases/dr1/tables/*.parquet",
    "release_manifest": "releases/dr1/manifest.json",
}


@pytest.mark.parametrize("kind", sorted(_PRODUCTS))
def test_verify_detects_a_flipped_byte(kind, released, archive):
    root, _, env = archive
    files = sorted(root.glob(_PRODUCTS[kind]))
    assert files, f"no {kind} in the processed archive"
    path = files[len(files) // 2]
    original = path.read_bytes()
    mode = path.stat().st_mode
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(damaged))
    try:
        result = zsds(env, "archive", "verify")
        rel = path.relative_to(root).as_posix()
        assert result.exit_code == 1, result.output
        lines = [ln for ln in result.output.splitlines() if ln.startswith("CHECKSUM")]
        assert any(f" {rel} [" in ln for ln in lines), result.output
        for ln in lines:        # nothing else: at most the other name of a hard-linked file
            assert os.path.samefile(root / ln.split()[1], path), result.output
    finally:
        path.write_bytes(original)
        os.chmod(path, mode)
    assert zsds(env, "archive", "verify").exit_code == 0


def test_verify_reports_missing_and_resized_files(released, archive):
    root, _, env = archive
    gone = sorted(root.glob("sci/**/*_sexcat.fits"))[0]
    cut = sorted(root.glob("lightcurves/objects/dataset/**/*.parquet"))[0]
    kept = gone.with_name("kept.bin")
    gone.rename(kept)
    original = cut.read_bytes()
    cut.write_bytes(original[:-100])
    try:
        result = zsds(env, "archive", "verify", "--quiet")
        assert result.exit_code == 1
        assert f"MISSING   {gone.relative_to(root).as_posix()}" in result.output
        assert f"SIZE      {cut.relative_to(root).as_posix()}" in result.output
        one = zsds(env, "archive", "verify", "--release", "dr1")
        assert one.exit_code == 1 and "MISSING" not in one.output  # the release keeps its link
    finally:
        kept.rename(gone)
        cut.write_bytes(original)
    assert zsds(env, "archive", "verify").exit_code == 0


def test_export_database_and_lightcurve_tables(archive, tmp_path):
    _, config, env = archive
    n_images = len(_sql(config, "select pid from science_images"))
    out = tmp_path / "images.vot"
    result = zsds(env, "export", "science_images", "--format", "votable", "--out", str(out))
    assert result.exit_code == 0, result.output
    t = Table.read(out, format="votable")
    assert len(t) == n_images and "maglim" in t.colnames
    res = zsds(env, "export", "candidates", "--format", "ipac_table", "--columns",
               "candid,magpsf", "--limit", "3", "--out", str(tmp_path / "c.tbl"))
    assert res.exit_code == 0
    c = Table.read(tmp_path / "c.tbl", format="ascii.ipac")
    assert c.colnames == ["candid", "magpsf"] and len(c) == 3
    out = tmp_path / "dets.parquet"
    assert zsds(env, "export", "lightcurves.detections", "-f", "parquet", "-o", str(out)).exit_code == 0
    index = pd.read_csv(Path(config.archive.root) / "lightcurves" / "partition_index.csv")
    assert len(pd.read_parquet(out)) == index.loc[index["table"] == "detections", "n_rows"].sum()
    fits_out = tmp_path / "objects.fits"
    assert zsds(env, "export", "objects", "-f", "fits", "-o", str(fits_out)).exit_code == 0
    assert len(Table.read(fits_out)) == len(_sql(config, "select object_id from objects"))
    csv = zsds(env, "export", "exposures", "--limit", "2")
    assert pd.read_csv(io.StringIO(csv.output)).shape[0] == 2
    for bad in (("api_tokens",), ("no_such_table",), ("objects", "-f", "xlsx")):
        r = zsds(env, "export", *bad)
        assert r.exit_code == 2 and (bad[0] in r.output or "xlsx" in r.output)


def test_release_refuses_a_damaged_source(released, archive):
    root, _, env = archive
    m1 = json.loads((root / "releases" / "dr1" / "manifest.json").read_text())
    target = root / next(f["path"] for f in m1["files"]
                         if f["kind"] == "psfcat" and f["path"].startswith("sci/2026/1122"))
    original = target.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0x01
    target.write_bytes(bytes(damaged))
    try:
        result = zsds(env, "release", "create", "dr2", "--start", "20261122")
        assert result.exit_code != 0 and "does not match its recorded checksum" in str(result.exception)
        assert not (root / "releases" / "dr2").exists()
        assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".")]
    finally:
        target.write_bytes(original)
    ok = zsds(env, "release", "create", "dr2", "--start", "20261122", "--copy")
    assert ok.exit_code == 0, ok.output
    m = json.loads((root / "releases" / "dr2" / "manifest.json").read_text())
    assert m["version"] == 2 and m["previous_release"] == "dr1"
    assert m["provenance"]["nights"] == ["20261122"]
    some = next(f["path"] for f in m["files"] if f["path"].endswith("psfcat.fits"))
    assert os.stat(root / "releases" / "dr2" / some).st_ino != os.stat(root / some).st_ino
    assert np.all([f["path"].startswith("sci/2026/1122") for f in m["files"]
                   if f["kind"] in ("psfcat", "sexcat")])
    assert zsds(env, "archive", "verify").exit_code == 0


def test_record_checksums_is_an_idempotent_upsert(engine, tmp_path):
    """On SQLite and PostgreSQL: new files inserted, unchanged ones untouched, rewritten ones
    replaced, removed ones forgotten."""
    root = tmp_path / "archive"
    a, b = root / "sci" / "a.fits", root / "sci" / "b.fits"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"a" * 100)
    b.write_bytes(b"b" * 50)
    assert record_checksums(engine, root, [a, "sci/b.fits", root / "sci" / "absent.fits"]) == 2
    t = sa.text("select path, sha256, size_bytes, updated_at from product_checksums order by path")
    with engine.connect() as conn:
        first = conn.execute(t).all()
    assert [(r.path, r.size_bytes) for r in first] == [("sci/a.fits", 100), ("sci/b.fits", 50)]
    record_checksums(engine, root, [a, b])
    with engine.connect() as conn:
        assert conn.execute(t).all() == first                 # nothing changed, not even times
    b.write_bytes(b"c" * 60)
    record_checksums(engine, root, [b])
    exp = expected_checksums(engine)
    assert exp["sci/b.fits"].sha256 == file_sha256(b) and exp["sci/b.fits"].size == 60
    assert exp["sci/a.fits"].sha256 == first[0].sha256
    a.unlink()
    assert forget_missing(engine, root, "sci") == 1
    assert set(expected_checksums(engine)) == {"sci/b.fits"}
    report = verify_archive(root, engine)
    assert report.ok and report.n_checked == 1
