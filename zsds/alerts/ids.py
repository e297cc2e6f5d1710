"""Deterministic identifiers of alert products: night ID, ``pid`` and ``candid``.

ZTF-style, documented here (ZTF's own encoding is undocumented; zsds keeps its spirit):

=============  ===================================================================  ==========
identifier     definition                                                           example
=============  ===================================================================  ==========
``nid``        UT days since 2017-01-01 of the night (ZTF: nid 739 = 2019-01-10)    3611
``pid``        ``nid * 10**8 + fracday6 * 10**2 + rcid``: one per quadrant image;   361134275038
               ``fracday6`` = the 6-digit fraction of day of the exposure start
               (``filefracday[8:]``, 0.0864 s resolution), ``rcid`` in 0..63
``candid``     ``pid * 10**6 + index``: ``index`` = 0-based position of the         361134275038000012
               candidate in the subtraction's (deterministic) candidate list
=============  ===================================================================  ==========

Re-processing a quadrant with the same inputs therefore gives the same ``pid`` and candids;
all fit a signed 64-bit ``long`` until year ~2270.
"""

from __future__ import annotations

from datetime import date

__all__ = ["NID_EPOCH", "night_id", "make_pid", "make_candid", "split_candid"]

#: First night (nid 0) of the night-ID count.
NID_EPOCH = date(2017, 1, 1)
_MAX_INDEX = 10**6


def night_id(night: str) -> int:
    """The night ID of a UT night ``YYYYMMDD`` (days since :data:`NID_EPOCH`)."""
    if len(night) != 8 or not night.isdigit():
        raise ValueError(f"night must be YYYYMMDD, not {night!r}")
    nid = (date(int(night[:4]), int(night[4:6]), int(night[6:])) - NID_EPOCH).days
    if nid < 0:
        raise ValueError(f"night {night} is before the night-ID epoch {NID_EPOCH}")
    return nid


def make_pid(filefracday: str, rcid: int) -> int:
    """The processing ID of a quadrant image.

    Parameters
    ----------
    filefracday : str
        ``YYYYMMDDdddddd`` of the exposure (UT date + 6-digit fraction of day).
    rcid : int
        Readout-channel ID, 0..63.
    """
    if len(filefracday) != 14 or not filefracday.isdigit():
        raise ValueError(f"filefracday must be YYYYMMDDdddddd, not {filefracday!r}")
    if not 0 <= int(rcid) <= 63:
        raise ValueError(f"rcid must be in 0..63, not {rcid}")
    return night_id(filefracday[:8]) * 10**8 + int(filefracday[8:]) * 100 + int(rcid)


def make_candid(pid: int, index: int) -> int:
    """The candidate ID: ``pid * 10**6 + index`` (``0 <= index < 10**6``)."""
    if not 0 <= int(index) < _MAX_INDEX:
        raise ValueError(f"candidate index must be in 0..{_MAX_INDEX - 1}, not {index}")
    if int(pid) <= 0:
        raise ValueError(f"pid must be positive, not {pid}")
    return int(pid) * _MAX_INDEX + int(index)


def split_candid(candid: int) -> tuple[int, int]:
    """Inverse of :func:`make_candid`: ``(pid, index)``."""
    return divmod(int(candid), _MAX_INDEX)
