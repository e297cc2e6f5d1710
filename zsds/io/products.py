"""Writing and reading the FITS products of the pipeline (images and catalogues).

All writes are atomic (temporary file in the destination folder, then rename), so a task
killed mid-write never leaves a truncated product, and a recomputed task replaces its
products whole. Catalogue pixel coordinates are converted here, and only here, from zsds's
0-based convention to the FITS 1-based convention (columns listed in ``ONE_BASED``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

__all__ = ["write_image", "write_smooth_maps", "write_table", "read_table", "write_text", "ONE_BASED",
           "write_hdulist"]

#: Catalogue columns holding 0-based pixel coordinates in memory and 1-based ones on disk.
ONE_BASED = ("x", "y", "xpos", "ypos", "x_psf", "y_psf", "x_init", "y_init")


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_hdulist(path, hdul: fits.HDUList) -> Path:
    """Write an HDUList atomically."""
    return _atomic(path, lambda p: hdul.writeto(p, overwrite=True))


def fit_comments(header: fits.Header | None) -> fits.Header | None:
    """Shorten comments that would not fit their 80-character card (instead of a warning)."""
    if header is None:
        return None
    for card in list(header.cards):
        if card.keyword in ("COMMENT", "HISTORY", "") or not card.comment:
            continue
        value = str(card.value)
        prefix = 10 if len(card.keyword) <= 8 else 12 + len(card.keyword)  # HIERARCH
        if len(card.comment) <= 80 - prefix - 3 - max(20, len(value) + 4 + value.count("'")):
            continue  # fits for certain: no need to format the card (slow in astropy)
        bare = len(str(fits.Card(card.keyword, card.value)).rstrip())
        room = 80 - bare - 3
        if len(card.comment) > room:
            header.comments[card.keyword] = card.comment[: max(0, room)]
    return header


def write_image(path, data: np.ndarray, header: fits.Header | None = None, *,
                compress: bool = False, noise: float | None = None) -> Path:
    """Write one image (primary HDU, or a RICE-compressed extension if ``compress``).

    Compressed float images are quantised (no dithering, astropy's default) to 1/16 of the pixel
    noise: of ``noise`` (the image's 1-sigma background noise, its units) when given, else of
    the noise astropy estimates in every tile, which costs ~0.3 s per quadrant more.
    """
    header = fit_comments(header.copy()) if header is not None else None
    if compress:
        # 16-row tiles: a quarter less CPU than fpack's row-by-row default for the same bytes
        tiles = (min(16, data.shape[0]), data.shape[1]) if data.ndim == 2 else None
        level = 16.0
        if noise is not None and np.isfinite(noise) and noise > 0:
            level = -float(noise) / 16.0  # negative: an absolute quantisation step
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, tile_shape=tiles,
                                                                  compression_type="RICE_1",
                                                                  quantize_level=level)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=header)])
    return write_hdulist(path, hdul)


def write_smooth_maps(path, maps: dict[str, np.ndarray], header: fits.Header | None = None, *,
                      step: float = 1e-3) -> Path:
    """Write smooth float maps (a background and its RMS) as RICE-compressed extensions named
    by the keys of ``maps``, quantised to an absolute ``step`` (map units) without dithering:
    the maps come back within ``step / 2`` of the values written, at ~1/5 of the raw size.
    (A relative quantisation cannot be used: a smooth map has no pixel noise to scale it by.)
    """
    header = fit_comments(header.copy()) if header is not None else None
    hdus = [fits.PrimaryHDU()]
    for name, data in maps.items():
        data = np.asarray(data, np.float32)
        hdus.append(fits.CompImageHDU(data, header=header, name=name, compression_type="RICE_1",
                                      tile_shape=(min(16, data.shape[0]), data.shape[1]),
                                      quantize_level=-abs(step), quantize_method=-1))
    return write_hdulist(path, fits.HDUList(hdus))


def write_table(path, table: Table, *, header: fits.Header | None = None,
                columns: list[tuple[str, str, str]] | None = None, extname: str = "CATALOG") -> Path:
    """Write a catalogue as a FITS binary table (HDU 1), pixel columns 1-based.

    Parameters
    ----------
    table : astropy.table.Table
        In-memory catalogue with 0-based pixel columns.
    header : astropy.io.fits.Header, optional
        Keywords for the primary HDU (e.g. the image's zero point and WCS).
    columns : list of (name, unit, description), optional
        Documentation of the columns, written as TUNITn and TCOMMn.
    """
    t = Table(table, copy=True)
    meta = {k: v for k, v in t.meta.items()}
    t.meta.clear()
    for col in t.itercols():
        col.unit = None
    for name in ONE_BASED:
        if name in t.colnames:
            t[name] = np.asarray(t[name], float) + 1.0
    doc = {name: (unit, desc) for name, unit, desc in (columns or [])}
    bintable = fits.table_to_hdu(t)
    bintable.name = extname
    for key, value in meta.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, float) and not np.isfinite(value):
            continue  # FITS headers cannot hold NaN: the keyword is left out
        if isinstance(value, (int, float, str, bool)):
            bintable.header[key[:8].upper()] = value
    for i, name in enumerate(t.colnames, start=1):
        if name in doc:
            unit, desc = doc[name]
            if unit:
                bintable.header[f"TUNIT{i}"] = unit
            note = desc + (" (1-based)" if name in ONE_BASED else "")
            bintable.header[f"TCOMM{i}"] = note[:68]
    header = fit_comments(header.copy()) if header is not None else None
    return write_hdulist(path, fits.HDUList([fits.PrimaryHDU(header=header), bintable]))


def read_table(path) -> Table:
    """Read a catalogue written by :func:`write_table` (pixel columns back to 0-based)."""
    import warnings

    from astropy.units import UnitsWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)  # DN is not a FITS standard unit
        t = Table.read(path, hdu=1)
    for col in t.itercols():
        col.unit = None
    for name in ONE_BASED:
        if name in t.colnames:
            t[name] = np.asarray(t[name], float) - 1.0
    return t


def write_text(path, text: str) -> Path:
    """Write a text product (log) atomically."""
    return _atomic(path, lambda p: Path(p).write_text(text))
