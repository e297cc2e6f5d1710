"""Archive products by their path in the public ZTF layout, with the access check.

:func:`resolve_product` maps a path relative to the archive root (as in IRSA's
``ibe/data/ztf/products/<path>``) to the file and the observation(s) it comes from, then
applies the visibility rule:

* ``sci/YYYY/MMDD/ffffff/ztf_<filefracday>_<field6>_<fc>_c<CC>_o_q<Q>_<suffix>``: visible when
  its science image (program, OBSJD) is;
* ``ref/<fff>/field<field6>/<fc>/ccdCC/qQ/ztf_<field6>_<fc>_c<CC>_q<Q>_<suffix>``: when every
  input image of the quadrant's references is;
* ``raw/YYYY/MMDD/ffffff/ztf_<filefracday>_<field6>_<fc>_c<CC>_<T>.fits.fz``: when its exposure
  (program, OBSJD) is;
* ``cal/YYYY/MMDD/<caltype>/<fc>/ccdCC/qQ/<name>``: always (no sky data of a program).

Anything else, or a product not registered in the database, is a 404.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from ..db import schema as s
from .access import Principal
from .common import Visibility, bad_request, forbidden, not_found
from .context import ApiContext

__all__ = ["Product", "resolve_product", "SCI_RE", "sci_row"]

SCI_RE = re.compile(r"^sci/(\d{4})/(\d{4})/(\d{6})/ztf_(?P<ffd>\d{14})_(?P<field>\d{6})_"
                    r"(?P<fc>zg|zr|zi)_c(?P<ccd>\d{2})_o_q(?P<qid>[1-4])_"
                    r"(?P<suffix>[A-Za-z0-9_.]+)$")
REF_RE = re.compile(r"^ref/(\d{3})/field(\d{6})/(zg|zr|zi)/ccd(\d{2})/q([1-4])/"
                    r"ztf_(?P<field>\d{6})_(?P<fc>zg|zr|zi)_c(?P<ccd>\d{2})_q(?P<qid>[1-4])_"
                    r"(?P<suffix>[A-Za-z0-9_.]+)$")
RAW_RE = re.compile(r"^raw/(\d{4})/(\d{4})/(\d{6})/(?P<name>ztf_\d{14}_\d{6}_[A-Za-z]{2}_c\d{2}_"
                    r"[obfd]\.fits\.fz)$")
CAL_RE = re.compile(r"^cal/\d{4}/\d{4}/[a-z]+/[A-Za-z]{2}/ccd\d{2}/q[1-4]/[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class Product:
    """A resolved, visible archive product.

    Attributes
    ----------
    rel : str
        Path relative to the archive root.
    path : Path
        Absolute path of the file.
    area : str
        ``sci``, ``ref``, ``raw`` or ``cal``.
    image : dict or None
        The ``science_images`` row of a ``sci`` product.
    """

    rel: str
    path: Path
    area: str
    image: dict | None = None


def sci_row(conn, filefracday: str, field_id: int, filter_code: str, ccd_id: int, qid: int):
    """The science_images row of a science product's name parts, or None."""
    c = s.science_images.c
    stmt = select(s.science_images).where(c.filefracday == filefracday, c.field_id == field_id,
                                          c.filter_code == filter_code, c.ccd_id == ccd_id,
                                          c.qid == qid)
    row = conn.execute(stmt).first()
    return dict(row._mapping) if row is not None else None


def _deny(ctx: ApiContext, vis: Visibility, what: str):
    """404 when proprietary metadata are hidden (existence not revealed), else 401/403."""
    if not ctx.config.api.metadata_public:
        return not_found(f"no such product: {what}")
    return forbidden(vis.principal, what)


def _sci(ctx, vis, rel, m) -> Product:
    with ctx.engine.connect() as conn:
        row = sci_row(conn, m["ffd"], int(m["field"]), m["fc"], int(m["ccd"]), int(m["qid"]))
    if row is None:
        raise not_found(f"no science image is registered for {rel}")
    if not vis(row["programid"], row["obsjd"]):
        raise _deny(ctx, vis, rel)
    return Product(rel, ctx.layout.root / rel, "sci", row)


def _ref(ctx, vis, rel, m) -> Product:
    r = s.reference_images.c
    with ctx.engine.connect() as conn:
        refs = conn.execute(select(r.inputs).where(
            r.field_id == int(m["field"]), r.filter_code == m["fc"], r.ccd_id == int(m["ccd"]),
            r.qid == int(m["qid"]))).all()
        if not refs:
            raise not_found(f"no reference image is registered for {rel}")
        pids = {int(p) for ref in refs for p in json.loads(ref.inputs or "[]")}
        c = s.science_images.c
        stmt = select(c.pid, c.programid, c.obsjd).where(c.pid.in_(sorted(pids)))
        rows = conn.execute(stmt).all()
    known = {row.pid for row in rows}
    if pids - known or not all(vis(row.programid, row.obsjd) for row in rows):
        raise _deny(ctx, vis, rel)
    return Product(rel, ctx.layout.root / rel, "ref")


def _raw(ctx, vis, rel, m) -> Product:
    f, e = s.raw_files.c, s.exposures.c
    with ctx.engine.connect() as conn:
        row = conn.execute(select(f.path, e.programid, e.obsjd)
                           .join(s.exposures, s.exposures.c.expid == f.expid)
                           .where(f.filename == m["name"])).first()
    if row is None or row.path != rel:
        raise not_found(f"no raw file is registered for {rel}")
    if not vis(row.programid, row.obsjd):
        raise _deny(ctx, vis, rel)
    return Product(rel, ctx.layout.root / rel, "raw")


def resolve_product(ctx: ApiContext, principal: Principal, rel: str) -> Product:
    """The product at archive path ``rel`` if ``principal`` may read it.

    Parameters
    ----------
    ctx : ApiContext
    principal : Principal
    rel : str
        Path relative to the archive root in the public ZTF layout.

    Returns
    -------
    Product
        Its file exists.

    Raises
    ------
    fastapi.HTTPException
        400 for a path outside the layout, 404 for an unknown product or a missing file,
        401/403 (or 404 when ``api.metadata_public`` is false) for a proprietary one.
    """
    rel = str(rel).strip().lstrip("/")
    if ".." in rel.split("/") or "\\" in rel:
        raise bad_request(f"invalid archive path {rel!r}")
    vis = Visibility(ctx, principal)
    if m := SCI_RE.match(rel):
        product = _sci(ctx, vis, rel, m)
    elif m := REF_RE.match(rel):
        product = _ref(ctx, vis, rel, m)
    elif m := RAW_RE.match(rel):
        product = _raw(ctx, vis, rel, m)
    elif CAL_RE.match(rel):
        product = Product(rel, ctx.layout.root / rel, "cal")
    else:
        raise bad_request(f"{rel!r} is not a product path of the public ZTF layout "
                          "(sci/, ref/, raw/ or cal/; see docs/archive-api.md)")
    if not product.path.is_file():
        raise not_found(f"no file {rel} in the archive")
    return product
