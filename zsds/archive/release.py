"""Data releases: frozen, versioned, checksummed snapshots of catalogues and lightcurves.

``zsds release create NAME`` (:func:`create_release`) gathers, under
``<archive root>/releases/NAME/`` and with the archive's relative paths:

* the PSF-fit and aperture catalogues (``psfcat.fits``, ``sexcat.fits``) of the good science
  images (``science_images.status = 1``) of the selected nights;
* the catalogues (``refpsfcat.fits``, ``refsexcat.fits``) of the current version of every
  valid reference image;
* the whole lightcurve store (``lightcurves/``: Parquet files, HATS metadata, zero points);
* ``tables/science_images.parquet`` and ``tables/reference_images.parquet``: the database
  rows of the released images (provenance);
* ``manifest.json``: every file with its size and sha256, the release name and version,
  creation time, zsds version, selection and provenance counts (``docs/releases.md``).

Files are hard links to the archive files (copies with ``copy=True`` or across file
systems). zsds writers never modify a file in place (they write a new file and rename it), so a
hard link keeps the released bytes when the archive product is later rewritten. A release is
built in a hidden folder and renamed into place when complete; an existing release is never
overwritten. Every source file that has a recorded checksum is checked against it first, so a
damaged product cannot enter a release.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select

from .. import __version__
from ..db import schema as s
from ..errors import ZsdsError
from .export import write_table
from .verify import expected_checksums, file_sha256, record_checksums, release_names

__all__ = ["ReleaseError", "ReleaseResult", "create_release", "read_manifest",
           "MANIFEST_FORMAT", "RELEASE_NAME_RE"]

MANIFEST_FORMAT = "zsds-release/1"
#: Allowed release names: letters, digits, ``.``, ``_``, ``-``; not starting with ``.``.
RELEASE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCI_CATALOGUES = ("psfcat.fits", "sexcat.fits")
_REF_CATALOGUES = ("refpsfcat.fits", "refsexcat.fits")


class ReleaseError(ZsdsError):
    """A release cannot be made (name taken or invalid, damaged or missing input)."""


@dataclass(frozen=True)
class ReleaseResult:
    """A created release: its folder, manifest (as written) and how files were placed."""

    path: Path
    manifest: dict
    n_linked: int
    n_copied: int


def read_manifest(root: str | Path, name: str) -> dict:
    """The manifest of release ``name`` of the archive at ``root``."""
    path = Path(root) / "releases" / name / "manifest.json"
    if not path.is_file():
        raise ReleaseError(f"no release {name!r}: {path} does not exist")
    return json.loads(path.read_text())


def _swap_suffix(rel: str, old: str, new: str) -> str:
    if not rel.endswith("_" + old):
        raise ReleaseError(f"{rel}: expected a file name ending in _{old}")
    return rel[: -len(old)] + new


def _science_rows(engine: Engine, start_night: str | None, end_night: str | None) -> pd.DataFrame:
    c = s.science_images.c
    stmt = select(s.science_images).order_by(c.obsjd, c.ccd_id, c.qid)
    if start_night:
        stmt = stmt.where(c.night >= start_night)
    if end_night:
        stmt = stmt.where(c.night <= end_night)
    with engine.connect() as conn:
        return pd.DataFrame([dict(r._mapping) for r in conn.execute(stmt)],
                            columns=[col.name for col in s.science_images.columns])


def _reference_rows(engine: Engine) -> pd.DataFrame:
    """Current (highest) valid version of every reference quadrant."""
    c = s.reference_images.c
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(s.reference_images).where(c.status == "valid").order_by(c.version))]
    df = pd.DataFrame(rows, columns=[col.name for col in s.reference_images.columns])
    if len(df):
        df = df.drop_duplicates(["field_id", "filter_code", "ccd_id", "qid"], keep="last")
    return df.reset_index(drop=True)


def _lightcurve_files(root: Path) -> tuple[list[str], dict]:
    """Relative paths of the lightcurve store's files and its counts."""
    base = root / "lightcurves"
    if not (base / "store.json").is_file():
        return [], {"lightcurve_store": False}
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):      # temporary files of a running build
                continue
            files.append((Path(dirpath) / name).relative_to(root).as_posix())
    counts = {"lightcurve_store": True,
              "lightcurve_order": json.loads((base / "store.json").read_text()).get("order")}
    index_path = base / "partition_index.csv"
    if index_path.is_file():
        index = pd.read_csv(index_path)
        listed = {f"lightcurves/{p}" for p in index["path"]}
        missing = sorted(listed - set(files))
        if missing:
            raise ReleaseError(f"lightcurve store {base}: {len(missing)} indexed files missing, "
                               f"e.g. {missing[0]} (is a lightcurve build running?)")
        for table in ("objects", "detections"):
            rows = index[index["table"] == table]
            counts[f"lightcurve_{table}"] = int(rows["n_rows"].sum())
        counts["lightcurve_partitions"] = int(index["part"].nunique())
        counts["lightcurve_files"] = len(index)
    return files, counts


def _place(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link (or copy) ``src`` to ``dst``; True if linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(src, dst)
    os.chmod(dst, 0o444)
    return False


def _next_version(root: Path) -> tuple[int, str | None]:
    best, prev = 0, None
    for name in release_names(root):
        try:
            v = int(read_manifest(root, name).get("version", 0))
        except (ValueError, TypeError):
            continue
        if v > best:
            best, prev = v, name
    return best + 1, prev


def _kind(rel: str) -> str:
    if rel.startswith("tables/"):
        return "table"
    if rel.startswith("lightcurves/"):
        return "lightcurves"
    return rel.rsplit("_", 1)[-1].removesuffix(".fits")


def create_release(config, name: str, *, start_night: str | None = None,
                   end_night: str | None = None, copy: bool = False, description: str = "",
                   engine: Engine | None = None) -> ReleaseResult:
    """Freeze a data release ``releases/<name>/`` of the archive.

    Parameters
    ----------
    config : ZsdsConfig
        The archive (``archive.root``, database).
    name : str
        Release name (e.g. ``dr1``): letters, digits, ``.``, ``_``, ``-``.
    start_night, end_night : str, optional
        ``YYYYMMDD``: release the science catalogues of these nights only (default: all).
    copy : bool
        Copy the files instead of hard-linking them.
    description : str
        Free text stored in the manifest.
    engine : sqlalchemy.Engine, optional
        Default from the configuration.

    Returns
    -------
    ReleaseResult

    Raises
    ------
    ReleaseError
        The name is invalid or taken, an input file is missing or does not match its recorded
        checksum, or there is nothing to release.
    """
    from ..db.ops import engine_from_config

    if not RELEASE_NAME_RE.match(name or ""):
        raise ReleaseError(f"release name {name!r}: use letters, digits, '.', '_' and '-' "
                           "(not starting with '.'; at most 64 characters)")
    for label, night in (("start_night", start_night), ("end_night", end_night)):
        if night is not None and not (len(night) == 8 and night.isdigit()):
            raise ReleaseError(f"{label} must be YYYYMMDD, not {night!r}")
    root = Path(config.archive.root)
    final = root / "releases" / name
    if final.exists():
        raise ReleaseError(f"release {name!r} already exists at {final}; releases are "
                           "immutable (choose a new name)")
    engine = engine or engine_from_config(config)

    sci = _science_rows(engine, start_night, end_night)
    good = sci[sci["status"] == 1].reset_index(drop=True)
    refs = _reference_rows(engine)
    files = [_swap_suffix(p, "sciimg.fits", sfx) for p in good["path"] for sfx in _SCI_CATALOGUES]
    files += [_swap_suffix(p, "refimg.fits", sfx) for p in refs["path"] for sfx in _REF_CATALOGUES]
    lc_files, lc_counts = _lightcurve_files(root)
    files += lc_files
    if not files:
        raise ReleaseError(f"nothing to release in {root}: no good science images"
                           + (f" between {start_night} and {end_night}" if start_night or end_night
                              else "") + ", no reference catalogues and no lightcurve store")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise ReleaseError(f"{len(missing)} files to release are missing, e.g. {root / missing[0]}")

    version, previous = _next_version(root)
    work = root / "releases" / f".{name}.partial-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    known = expected_checksums(engine)
    entries, n_linked, n_copied = [], 0, 0
    try:
        for rel in files:
            dst = work / rel
            linked = _place(root / rel, dst, copy)
            n_linked += linked
            n_copied += not linked
            digest = file_sha256(dst)
            exp = known.get(rel)
            if exp is not None and exp.sha256 != digest:
                raise ReleaseError(f"{root / rel} does not match its recorded checksum "
                                   f"({exp.source}); run zsds archive verify")
            entries.append({"path": rel, "size": dst.stat().st_size, "sha256": digest,
                            "kind": _kind(rel)})
        for table, df in (("science_images", good), ("reference_images", refs)):
            rel = f"tables/{table}.parquet"
            data, _ = write_table(df, "parquet")
            (work / "tables").mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
            os.chmod(work / rel, 0o444)
            entries.append({"path": rel, "size": len(data), "sha256": file_sha256(work / rel),
                            "kind": "table"})
        manifest = _manifest(name, version, previous, description, start_night, end_night,
                             sci, good, refs, lc_counts, entries, engine)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(work / "manifest.json", 0o444)
        if final.exists():
            raise ReleaseError(f"release {name!r} was created concurrently at {final}")
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    record_checksums(engine, root, [final / "manifest.json"])
    return ReleaseResult(final, manifest, n_linked, n_copied)


def _manifest(name, version, previous, description, start_night, end_night, sci, good, refs,
              lc_counts, entries, engine) -> dict:
    with engine.connect() as conn:
        schema_version = conn.execute(select(s.schema_info.c.value).where(
            s.schema_info.c.key == "schema_version")).scalar()
    nights = sorted(good["night"].unique().tolist()) if len(good) else []
    provenance = {
        "science_images": int(len(good)),
        "science_images_excluded_bad": int(len(sci) - len(good)),
        "exposures": int(good["expid"].nunique()) if len(good) else 0,
        "nights": nights,
        "fields": sorted(int(f) for f in good["field_id"].unique()) if len(good) else [],
        "filters": sorted(good["filter_code"].unique().tolist()) if len(good) else [],
        "programids": sorted(int(p) for p in good["programid"].unique()) if len(good) else [],
        "obsjd_range": ([float(good["obsjd"].min()), float(good["obsjd"].max())]
                        if len(good) else None),
        "reference_images": int(len(refs)),
        **lc_counts,
        "database_schema_version": schema_version,
    }
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "previous_release": previous,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "zsds_version": __version__,
        "selection": {"start_night": start_night, "end_night": end_night,
                      "science_image_status": 1},
        "provenance": provenance,
        "totals": {"files": len(entries), "bytes": int(sum(e["size"] for e in entries))},
        "files": entries,
    }
