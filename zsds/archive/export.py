"""Tables to bytes in the formats astronomers use: CSV, IPAC table, VOTable, FITS, Parquet.

One entry point, :func:`write_table`, serves the ``zsds export`` command, the web API's
``FORMAT`` parameter and data releases. Writers are astropy's (``ascii.csv``, ``ascii.ipac``,
``votable``, ``fits``) and pyarrow's (Parquet), so the output follows their conventions:
missing values are masked (empty in CSV, ``null`` in IPAC tables, VOTable nulls, FITS
``TNULL`` for integers, NaN for floats); text is UTF-8.
"""

from __future__ import annotations

import io
import json
from typing import Union

import numpy as np
import pandas as pd
from astropy.table import Column, MaskedColumn, Table

__all__ = ["FORMATS", "MEDIA_TYPES", "EXTENSIONS", "write_table", "to_astropy", "normalize_format"]

#: Format name -> media type of the bytes.
MEDIA_TYPES = {
    "csv": "text/csv",
    "ipac_table": "text/plain",
    "votable": "application/x-votable+xml",
    "fits": "application/fits",
    "parquet": "application/vnd.apache.parquet",
}
#: Format name -> usual file extension.
EXTENSIONS = {"csv": ".csv", "ipac_table": ".tbl", "votable": ".vot", "fits": ".fits",
              "parquet": ".parquet"}
FORMATS = tuple(MEDIA_TYPES)

_ALIASES = {"ipac": "ipac_table", "tbl": "ipac_table", "vot": "votable", "xml": "votable",
            "fit": "fits", "pq": "parquet"}

TableLike = Union[pd.DataFrame, Table]


def normalize_format(fmt: str) -> str:
    """The canonical format name of ``fmt`` (case-insensitive; ``ipac``, ``vot`` accepted).

    Raises
    ------
    ValueError
        If the format is not one of :data:`FORMATS`; the message names it.
    """
    key = str(fmt).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MEDIA_TYPES:
        raise ValueError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    return key


def _object_column(name: str, values: pd.Series) -> MaskedColumn:
    """An object column (text, bytes, lists, None) as a masked string column."""
    mask = values.isna().to_numpy()

    def text(v):
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if isinstance(v, (list, tuple, dict)):
            return json.dumps(v, default=str)
        if isinstance(v, np.ndarray):
            return json.dumps(v.tolist(), default=str)
        return str(v)

    data = np.array(["" if m else text(v) for v, m in zip(values, mask)], dtype=str)
    if data.dtype.itemsize == 0:
        data = data.astype("U1")
    return MaskedColumn(data, name=name, mask=mask)


def to_astropy(table: TableLike) -> Table:
    """An astropy :class:`~astropy.table.Table` of a DataFrame or Table, writable in every format.

    Object columns become (masked) strings, lists and dicts JSON text; nullable pandas
    columns become masked columns; the DataFrame index is dropped; datetimes become ISO text.
    """
    if isinstance(table, Table):
        out = Table(table, copy=False, masked=False)
        for name in out.colnames:
            if out[name].dtype.kind == "O":
                out[name] = _object_column(name, pd.Series(list(out[name])))
        return out
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"write_table needs a pandas DataFrame or an astropy Table, "
                        f"not {type(table).__name__}")
    cols = []
    for name in table.columns:
        s = table[name]
        label = str(name)
        if pd.api.types.is_datetime64_any_dtype(s):
            iso = s.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
            cols.append(_object_column(label, iso.astype(object).where(s.notna(), None)))
        elif s.dtype == object or pd.api.types.is_string_dtype(s) \
                or isinstance(s.dtype, pd.CategoricalDtype):
            cols.append(_object_column(label, s.astype(object)))
        elif isinstance(s.dtype, pd.api.extensions.ExtensionDtype):  # Int64, boolean, Float64
            mask = s.isna().to_numpy()
            kind = s.dtype.numpy_dtype
            fill = False if kind.kind == "b" else 0
            cols.append(MaskedColumn(s.fillna(fill).to_numpy(dtype=kind), name=label, mask=mask))
        else:
            cols.append(Column(s.to_numpy(), name=label))
    return Table(cols, meta=dict(getattr(table, "attrs", {}) or {}))


def _to_arrow(table: TableLike):
    """A pyarrow table (masked values null; multidimensional cells as lists)."""
    import pyarrow as pa

    if isinstance(table, pd.DataFrame):
        return pa.Table.from_pandas(table, preserve_index=False)
    t = to_astropy(table)
    arrays = {}
    for name in t.colnames:
        col = t[name]
        if col.ndim > 1:
            arrays[name] = pa.array(np.asarray(col).tolist())
            continue
        mask = np.ma.getmaskarray(col) if isinstance(col, MaskedColumn) else None
        data = np.asarray(col.filled() if isinstance(col, MaskedColumn) else col)
        arrays[name] = pa.array(data, mask=mask if mask is not None and mask.any() else None)
    return pa.table(arrays, metadata={str(k): json.dumps(v, default=str)
                                      for k, v in t.meta.items()} or None)


def write_table(table: TableLike, fmt: str) -> tuple[bytes, str]:
    """Serialise a table.

    Parameters
    ----------
    table : pandas.DataFrame or astropy.table.Table
        The rows. Column names are kept; the DataFrame index is dropped.
    fmt : str
        ``csv``, ``ipac_table``, ``votable``, ``fits`` or ``parquet`` (case-insensitive;
        ``ipac`` and ``vot`` accepted as aliases).

    Returns
    -------
    data : bytes
        The serialised table.
    media_type : str
        Its media type (``text/csv``, ``text/plain`` for IPAC tables,
        ``application/x-votable+xml``, ``application/fits``, ``application/vnd.apache.parquet``).

    Raises
    ------
    ValueError
        If ``fmt`` is not a known format (the message names it).
    """
    key = normalize_format(fmt)
    if key == "parquet":
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(_to_arrow(table), buf, compression="zstd")
        return buf.getvalue(), MEDIA_TYPES[key]
    t = to_astropy(table)
    if key in ("csv", "ipac_table"):
        t = _flat(t)
        if key == "ipac_table":
            t = _ipac_meta(t)
        text = io.StringIO()
        t.write(text, format="ascii.csv" if key == "csv" else "ascii.ipac", overwrite=True)
        return text.getvalue().encode("utf-8"), MEDIA_TYPES[key]
    buf = io.BytesIO()
    if key == "votable":
        t.write(buf, format="votable")
    else:
        _fits_safe(t).write(buf, format="fits")
    return buf.getvalue(), MEDIA_TYPES[key]


def _flat(t: Table) -> Table:
    """Multidimensional cells as JSON text (CSV and IPAC tables hold scalars only)."""
    multi = [n for n in t.colnames if t[n].ndim > 1]
    if not multi:
        return t
    out = Table(t, copy=False)
    for name in multi:
        out[name] = Column([json.dumps(v) for v in np.asarray(t[name]).tolist()], name=name)
    return out


def _ipac_meta(t: Table) -> Table:
    """Scalar metadata as IPAC keywords (``\\KEY = value`` lines); the rest is dropped."""
    out = Table(t, copy=False)
    out.meta = {"keywords": {str(k): {"value": v} for k, v in t.meta.items()
                             if isinstance(v, (int, float, str, bool))}}
    return out


def _fits_safe(t: Table) -> Table:
    """FITS needs ASCII bytes for strings and short scalar header values."""
    out = Table(t, copy=False)
    out.meta = {k: v for k, v in t.meta.items()
                if isinstance(v, (int, float, str, bool)) and len(str(k)) <= 8}
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind == "U":
            enc = np.char.encode(np.asarray(col), "utf-8")
            out[name] = MaskedColumn(enc, name=name, mask=getattr(col, "mask", False))
    return out
