"""The night's alert archive: one Avro object-container file per readout-quadrant image.

Layout: ``<root>/alerts/<YYYYMMDD>/programid<N>/<pid>.avro``, where ``pid`` is the processing
ID of the quadrant image (:func:`zsds.alerts.ids.make_pid`), so every alert of one subtraction
lands in one file. Each file is a standard Avro container (schema embedded, codec null) with
one record per block, readable by any Avro reader (``fastavro.reader``). ZTF publishes its
nightly archive as a tarball of one container per alert; zsds keeps one per quadrant because
writing a file per alert limited the production rate to ~600 alerts/s on one core.

Writing is idempotent: adding alerts whose ``candid`` is already in the file changes nothing,
new candids are appended (the file is rewritten atomically), so a re-run never duplicates.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastavro

from ..errors import ZsdsError
from ..io.paths import ArchiveLayout
from .packet import _container_prefix

__all__ = ["archive_file", "write_alerts", "read_block", "standalone_alert", "archived_candids",
           "iter_archive", "read_alert", "AlertArchiveError"]

_MARKER_LEN = 16


class AlertArchiveError(ZsdsError):
    """An alert archive file is not an Avro container of alerts."""


def archive_file(root: str | Path, night: str, programid: int, pid: int) -> Path:
    """Archive file of a quadrant image's alerts: ``alerts/<night>/programid<N>/<pid>.avro``."""
    return ArchiveLayout(Path(root)).alerts_dir(night) / f"programid{int(programid)}" / f"{pid}.avro"


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _block_spans(data: bytes, prefix_len: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the raw blocks (count, size, payload; without the sync
    markers) after the header."""
    pos = prefix_len + _MARKER_LEN
    out = []
    while pos < len(data):
        start = pos
        _, pos = _read_varint(data, pos)
        size, pos = _read_varint(data, pos)
        pos += size
        out.append((start, pos - start))
        pos += _MARKER_LEN
    return out


def standalone_alert(block: bytes, candid: int) -> bytes:
    """A single-record Avro container (as :func:`serialize_alert` makes, and as sent to
    Kafka) from one raw block of an archive file."""
    marker = hashlib.md5(str(candid).encode()).digest()
    return b"".join((_container_prefix(), marker, block, marker))


def _single_block(container: bytes, prefix: bytes) -> bytes:
    """The one block of a single-alert container from :func:`serialize_alert`."""
    if not container.startswith(prefix):
        raise AlertArchiveError("alert bytes were not written by zsds.alerts.packet.serialize_alert")
    return container[len(prefix) + _MARKER_LEN:-_MARKER_LEN]


def _candids_of(path: Path) -> list[int]:
    try:
        with open(path, "rb") as fh:
            return [int(r["candid"]) for r in fastavro.reader(fh)]
    except Exception as exc:  # fastavro raises several types for corrupt input
        raise AlertArchiveError(f"{path}: not a readable Avro alert container ({exc})") from None


def write_alerts(path: str | Path, alerts: Iterable[tuple[int, bytes]],
                 added: list | None = None) -> dict[int, tuple[int, int]]:
    """Add serialized alerts ``(candid, container bytes)`` to a quadrant's archive file.

    Candids already in the file are kept as they are; the file is replaced atomically and
    flushed to disk (``fsync``) before this returns. ``added``, if given, receives the
    candids written by this call (not those already archived).

    Returns
    -------
    dict
        ``candid -> (offset, length)`` of the alert's block in the file, for every alert
        given (new or already archived); :func:`read_block` reads it back.
    """
    path = Path(path)
    prefix = _container_prefix()
    data, spans = b"", []
    if path.exists():
        data = path.read_bytes()
        if not data.startswith(prefix):
            raise AlertArchiveError(f"{path}: not an alert container written by zsds")
        spans = _block_spans(data, len(prefix))
    candids = _candids_of(path) if spans else []
    where = dict(zip(candids, spans))
    marker = hashlib.md5(path.stem.encode()).digest()
    pos = len(data) if spans else len(prefix) + _MARKER_LEN
    new_blocks = []
    for candid, container in alerts:
        if int(candid) in where:
            continue
        block = _single_block(container, prefix)
        where[int(candid)] = (pos, len(block))
        if added is not None:
            added.append(int(candid))
        pos += len(block) + _MARKER_LEN
        new_blocks.append(block)
    if new_blocks:
        head = data if spans else prefix + marker
        if spans and data[len(prefix):len(prefix) + _MARKER_LEN] != marker:
            raise AlertArchiveError(f"{path}: sync marker does not match the file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(head)
            for b in new_blocks:
                fh.write(b)
                fh.write(marker)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return where


def read_block(path: str | Path, offset: int, length: int) -> bytes:
    """Raw bytes of one block of an archive file (see :func:`write_alerts`)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(length)
    if len(block) != length:
        raise AlertArchiveError(f"{path}: truncated (block at {offset} of {length} bytes)")
    return block


def archived_candids(path: str | Path) -> list[int]:
    """Candids in one archive file, in file order."""
    return _candids_of(Path(path))


def iter_archive(root: str | Path, night: str | None = None,
                 programid: int | None = None) -> Iterator[dict[str, Any]]:
    """Alert records of the archive (one night or all), file by file in name order."""
    base = Path(root) / "alerts"
    nights = [night] if night else sorted(p.name for p in base.glob("[0-9]" * 8))
    for n in nights:
        progs = f"programid{programid}" if programid is not None else "programid*"
        for f in sorted((base / n).glob(f"{progs}/*.avro")):
            try:
                with open(f, "rb") as fh:
                    yield from fastavro.reader(fh)
            except AlertArchiveError:
                raise
            except Exception as exc:
                raise AlertArchiveError(f"{f}: not a readable Avro alert container ({exc})") from None


def read_alert(path: str | Path, candid: int) -> bytes:
    """One alert of an archive file as a standalone single-record Avro container.

    Raises
    ------
    KeyError
        If the candid is not in the file.
    """
    path = Path(path)
    data = path.read_bytes()
    candids = _candids_of(path)
    if int(candid) not in candids:
        raise KeyError(f"candid {candid} not in {path}")
    offset, length = _block_spans(data, len(_container_prefix()))[candids.index(int(candid))]
    return standalone_alert(data[offset:offset + length], candid)
