"""Zarr storage of the reference co-adds.

Layout: one store per field, beside the field's FITS reference folder::

    ref/<fff>/field<field6>.zarr/<filtercode>/ccdCC/qQ/v<version>/{image,uncertainty,coverage,mask,psf}

One store per field because a field is the unit of survey planning and of reference updates
(a field's quadrants share their epochs), it keeps the number of stores small (~700 ZTF
fields) while each store stays a few GB, and a cutout needs one store only. The quadrant group
``<fc>/ccdCC/qQ`` carries the attribute ``current_version``; each version group is a complete
xarray Dataset (dims ``y``, ``x``, 0-based pixel coordinates, chunks 256 x 256 for cutouts)
whose attributes hold the WCS header (``wcs_header``, a FITS header string, and ``wcs``, a
dict), the zero point, the version and the contributing images (``inputs``, JSON).
Zarr format 2 with consolidated metadata: ``xarray.open_zarr(store, group=...)`` opens a
version in one metadata read and without warnings.

A version group is written completely before ``current_version`` points at it, so readers
never see a half-written reference. The store's consolidated metadata (one ``.zmetadata`` at
the root, which ``xarray.open_zarr`` reads) is rebuilt after every write while holding an
exclusive lock on ``<store>.lock``: reference tasks of one field running in parallel (one Dask
task per quadrant) would otherwise each rewrite it from their own listing and drop the
others' groups. (``fcntl`` locks: local and POSIX-compliant shared file systems.)
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from astropy.io import fits
from astropy.wcs import WCS

from .paths import ArchiveLayout

__all__ = ["store_path", "group_path", "reference_dataset", "write_reference", "open_reference",
           "current_version", "wcs_from_attrs", "CHUNK"]

#: Chunk edge of the image arrays, pixels.
CHUNK = 256
_ZARR_FORMAT = 2


def store_path(layout: ArchiveLayout, field_id: int) -> Path:
    """``<root>/ref/<fff>/field<field6>.zarr``, the store of one field."""
    field_dir = layout.ref_dir(field_id, "zr", 1, 1).parents[2]
    return field_dir.with_name(field_dir.name + ".zarr")


def group_path(filter_code: str, ccd_id: int, qid: int, version: int | None = None) -> str:
    """``<fc>/ccdCC/qQ`` or, with a version, ``<fc>/ccdCC/qQ/v<version>``."""
    base = f"{filter_code}/ccd{ccd_id:02d}/q{qid}"
    return base if version is None else f"{base}/v{version}"


def reference_dataset(image, uncertainty, coverage, mask, psf_stamp, header: fits.Header,
                      attrs: dict) -> xr.Dataset:
    """The xarray Dataset of one reference version.

    Parameters
    ----------
    image, uncertainty : 2-D float32 arrays
        Co-add and its 1-sigma uncertainty, DN at the zero point ``attrs['magzp']``.
    coverage, mask : 2-D uint16 arrays
        Inputs per pixel; co-add mask bits (``zsds.core.coadd.COADD_MASK``).
    psf_stamp : 2-D array
        PSF at the centre (sum 1).
    header : astropy.io.fits.Header
        Header with the WCS (stored as ``wcs_header`` and ``wcs``).
    attrs : dict
        JSON-serialisable attributes (version, magzp, inputs, ...).
    """
    ny, nx = image.shape
    wcs_cards = WCS(header).to_header(relax=True)
    ds = xr.Dataset(
        {"image": (("y", "x"), np.asarray(image, np.float32), {"units": "DN"}),
         "uncertainty": (("y", "x"), np.asarray(uncertainty, np.float32), {"units": "DN"}),
         "coverage": (("y", "x"), np.asarray(coverage, np.uint16), {"units": "frames"}),
         "mask": (("y", "x"), np.asarray(mask, np.uint16)),
         "psf": (("psf_y", "psf_x"), np.asarray(psf_stamp, np.float32))},
        coords={"y": np.arange(ny, dtype=np.int32), "x": np.arange(nx, dtype=np.int32)})
    ds.attrs.update({k: (json.dumps(v) if isinstance(v, (list, dict)) and k == "inputs" else v)
                     for k, v in attrs.items()})
    ds.attrs["wcs_header"] = wcs_cards.tostring(sep="\n")
    ds.attrs["wcs"] = {k: wcs_cards[k] for k in wcs_cards}
    return ds


def write_reference(store: Path, filter_code: str, ccd_id: int, qid: int, version: int,
                    ds: xr.Dataset) -> str:
    """Write one version group, then point ``current_version`` at it; returns the group path."""
    group = group_path(filter_code, ccd_id, qid, version)
    enc = {name: {"chunks": (min(CHUNK, ds.sizes["y"]), min(CHUNK, ds.sizes["x"]))}
           for name in ("image", "uncertainty", "coverage", "mask")}
    ds.to_zarr(store, group=group, mode="w", encoding=enc, consolidated=False,
               zarr_format=_ZARR_FORMAT)
    with _store_lock(store):
        quad = zarr.open_group(str(store), mode="a", path=group_path(filter_code, ccd_id, qid),
                               zarr_format=_ZARR_FORMAT, use_consolidated=False)
        quad.attrs["current_version"] = int(version)
        zarr.consolidate_metadata(str(store), zarr_format=_ZARR_FORMAT)
    return group


@contextmanager
def _store_lock(store: Path):
    """Exclusive lock of a store (``<store>.lock``) around its shared metadata."""
    lock = Path(store).with_name(Path(store).name + ".lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_version(store: Path, filter_code: str, ccd_id: int, qid: int) -> int | None:
    """The version ``current_version`` points at, or None."""
    try:
        quad = zarr.open_group(str(store), mode="r", path=group_path(filter_code, ccd_id, qid),
                               zarr_format=_ZARR_FORMAT)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    v = quad.attrs.get("current_version")
    return None if v is None else int(v)


def open_reference(store: Path, filter_code: str, ccd_id: int, qid: int,
                   version: int | None = None) -> xr.Dataset:
    """Open a reference version (default: the current one) as a lazy xarray Dataset."""
    if version is None:
        version = current_version(store, filter_code, ccd_id, qid)
        if version is None:
            raise FileNotFoundError(f"no reference {group_path(filter_code, ccd_id, qid)} in {store}")
    return xr.open_zarr(store, group=group_path(filter_code, ccd_id, qid, version))


def wcs_from_attrs(attrs: dict) -> WCS:
    """The WCS of a reference Dataset (``ds.attrs``)."""
    return WCS(fits.Header.fromstring(attrs["wcs_header"], sep="\n"))
