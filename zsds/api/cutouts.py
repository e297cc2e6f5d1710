"""Cutouts made on request from any image product (FITS with a WCS, or PNG).

``GET /cutouts?path=<archive path>&ra=&dec=&size_arcsec=&format=fits|png``. The product is
resolved and access-checked like a download (:func:`zsds.api.products.resolve_product`).
Products without a celestial WCS of their own (masks, PSF-less companions) use the WCS of
the science or reference image of the same quadrant.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.wcs import FITSFixedWarning, NoConvergence, WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from .access import Principal, get_principal
from .common import bad_request, get_ctx
from .context import ApiContext
from .products import resolve_product

__all__ = ["router", "make_cutout", "read_image"]

router = APIRouter(tags=["cutouts"])

#: Largest cutout side, arcsec.
MAX_SIZE_ARCSEC = 1800.0


def _image_hdu(hdul: fits.HDUList):
    for hdu in hdul:
        if hdu.is_image and hdu.data is not None and np.ndim(hdu.data) == 2:
            return hdu
    return None


def _celestial(header) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, relax=True).celestial
        except Exception:  # astropy raises several types on broken WCS headers
            return None
    return wcs if wcs.has_celestial and wcs.naxis == 2 else None


def _sibling_wcs(path: Path, shape) -> WCS | None:
    """WCS of the science image (``..._sciimg.fits``) or reference (``..._refimg.fits``) of the
    same quadrant, if its image has the same ``shape``."""
    for pattern, repl in ((r"_o_q(\d)_.+$", r"_o_q\1_sciimg.fits"),
                          (r"_q(\d)_.+$", r"_q\1_refimg.fits")):
        name = re.sub(pattern, repl, path.name)
        sibling = path.with_name(name)
        if name != path.name and sibling.is_file():
            with fits.open(sibling, memmap=False) as hdul:
                hdu = _image_hdu(hdul)
                ok = hdu is not None and tuple(hdu.data.shape) == tuple(shape)
                return _celestial(hdu.header) if ok else None
    return None


def read_image(path: Path) -> tuple[np.ndarray, fits.Header, WCS]:
    """The 2-D image of a FITS product, its header and celestial WCS.

    Raises
    ------
    fastapi.HTTPException
        400 if the product holds no 2-D image or no WCS can be found for it.
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = _image_hdu(hdul)
            if hdu is None:
                raise bad_request(f"{path.name} holds no 2-D image")
            data, header = np.asarray(hdu.data), hdu.header.copy()
    except OSError as exc:
        raise bad_request(f"{path.name} is not a FITS image ({exc})") from None
    wcs = _celestial(header) or _sibling_wcs(path, data.shape)
    if wcs is None:
        raise bad_request(f"{path.name} has no celestial WCS")
    return data, header, wcs


def make_cutout(data: np.ndarray, wcs: WCS, ra: float, dec: float, size_arcsec: float) -> Cutout2D:
    """A square cutout centred on (ra, dec), padded off the image (NaN, or 0 for integers).

    Raises
    ------
    fastapi.HTTPException
        400 if the position is not on the image.
    """
    fill = np.nan if np.issubdtype(data.dtype, np.floating) else 0
    scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs)))) * 3600.0
    npix = max(int(round(size_arcsec / scale)), 1)
    off = bad_request(f"position ({ra}, {dec}) is not on the image")
    with np.errstate(invalid="ignore"):
        x, y = wcs.wcs_world2pix(ra, dec, 0)  # linear part first: SIP diverges far off the image
    ny, nx = data.shape
    if not (np.isfinite(x) and np.isfinite(y) and -npix < x < nx + npix and -npix < y < ny + npix):
        raise off
    try:
        return Cutout2D(data, SkyCoord(ra, dec, unit="deg"), (npix, npix), wcs=wcs, mode="partial",
                        fill_value=fill)
    except (NoOverlapError, NoConvergence, ValueError):
        raise off from None


def _png(data: np.ndarray) -> bytes:
    from astropy.visualization import ZScaleInterval
    from matplotlib.image import imsave

    img = np.asarray(data, float)
    finite = np.isfinite(img)
    vmin, vmax = ZScaleInterval().get_limits(img[finite]) if finite.any() else (0.0, 1.0)
    buf = io.BytesIO()
    imsave(buf, np.where(finite, img, vmin), vmin=vmin, vmax=vmax, cmap="gray", origin="lower",
           format="png")
    return buf.getvalue()


def _fits(cut: Cutout2D, header: fits.Header, rel: str) -> bytes:
    keep = fits.Header()
    for key in ("OBSJD", "FILTER", "FIELDID", "CCD_ID", "QID", "PROGRMID", "MAGZP", "BUNIT",
                "EXPTIME"):
        if key in header:
            keep[key] = header[key]
    keep.update(cut.wcs.to_header(relax=True))
    keep["ORIGFILE"] = Path(rel).name[:68]  # the product the cutout was made from
    buf = io.BytesIO()
    fits.PrimaryHDU(cut.data, header=keep).writeto(buf)
    return buf.getvalue()


@router.get("/cutouts", summary="Cutout of an image product",
            responses={200: {"content": {"application/fits": {}, "image/png": {}}}})
def cutout_endpoint(
    path: str = Query(..., min_length=1, description="Archive path of an image product "
                      "(sciimg, mskimg, scimrefdiffimg.fits.fz, refimg ...)"),
    ra: float = Query(..., ge=0, lt=360, allow_inf_nan=False, description="Centre, deg"),
    dec: float = Query(..., ge=-90, le=90, allow_inf_nan=False, description="Centre, deg"),
    size_arcsec: float = Query(60.0, gt=0, le=MAX_SIZE_ARCSEC, allow_inf_nan=False,
                               description="Side of the square cutout, arcsec"),
    format: Literal["fits", "png"] = Query("fits"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """A square cutout of an image product centred on (ra, dec): FITS (with WCS) or PNG (zscale)."""
    product = resolve_product(ctx, principal, path)
    data, header, wcs = read_image(product.path)
    cut = make_cutout(data, wcs, ra, dec, size_arcsec)
    if format == "png":
        return Response(_png(cut.data), media_type="image/png")
    return Response(_fits(cut, header, product.rel), media_type="application/fits",
                    headers={"Content-Disposition": 'inline; filename="cutout.fits"'})
