"""Reading and writing the reference catalogue (``shared/spec/reference-catalog.md``).

Any Parquet dataset with the spec columns can be read: one file or a directory of files in any
partitioning. Reads push a position filter (a dec band and, away from the poles, an ra band that
handles the 0/360 wrap) into :mod:`pyarrow.dataset`, so row groups and files whose statistics
lie outside the cone are skipped, and then apply an exact angular cut.

The catalogues zsds writes (:func:`write_refcat`) are partitioned by nested HEALPix pixel of
order :data:`PARTITION_ORDER`, one file per pixel::

    <outdir>/_zsds_refcat.json          partitioning description (order, file pattern)
    <outdir>/_common_metadata           Parquet schema of the dataset
    <outdir>/hpx5=<pixel>/part-0.parquet   rows sorted by dec, row groups of ~20k rows

For such a dataset the reader opens only the files of the pixels that overlap the cone.
Null values of float columns come back as NaN.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import healpy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from zsds.errors import InputDataError

__all__ = ["REFCAT_SCHEMA", "PARTITION_ORDER", "LAYOUT_FILE", "write_refcat", "read_refcat",
           "refcat_files_for_cone", "apply_proper_motion", "angular_separation_deg"]

#: The spec columns and their Arrow types (all but source_id, ra, dec, ref_epoch nullable).
REFCAT_SCHEMA = pa.schema([
    pa.field("source_id", pa.int64(), nullable=False),
    pa.field("ra", pa.float64(), nullable=False),
    pa.field("dec", pa.float64(), nullable=False),
    pa.field("ref_epoch", pa.float64(), nullable=False),
    *(pa.field(name, pa.float32()) for name in
      ("pmra", "pmdec", "g", "r", "i", "g_err", "r_err", "i_err")),
])
#: HEALPix order (nested) of the partitions written by :func:`write_refcat` (~3.4 deg^2 each).
PARTITION_ORDER = 5
#: Name of the file describing the partitioning of a zsds-written catalogue.
LAYOUT_FILE = "_zsds_refcat.json"
_SCHEMA_FILE = "_common_metadata"
_PART_FILE = "part-0.parquet"
_ROW_GROUP_SIZE = 20_000
_SPEC_NAMES = REFCAT_SCHEMA.names


# --------------------------------------------------------------------------- writing

def _partition_dir(outdir: Path, order: int, pix: int) -> Path:
    return outdir / f"hpx{order}={pix}"


def _atomic_write(write, dest: Path) -> None:
    """Call ``write(tmp_path)`` on a hidden temporary file beside ``dest``, then rename it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(directory: Path):
    """An exclusive advisory lock on ``directory/.lock`` (serialises read-modify-write)."""
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _to_table(df: pd.DataFrame) -> pa.Table:
    """Arrow table with the spec columns cast to their spec types (NaN becomes null)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    for field in REFCAT_SCHEMA:
        idx = table.schema.get_field_index(field.name)
        table = table.set_column(idx, field, table.column(idx).cast(field.type))
    return table


def write_refcat(df: pd.DataFrame, outdir, *, merge: bool = True,
                 row_group_size: int = _ROW_GROUP_SIZE) -> list[Path]:
    """Write a catalogue as a HEALPix-partitioned Parquet dataset.

    Each partition file is written to a temporary name and renamed into place, so readers
    never see a partial file. Writing is idempotent: re-writing the same catalogue gives the
    same files.

    Parameters
    ----------
    df : pandas.DataFrame
        The spec columns (extra columns are kept). Float NaN is written as null.
    outdir : str or Path
        Dataset directory (created if needed).
    merge : bool
        If True (default), rows already stored in a partition are kept unless the new frame
        has the same ``source_id`` (new rows win), so catalogues of adjacent regions can be
        written into one dataset. If False, each touched partition is replaced.
    row_group_size : int
        Rows per Parquet row group (rows are sorted by dec so row-group statistics prune).

    Returns
    -------
    list of Path
        The partition files written.
    """
    missing = [c for c in _SPEC_NAMES if c not in df.columns]
    if missing:
        raise ValueError(f"reference catalogue frame lacks spec column(s) {missing}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pix = healpy.ang2pix(2 ** PARTITION_ORDER, df["ra"].to_numpy(float),
                         df["dec"].to_numpy(float), nest=True, lonlat=True)
    written = []
    for p in np.unique(pix):
        written.append(_write_partition(df[pix == p], outdir, int(p), merge, row_group_size))
    if len(df.columns):
        schema = _to_table(df.iloc[:0]).schema.remove_metadata()
        _atomic_write(lambda tmp: pq.write_metadata(schema, tmp), outdir / _SCHEMA_FILE)
    layout = {"format": "zsds-refcat", "scheme": "healpix-nested", "order": PARTITION_ORDER,
              "partition": f"hpx{PARTITION_ORDER}={{pixel}}/{_PART_FILE}",
              "sorted_by": "dec", "row_group_size": row_group_size}
    _atomic_write(lambda tmp: Path(tmp).write_text(json.dumps(layout, indent=1) + "\n"),
                  outdir / LAYOUT_FILE)
    return written


def _write_partition(part: pd.DataFrame, outdir: Path, pix: int, merge: bool,
                     row_group_size: int) -> Path:
    pdir = _partition_dir(outdir, PARTITION_ORDER, pix)
    pdir.mkdir(exist_ok=True)
    dest = pdir / _PART_FILE
    with _locked(pdir):
        if merge and dest.exists():
            old = pq.read_table(dest).to_pandas()
            old = old[~old["source_id"].isin(part["source_id"])]
            part = pd.concat([old, part], ignore_index=True) if len(old) else part
        part = part.sort_values(["dec", "source_id"], kind="stable").reset_index(drop=True)
        table = _to_table(part).replace_schema_metadata(None)
        _atomic_write(lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size,
                                                 compression="zstd"), dest)
    return dest


# --------------------------------------------------------------------------- reading

def angular_separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance (deg) between positions in degrees (haversine, stable when small)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    h = (np.sin((dec2 - dec1) / 2) ** 2
         + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _cone_filter(ra_deg: float, dec_deg: float, radius_deg: float) -> ds.Expression:
    """A superset filter of a cone: a dec band and, unless a pole is inside, an ra band."""
    margin = 1e-7
    lo, hi = dec_deg - radius_deg - margin, dec_deg + radius_deg + margin
    expr = (ds.field("dec") >= max(lo, -90.0)) & (ds.field("dec") <= min(hi, 90.0))
    if lo <= -90.0 or hi >= 90.0:
        return expr
    ratio = np.sin(np.radians(radius_deg)) / np.cos(np.radians(dec_deg))
    if ratio >= 1.0:
        return expr
    half = np.degrees(np.arcsin(ratio)) + margin
    ra_lo, ra_hi = (ra_deg - half) % 360.0, (ra_deg + half) % 360.0
    if ra_lo <= ra_hi:
        ra_expr = (ds.field("ra") >= ra_lo) & (ds.field("ra") <= ra_hi)
    else:  # the band crosses ra = 0/360
        ra_expr = (ds.field("ra") >= ra_lo) | (ds.field("ra") <= ra_hi)
    return expr & ra_expr


def _zsds_layout(path: Path) -> dict | None:
    layout_path = path / LAYOUT_FILE
    if not (path.is_dir() and layout_path.exists()):
        return None
    try:
        layout = json.loads(layout_path.read_text())
        return layout if layout.get("scheme") == "healpix-nested" else None
    except (OSError, ValueError) as exc:
        raise InputDataError(str(layout_path), f"unreadable partitioning description: {exc}")


def refcat_files_for_cone(path, ra_deg: float, dec_deg: float,
                          radius_deg: float) -> list[Path] | None:
    """The partition files of a zsds-written catalogue that can hold sources of a cone.

    Returns None when ``path`` is not a zsds-partitioned dataset (then the whole dataset is
    scanned with a position filter).
    """
    path = Path(path)
    layout = _zsds_layout(path)
    if layout is None:
        return None
    order = int(layout["order"])
    vec = healpy.ang2vec(ra_deg, dec_deg, lonlat=True)
    pixels = healpy.query_disc(2 ** order, vec, np.radians(radius_deg), inclusive=True, nest=True)
    files = [_partition_dir(path, order, int(p)) / _PART_FILE for p in pixels]
    return [f for f in files if f.exists()]


def _open_dataset(path: Path, files: list[Path] | None) -> ds.Dataset:
    try:
        if files is None:
            return ds.dataset(str(path), format="parquet")
        if files:
            return ds.dataset([str(f) for f in files], format="parquet")
        schema_file = path / _SCHEMA_FILE
        schema = pq.read_schema(schema_file) if schema_file.exists() else REFCAT_SCHEMA
        return ds.dataset([], schema=schema, format="parquet")
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(str(path), f"not a readable Parquet dataset: {exc}") from exc


def _cast_spec_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Spec columns to their spec dtypes (float32 NaN for nulls)."""
    for field in REFCAT_SCHEMA:
        if field.name in df.columns:
            dtype = np.dtype(field.type.to_pandas_dtype())
            df[field.name] = df[field.name].astype(dtype)
    return df


def read_refcat(path, ra_deg: float, dec_deg: float, radius_deg: float,
                columns: list[str] | None = None) -> pd.DataFrame:
    """Read the sources within ``radius_deg`` of a position from a reference catalogue.

    Parameters
    ----------
    path : str or Path
        A Parquet file or a directory of Parquet files following the reference-catalogue spec
        (any partitioning; a zsds-written dataset is pruned to the overlapping partitions).
    ra_deg, dec_deg, radius_deg : float
        Cone centre (ICRS, degrees) and radius (degrees). Positions are compared at the
        catalogue's ``ref_epoch``; widen the radius by the largest expected proper motion
        offset if that matters.
    columns : list of str, optional
        Columns to return; default the spec columns. Unknown extra columns of the dataset are
        ignored unless requested.

    Returns
    -------
    pandas.DataFrame
        The sources inside the cone, sorted by ``source_id``, spec columns with spec dtypes
        (float nulls as NaN).

    Raises
    ------
    InputDataError
        The path does not exist, is not readable Parquet, or lacks a needed column (named).
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(str(path), "reference catalogue not found")
    columns = list(_SPEC_NAMES if columns is None else columns)
    dataset = _open_dataset(path, refcat_files_for_cone(path, ra_deg, dec_deg, radius_deg))
    needed = list(dict.fromkeys(columns + ["ra", "dec"]))
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        raise InputDataError(str(path), f"reference catalogue lacks column(s) {missing}")
    if "source_id" not in needed and "source_id" in dataset.schema.names:
        needed.append("source_id")   # to sort the result
    try:
        table = dataset.to_table(columns=needed,
                                 filter=_cone_filter(ra_deg, dec_deg, radius_deg))
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(str(path), f"cannot read reference catalogue: {exc}") from exc
    df = table.to_pandas()
    inside = angular_separation_deg(df["ra"], df["dec"], ra_deg, dec_deg) <= radius_deg
    df = df[inside]
    if "source_id" in df.columns:
        df = df.sort_values("source_id", kind="stable")
    return _cast_spec_columns(df[columns].reset_index(drop=True))


# --------------------------------------------------------------------------- epochs

def apply_proper_motion(df: pd.DataFrame, epoch_jyear: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions propagated from ``ref_epoch`` to ``epoch_jyear`` with the proper motions.

    Linear motion in the tangent plane of each source (gnomonic), adequate for decades; null
    proper motions count as zero.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``ra, dec`` (deg), ``ref_epoch`` (Julian year), ``pmra`` (includes cos dec) and
        ``pmdec`` (mas/yr).
    epoch_jyear : float
        Target epoch, Julian year.

    Returns
    -------
    ra, dec : numpy.ndarray
        Positions at ``epoch_jyear`` in degrees (ra in [0, 360)).
    """
    dt = float(epoch_jyear) - df["ref_epoch"].to_numpy(float)
    mas_to_rad = np.radians(1.0 / 3.6e6)
    xi = np.nan_to_num(df["pmra"].to_numpy(float)) * dt * mas_to_rad
    eta = np.nan_to_num(df["pmdec"].to_numpy(float)) * dt * mas_to_rad
    ra0, dec0 = np.radians(df["ra"].to_numpy(float)), np.radians(df["dec"].to_numpy(float))
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)
