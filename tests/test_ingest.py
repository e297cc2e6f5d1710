"""Raw ingest: archive, register, quarantine, idempotency (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from zsds.db import ops, schema as s
from zsds.io.paths import ArchiveLayout
from zsds.stages import ingest as ingest_mod
from zsds.stages.ingest import DUPLICATE_REASON, ingest

from dbfixtures import config, db_url  # noqa: F401  (fixtures)
from rawfactory import corrupt_compressed_data, make_raw, truncate

JD0 = 2458849.70


def _night(outdir, n=3, ccds=(1, 2)):
    paths = []
    for i in range(n):
        for ccd in ccds:
            paths.append(make_raw(outdir, imgtype="bias", expid=100 + i, ccd_id=ccd,
                                  obsjd=JD0 + i * 0.001).path)
    return paths


def _rows(config, table):
    eng = ops.make_engine(config.database_url)
    with eng.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(table)).mappings()]
    eng.dispose()
    return rows


def _archive_state(root):
    return sorted((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(),
                   p.stat().st_mtime_ns) for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith("zsds.sqlite"))


def test_ingest_archives_registers_and_measures_qa(tmp_path, config):
    files = _night(tmp_path / "in", n=2)
    report = ingest([tmp_path / "in"], config)
    assert report.count("ingested") == 4 and report.ok
    layout = ArchiveLayout(config.archive.root)
    for src in files:
        dst = layout.raw_path(src.name)
        assert dst.read_bytes() == src.read_bytes()
    raw = _rows(config, s.raw_files)
    assert len(raw) == 4 and len(_rows(config, s.exposures)) == 2
    assert {r["sha256"] for r in raw} == {hashlib.sha256(f.read_bytes()).hexdigest()
                                          for f in files}
    quads = _rows(config, s.quadrant_images)
    assert len(quads) == 16
    for q in quads:
        assert 465 < q["bias_level"] < 480
        assert q["overscan_noise"] == pytest.approx(9.0 / 6.0, rel=0.1)
        assert q["saturated_fraction"] == 0.0 and abs(q["median_counts"]) < 2


def test_ingesting_a_night_twice_changes_nothing(tmp_path, config):
    _night(tmp_path / "in")
    ingest([tmp_path / "in"], config)
    root = config.archive.root
    eng = ops.make_engine(config.database_url)
    db_before, files_before = ops.table_snapshot(eng), _archive_state(root)
    report = ingest([tmp_path / "in"], config)
    assert report.count("unchanged") == 6 and report.count("ingested") == 0
    assert ops.table_snapshot(eng) == db_before
    assert _archive_state(root) == files_before
    eng.dispose()


def _damaged_inputs(d):
    """One file per kind of bad input; returns {name: expected words in the reason}."""
    out = {}
    p = make_raw(d / "a", expid=201, obsjd=JD0 + 0.1).path
    truncate(p)
    out[p] = "HDU"
    p = make_raw(d / "b", expid=202, obsjd=JD0 + 0.2,
                 edit=lambda prim, q: prim.remove("EXPTIME")).path
    out[p] = "missing required keyword EXPTIME"

    def short_overscan(prim, quads):
        quads[2].overscan = quads[2].overscan[:-3]
    p = make_raw(d / "c", expid=203, obsjd=JD0 + 0.3, edit=short_overscan).path
    out[p] = "HDU 7"
    p = make_raw(d / "d", expid=204, obsjd=JD0 + 0.4).path
    corrupt_compressed_data(p)
    out[p] = "decompressed"
    return out


def test_bad_files_are_quarantined_and_the_batch_proceeds(tmp_path, config):
    good_first = _night(tmp_path / "in1", n=1, ccds=(1,))
    ingest(good_first, config)
    snapshot_first = _rows(config, s.raw_files)
    bad = _damaged_inputs(tmp_path / "bad")
    good = make_raw(tmp_path / "in2", expid=300, obsjd=JD0 + 0.01).path
    report = ingest(list(bad) + [good], config)
    by_src = {r.source: r for r in report.results}
    assert by_src[good].status == "ingested"
    assert not report.ok
    qdir = config.archive.root / "quarantine" / "20200101"
    for src, words in bad.items():
        res = by_src[src]
        assert res.status == "quarantined", res
        assert words in res.reason
        copy = qdir / src.name
        assert copy.read_bytes() == src.read_bytes()
        assert words in (qdir / (src.name + ".reason.txt")).read_text()
    q_rows = _rows(config, s.quarantine)
    assert sorted(r["filename"] for r in q_rows) == sorted(p.name for p in bad)
    raw_rows = _rows(config, s.raw_files)
    assert len(raw_rows) == 2
    assert [r for r in raw_rows if r["expid"] == 100] == snapshot_first
    again = ingest(list(bad), config)  # quarantining again changes nothing
    assert again.count("quarantined") == 4 and len(_rows(config, s.quarantine)) == 4


def test_unreadable_file_does_not_stop_the_batch(tmp_path, config):
    good = make_raw(tmp_path / "in", expid=1).path
    missing = tmp_path / "in" / "ztf_20200101200000_000000_bi_c02_b.fits.fz"
    report = ingest([missing, good], config)
    assert [r.status for r in report.results] == ["failed", "ingested"]
    assert "cannot read" in report.results[0].reason


def test_different_file_for_same_exposure_is_quarantined(tmp_path, config):
    first = make_raw(tmp_path / "a", expid=7, seed=1).path
    ingest([first], config)
    second = make_raw(tmp_path / "b", expid=7, seed=2).path  # same name, other pixels
    report = ingest([second], config)
    assert report.results[0].status == "quarantined"
    assert DUPLICATE_REASON in report.results[0].reason
    layout = ArchiveLayout(config.archive.root)
    assert layout.raw_path(first.name).read_bytes() == first.read_bytes()


def test_crash_mid_registration_leaves_nothing_half_registered(tmp_path, config, monkeypatch):
    src = make_raw(tmp_path / "in", expid=9).path
    real = ops._check_exposure

    def crash_after_exposure_insert(conn, exposure):
        real(conn, exposure)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ops, "_check_exposure", crash_after_exposure_insert)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest([src], config)
    assert _rows(config, s.exposures) == [] and _rows(config, s.raw_files) == []
    assert not ArchiveLayout(config.archive.root).raw_path(src.name).exists()
    monkeypatch.setattr(ops, "_check_exposure", real)
    assert ingest([src], config).count("ingested") == 1


def test_move_removes_sources_and_reingest_from_archive_is_noop(tmp_path, config):
    src = make_raw(tmp_path / "in", expid=11).path
    data = src.read_bytes()
    assert ingest([src], config, move=True).count("ingested") == 1
    assert not src.exists()
    dst = ArchiveLayout(config.archive.root).raw_path(src.name)
    assert dst.read_bytes() == data
    assert ingest([config.archive.root / "raw"], config).count("unchanged") == 1
    assert dst.exists()


def test_qa_uses_the_prepare_kernel(tmp_path, config, monkeypatch):
    calls = []
    real = ingest_mod.prepare_quadrant
    monkeypatch.setattr(ingest_mod, "prepare_quadrant",
                        lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    ingest([make_raw(tmp_path / "in", expid=12).path], config)
    assert calls == [1, 2, 3, 4]
