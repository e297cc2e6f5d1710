"""Access control of the archive API: the one visibility rule, principals and API tokens.

Policy (``docs/archive-api.md``): products of program 1 (public survey) are public; those of
programs 2 (partnership) and 3 (Caltech) are visible only to principals entitled to the
program until ``api.proprietary_days`` after the observation (OBSJD), then to everyone.
:func:`is_visible` is the only place that rule is written; every endpoint calls it (or
:func:`visible_sql`, its SQL translation) before returning pixels or photometry.

Tokens are random URL-safe strings handed to their holder once; the database keeps only their
sha256 hash (table ``api_tokens``), so a revoked token (``revoked_at`` set) is refused on the
next request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import Engine, and_, or_, select, update

from ..db import schema as s
from ..db.ops import utcnow

__all__ = ["Principal", "ANONYMOUS", "PUBLIC_PROGRAM", "is_visible", "visible_sql",
           "get_principal", "issue_token", "revoke_token", "list_tokens", "hash_token",
           "principal_for_token", "parse_programs"]

#: The program whose data are always public.
PUBLIC_PROGRAM = 1
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token holder's name (None if anonymous) and entitled programids."""

    name: str | None
    programs: frozenset[int]

    @property
    def authenticated(self) -> bool:
        return self.name is not None


ANONYMOUS = Principal(None, frozenset({PUBLIC_PROGRAM}))


def is_visible(principal: Principal, programid: int, obsjd: float, now_jd: float,
               proprietary_days: float) -> bool:
    """Whether ``principal`` may see the pixels/photometry of an observation.

    Parameters
    ----------
    principal : Principal
    programid : int
        1 public, 2 partnership, 3 Caltech (ZTF convention).
    obsjd : float
        Time of the observation, JD (UTC).
    now_jd : float
        Current time, JD (UTC).
    proprietary_days : float
        Length of the proprietary period, days.

    Returns
    -------
    bool
        True for program 1, for a program the principal is entitled to, and for any program
        once ``now_jd - obsjd >= proprietary_days``.
    """
    if int(programid) == PUBLIC_PROGRAM or int(programid) in principal.programs:
        return True
    return float(now_jd) - float(obsjd) >= float(proprietary_days)


def visible_sql(principal: Principal, programid_col, jd_col, now_jd: float,
                proprietary_days: float):
    """The SQL form of :func:`is_visible`, a WHERE clause on two columns.

    Parameters
    ----------
    principal : Principal
    programid_col, jd_col : sqlalchemy column
        Program and observation time (JD) of the row.
    now_jd, proprietary_days : float

    Returns
    -------
    sqlalchemy.sql.ColumnElement
        True exactly where :func:`is_visible` is (rows with a NULL program are hidden).
    """
    programs = sorted({PUBLIC_PROGRAM, *principal.programs})
    return or_(programid_col.in_(programs),
               and_(programid_col.isnot(None), jd_col <= float(now_jd) - float(proprietary_days)))


def hash_token(token: str) -> str:
    """sha256 hex digest of a token (what the database stores)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_programs(text: str) -> frozenset[int]:
    """Programids from ``"2,3"``; raises ``ValueError`` naming the bad item."""
    out = set()
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 3:
            raise ValueError(f"programs: {item!r} is not a program id 1, 2 or 3")
        out.add(int(item))
    return frozenset(out)


def issue_token(engine: Engine, name: str, programs) -> str:
    """Create a token for ``name`` entitled to ``programs`` and return it (shown once).

    Parameters
    ----------
    engine : sqlalchemy.Engine
    name : str
        Holder of the token (a person or a service).
    programs : iterable of int or str
        Entitled programids, e.g. ``[2, 3]`` or ``"2,3"``.

    Returns
    -------
    str
        The token; only its sha256 hash is stored.
    """
    if not str(name).strip():
        raise ValueError("token name must not be empty")
    progs = parse_programs(programs if isinstance(programs, str)
                           else ",".join(str(p) for p in programs))
    token = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(s.api_tokens.insert().values(
            name=str(name), token_hash=hash_token(token),
            programs=",".join(str(p) for p in sorted(progs)), created_at=utcnow()))
    return token


def revoke_token(engine: Engine, name_or_token: str) -> int:
    """Revoke the active tokens of a holder name, or one token given in clear.

    Returns
    -------
    int
        Number of tokens revoked (0 if none matched).
    """
    t = s.api_tokens
    match = or_(t.c.name == name_or_token, t.c.token_hash == hash_token(name_or_token))
    with engine.begin() as conn:
        res = conn.execute(update(t).where(match, t.c.revoked_at.is_(None))
                           .values(revoked_at=utcnow()))
    return int(res.rowcount or 0)


def list_tokens(engine: Engine) -> list[dict]:
    """All tokens (name, programs, created_at, revoked_at; never the hash)."""
    t = s.api_tokens
    stmt = select(t.c.id, t.c.name, t.c.programs, t.c.created_at, t.c.revoked_at).order_by(t.c.id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def principal_for_token(engine: Engine, token: str) -> Principal | None:
    """The principal of an active token, None if unknown or revoked."""
    t = s.api_tokens
    stmt = select(t.c.name, t.c.programs).where(t.c.token_hash == hash_token(token),
                                                 t.c.revoked_at.is_(None))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return Principal(row.name, frozenset({PUBLIC_PROGRAM}) | parse_programs(row.programs))


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message,
                         headers={"WWW-Authenticate": "Bearer"})


def get_principal(request: Request) -> Principal:
    """FastAPI dependency: the principal of the request's ``Authorization: Bearer`` token.

    No ``Authorization`` header gives :data:`ANONYMOUS`.

    Raises
    ------
    fastapi.HTTPException
        401 if the header is not ``Bearer <token>``, or the token is unknown or revoked.
    """
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        return ANONYMOUS
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Authorization header must be 'Bearer <token>'")
    if not _TOKEN_RE.match(token):
        raise _unauthorized("malformed API token")
    principal = principal_for_token(request.app.state.ctx.engine, token)
    if principal is None:
        raise _unauthorized("unknown or revoked API token")
    return principal
