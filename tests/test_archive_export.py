"""Table export (zsds.archive.export): every format round-trips values, nulls and types."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from zsds.archive.export import EXTENSIONS, FORMATS, MEDIA_TYPES, write_table


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 7
    return pd.DataFrame({
        "candid": np.arange(n, dtype=np.int64) + 361215104148000000,
        "ra": rng.uniform(0, 360, n),
        "magpsf": np.where(np.arange(n) == 2, np.nan, rng.uniform(15, 20, n)),
        "object_id": [f"ZTF26aaaaa{chr(97 + i)}{chr(98 + i)}" if i != 3 else None
                      for i in range(n)],
        "isdiffpos": np.arange(n) % 2 == 0,
        "nbad": pd.array([i if i != 5 else None for i in range(n)], dtype="Int64"),
    })


def _read(data: bytes, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if fmt in ("csv", "ipac_table"):
        t = Table.read(data.decode("utf-8"), format="ascii.csv" if fmt == "csv" else "ascii.ipac")
    else:
        t = Table.read(io.BytesIO(data), format=fmt)
    for name in t.colnames:
        if t[name].dtype.kind == "S":
            t[name] = np.char.decode(t[name].astype(bytes), "utf-8")
    return t.to_pandas()


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_dataframe(fmt):
    df = _frame()
    data, media = write_table(df, fmt)
    assert media == MEDIA_TYPES[fmt] and isinstance(data, bytes) and data
    back = _read(data, fmt)
    assert list(back.columns) == list(df.columns)
    assert back["candid"].astype("int64").tolist() == df["candid"].tolist()
    np.testing.assert_allclose(back["ra"].astype(float), df["ra"], rtol=1e-12)
    mag = back["magpsf"].astype(float).to_numpy()
    assert np.isnan(mag[2]) and np.allclose(mag[[0, 1, 3]], df["magpsf"].to_numpy()[[0, 1, 3]])
    ids = back["object_id"].tolist()
    assert ids[0] == df["object_id"][0] and ids[6] == df["object_id"][6]
    assert ids[3] is None or ids[3] == "" or pd.isna(ids[3])      # null stays null / empty
    assert [bool(v) if not isinstance(v, str) else v == "True" for v in back["isdiffpos"]] \
        == df["isdiffpos"].tolist()
    nbad = back["nbad"]
    assert pd.isna(nbad[5]) and int(nbad[4]) == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_astropy_table_with_vector_column(fmt):
    t = Table({"oid": np.array([10, 11], np.int64),
               "stamp": np.arange(18, dtype=np.float32).reshape(2, 3, 3)})
    t.meta["RELEASE"] = "dr1"
    data, _ = write_table(t, fmt)
    if fmt in ("csv", "ipac_table"):          # vector cells become JSON text
        back = Table.read(data.decode(), format="ascii.csv" if fmt == "csv" else "ascii.ipac")
        assert json.loads(back["stamp"][1]) == np.arange(9, 18).reshape(3, 3).tolist()
    elif fmt == "parquet":
        back = pd.read_parquet(io.BytesIO(data))
        assert np.asarray(back["stamp"][1].tolist()).ravel().tolist() == list(range(9, 18))
    else:
        back = Table.read(io.BytesIO(data), format=fmt)
        np.testing.assert_array_equal(back["stamp"], t["stamp"])
    assert list(back["oid"]) == [10, 11]


def test_empty_table_and_unknown_format():
    empty = _frame().iloc[:0]
    for fmt in FORMATS:
        back = _read(write_table(empty, fmt)[0], fmt)
        assert len(back) == 0 and "candid" in back.columns
    with pytest.raises(ValueError, match="'xlsx'"):
        write_table(_frame(), "xlsx")
    assert write_table(_frame(), "IPAC")[1] == "text/plain"
    assert set(EXTENSIONS) == set(FORMATS)
