"""The lightcurve store: HEALPix-partitioned Parquet in a HATS-like layout, and cone search.

Layout under ``<archive>/lightcurves`` (:attr:`zsds.io.paths.ArchiveLayout.lightcurves_dir`)::

    store.json                                  order k, version, creation time
    partition_index.csv                         one row per written file (table, part, Npix, rows)
    objects/hats.properties                     HATS catalogue properties (catalog_type=object)
    objects/partition_info.csv                  Norder,Npix of the non-empty pixels
    objects/dataset/_metadata, _common_metadata row-group footers of all files, schema
    objects/dataset/Norder=k/Dir=d/Npix=n/<part>.parquet
    detections/...                              the same, catalog_type=source
    zeropoints/<part>.parquet                   refined zero points of the epochs of a partition

``<part>`` is the build partition ``f<field6>_<fc>_c<CC>_q<Q>`` (one Dask task each); ``Npix``
the nested HEALPix pixel of order ``k`` of the *object*; ``Dir = 10000 * (Npix // 10000)``. A
detection is stored in its object's pixel, so an object and its lightcurve share a directory.
Rows carry ``_healpix_29`` (nested, order 29) and are sorted by it. A leaf partition is a
directory of files (``hats_npix_suffix=/``), one per build partition, so tasks never write the
same file. Any Parquet reader works on ``objects/dataset`` or ``detections/dataset``:
``pandas.read_parquet``, ``pyarrow.dataset``, ``dask.dataframe.read_parquet``, and duckdb's
``read_parquet('.../dataset/**/*.parquet')``; the hive-style directory names add
``Norder, Dir, Npix`` columns.

Files are written to a temporary name and renamed. Not safe for two concurrent writers of the
same build partition; readers may run at any time.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["LightcurveStore", "FileOpenCounter", "ConeResult", "cone_search", "healpix29",
           "pixel_of", "choose_order", "part_key", "TABLES"]

TABLES = ("objects", "detections")
HEALPIX29 = "_healpix_29"
_INDEX_COLUMNS = ["table", "part", "Norder", "Npix", "path", "n_rows"]


def part_key(field_id: int, filter_code: str, ccd_id: int, qid: int) -> str:
    """Name of a build partition, ``f<field6>_<fc>_c<CC>_q<Q>``."""
    return f"f{int(field_id):06d}_{filter_code}_c{int(ccd_id):02d}_q{int(qid)}"


def healpix29(ra_deg, dec_deg) -> np.ndarray:
    """Nested HEALPix index of order 29 (the HATS ``_healpix_29`` column), int64."""
    return hp.ang2pix(2**29, np.asarray(ra_deg, float), np.asarray(dec_deg, float),
                      nest=True, lonlat=True).astype(np.int64)


def pixel_of(h29, order: int) -> np.ndarray:
    """Pixel of order ``order`` containing order-29 pixels ``h29``."""
    return np.asarray(h29, np.int64) >> (2 * (29 - order))


def choose_order(area_deg2: float, pixels_per_partition: int = 200) -> int:
    """Lowest HEALPix order whose pixels are at most ``area / pixels_per_partition``.

    A build partition (a quadrant) then spans about ``pixels_per_partition`` files per table,
    so a cone search of a few arcsec opens well under 2 % of them: order 10 for full ZTF
    quadrants (0.75 deg2), order 12-13 for 512-pixel test quadrants.
    """
    for order in range(0, 20):
        if hp.nside2pixarea(2**order, degrees=True) <= area_deg2 / pixels_per_partition:
            return order
    return 19


class FileOpenCounter:
    """Counts the files a reader opens (thread-safe); pass it to :func:`cone_search`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.paths: list[str] = []

    def open(self, path):
        with self._lock:
            self.paths.append(str(path))
        return open(path, "rb")

    @property
    def count(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class ConeResult:
    """Rows of a cone search and the files opened to find them."""

    objects: pd.DataFrame
    detections: pd.DataFrame | None
    files_opened: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LightcurveStore:
    """A lightcurve store rooted at ``root`` (usually ``<archive>/lightcurves``)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- properties --------------------------------------------------------------------------
    @property
    def properties_path(self) -> Path:
        return self.root / "store.json"

    def exists(self) -> bool:
        return self.properties_path.exists()

    @property
    def order(self) -> int:
        """HEALPix order of the partitions (fixed when the store is created)."""
        return int(json.loads(self.properties_path.read_text())["order"])

    def create(self, order: int) -> None:
        """Create an empty store of HEALPix order ``order`` (no-op if it exists)."""
        if self.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.properties_path,
                           json.dumps({"order": int(order), "format": "zsds-lightcurves/1"}))

    def dataset_dir(self, table: str) -> Path:
        return self.root / table / "dataset"

    def pixel_dir(self, table: str, order: int, npix: int) -> Path:
        """``<table>/dataset/Norder=k/Dir=d/Npix=n`` (HATS directory scheme)."""
        return (self.dataset_dir(table) / f"Norder={order}" / f"Dir={(npix // 10000) * 10000}"
                / f"Npix={npix}")

    def zeropoints_path(self, part: str) -> Path:
        return self.root / "zeropoints" / f"{part}.parquet"

    # -- index ----------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / "partition_index.csv"

    def read_index(self) -> pd.DataFrame:
        """The file index: ``table, part, Norder, Npix, path (relative), n_rows``."""
        if not self.index_path.exists():
            return pd.DataFrame(columns=_INDEX_COLUMNS)
        return pd.read_csv(self.index_path, dtype={"table": str, "part": str, "path": str})

    def files_of_part(self, part: str) -> pd.DataFrame:
        index = self.read_index()
        return index[index["part"] == part]

    # -- partition I/O --------------------------------------------------------------------------
    def write_part(self, part: str, objects: pd.DataFrame, detections: pd.DataFrame,
                   zeropoints: pd.DataFrame, schemas: dict[str, pa.Schema]) -> list[dict]:
        """Write one build partition, replacing its previous files; returns its index rows.

        ``objects`` and ``detections`` must carry ``_healpix_29`` (the object's, for
        detections).
        """
        order = self.order
        old = {self.root / p for p in self.files_of_part(part)["path"]}
        rows: list[dict] = []
        for table, df in (("objects", objects), ("detections", detections)):
            pix = pixel_of(df[HEALPIX29].to_numpy(), order)
            df = df.assign(_pix=pix).sort_values([HEALPIX29], kind="stable")
            for npix, chunk in df.groupby("_pix", sort=True):
                path = self.pixel_dir(table, order, int(npix)) / f"{part}.parquet"
                _write_parquet(chunk.drop(columns="_pix"), path, schemas[table])
                old.discard(path)
                rows.append({"table": table, "part": part, "Norder": order, "Npix": int(npix),
                             "path": str(path.relative_to(self.root)), "n_rows": len(chunk)})
        _write_parquet(zeropoints, self.zeropoints_path(part), None)
        for stale in old:
            stale.unlink(missing_ok=True)
        return rows

    def read_part(self, part: str) -> dict[str, pd.DataFrame]:
        """All rows of one build partition: ``{"objects": df, "detections": df}``."""
        files = self.files_of_part(part)
        out = {}
        for table in TABLES:
            paths = [self.root / p for p in files.loc[files["table"] == table, "path"]]
            frames = [pq.read_table(p).to_pandas() for p in paths if p.exists()]
            out[table] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return out

    def finalize(self, new_rows: list[dict], parts: list[str], schemas: dict[str, pa.Schema]) -> None:
        """Replace the index rows of ``parts`` and rewrite the catalogue metadata."""
        index = self.read_index()
        index = pd.concat([index[~index["part"].isin(parts)], pd.DataFrame(new_rows, columns=_INDEX_COLUMNS)],
                          ignore_index=True).sort_values(["table", "Npix", "part"])
        _atomic_write_text(self.index_path, index.to_csv(index=False))
        for table in TABLES:
            self._write_catalog_metadata(table, index[index["table"] == table], schemas[table])

    def _write_catalog_metadata(self, table: str, index: pd.DataFrame, schema: pa.Schema) -> None:
        base = self.root / table
        dataset = self.dataset_dir(table)
        dataset.mkdir(parents=True, exist_ok=True)
        collected = []
        for rel in index["path"]:
            md = pq.read_metadata(self.root / rel)
            md.set_file_path(str((self.root / rel).relative_to(dataset)))
            collected.append(md)
        pq.write_metadata(schema, dataset / "_common_metadata")
        pq.write_metadata(schema, dataset / "_metadata", metadata_collector=collected)
        pixels = index.groupby(["Norder", "Npix"], as_index=False)["n_rows"].sum()
        _atomic_write_text(base / "partition_info.csv", pixels[["Norder", "Npix"]].to_csv(index=False))
        props = {"obs_collection": f"zsds_{table}", "dataproduct_type": "object",
                 "catalog_type": "object" if table == "objects" else "source",
                 "hats_nrows": int(index["n_rows"].sum()), "hats_col_ra": "ra",
                 "hats_col_dec": "dec", "hats_npix_suffix": "/",
                 "hats_max_rows": int(pixels["n_rows"].max()) if len(pixels) else 0,
                 "hats_order": self.order, "hats_builder": "zsds", "hats_version": "v0.1"}
        if table == "detections":
            props.update(hats_col_ra="ra", hats_col_dec="dec", hats_primary_catalog="objects")
        _atomic_write_text(base / "hats.properties", "".join(f"{k}={v}\n" for k, v in props.items()))


def _write_parquet(df: pd.DataFrame, path: Path, schema: pa.Schema | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cone_pixels(order: int, ra: float, dec: float, radius_arcsec: float) -> np.ndarray:
    vec = hp.ang2vec(ra, dec, lonlat=True)
    return hp.query_disc(2**order, vec, np.radians(radius_arcsec / 3600.0), inclusive=True, nest=True)


def _separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1)))) * 3600.0


def _read_files(store: LightcurveStore, table: str, pixels, counter: FileOpenCounter,
                columns, filters=None) -> pd.DataFrame:
    frames = []
    for npix in pixels:
        d = store.pixel_dir(table, store.order, int(npix))
        if not d.is_dir():
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith(".parquet") and not name.startswith("."):
                with counter.open(d / name) as fh:
                    frames.append(pq.read_table(fh, columns=columns, filters=filters).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def cone_search(store: LightcurveStore | str | Path, ra: float, dec: float, radius_arcsec: float, *,
                columns: list[str] | None = None, detections: bool = False,
                counter: FileOpenCounter | None = None) -> ConeResult:
    """Objects (and optionally their detections) within ``radius_arcsec`` of (ra, dec).

    Only the Parquet files of the HEALPix pixels that the cone touches are opened (found by
    directory listing, no index read); ``counter`` records them.

    Parameters
    ----------
    store : LightcurveStore or path
    ra, dec : float
        Centre, degrees.
    radius_arcsec : float
    columns : list of str, optional
        Object columns to return (``oid, ra, dec`` are always read).
    detections : bool
        Also return the detections of the objects found.
    counter : FileOpenCounter, optional

    Returns
    -------
    ConeResult
        ``objects`` gets a ``sep_arcsec`` column, sorted by it.
    """
    if radius_arcsec <= 0:
        raise ValueError(f"radius_arcsec must be positive, not {radius_arcsec}")
    store = store if isinstance(store, LightcurveStore) else LightcurveStore(Path(store))
    counter = counter or FileOpenCounter()
    pixels = _cone_pixels(store.order, ra, dec, radius_arcsec)
    cols = None if columns is None else list(dict.fromkeys(["oid", "ra", "dec", *columns]))
    objs = _read_files(store, "objects", pixels, counter, cols)
    if len(objs):
        sep = _separation_arcsec(ra, dec, objs["ra"], objs["dec"])
        objs = objs.assign(sep_arcsec=sep)[sep <= radius_arcsec].sort_values("sep_arcsec")
    dets = None
    if detections:
        oids = objs["oid"].tolist()
        dets = (_read_files(store, "detections", pixels, counter, None, [("oid", "in", oids)])
                if oids else pd.DataFrame())
    return ConeResult(objs.reset_index(drop=True), dets, list(counter.paths))
