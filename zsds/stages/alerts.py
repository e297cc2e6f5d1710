"""Alert packets of a quadrant's candidates (ZTF deliverable 6), built on the worker.

Public entry point: :func:`build_alerts`. For every candidate the subtraction stage kept, it
reads the 30-day history at the position from the database (previous detections within
1.5 arcsec and upper limits of the images that covered it), takes the three cutouts, builds
the packet in the official schema and serialises it (one Avro container per alert, schema
embedded). With a known-asteroid orbit file (``moving.orbits_path``), candidates within 5 arcsec
of a known object's ephemeris get ``ssdistnr``, ``ssmagnr``, ``ssnamenr``
(:mod:`zsds.alerts.ssobjects`). Publishing (archive, spool, Kafka) happens once, in the process that runs the
night (:class:`zsds.alerts.kafka.AlertDistributor`), so one producer and one spool writer
serve the whole night.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..alerts.history import history_for
from ..alerts.packet import make_alert, serialize_alert

__all__ = ["SerializedAlert", "build_alerts"]


@dataclass(frozen=True)
class SerializedAlert:
    """One alert ready to publish."""

    candid: int
    object_id: str
    jd: float
    programid: int
    data: bytes
    pid: int


def build_alerts(engine, records: list[dict], cutouts_path, *,
                 orbits_path=None) -> list[SerializedAlert]:
    """Serialised alert packets of candidate records from :func:`zsds.stages.subtract.subtract_job`.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        Operations database (history and upper limits).
    records : list of dict
        Candidate records (ZTF field names, ``candid``, ``objectId``, ``index``).
    cutouts_path : path-like
        The quadrant's ``diffimcutouts.fits``.
    orbits_path : path-like, optional
        Known-asteroid orbit file: fills the ``ss*`` fields of the records (in place).
    """
    from .subtract import read_cutouts

    if not records:
        return []
    if orbits_path is not None:
        from ..alerts.ssobjects import tag_records

        if tag_records(records, orbits_path):
            _store_ss_fields(engine, records)
    cutouts = read_cutouts(cutouts_path)
    out = []
    with engine.connect() as conn:
        for rec in records:
            prv = history_for(conn, rec["ra"], rec["dec"], rec["jd"])
            packet = make_alert(rec, cutouts[rec["index"]], prv_candidates=prv, fp_hists=[],
                                object_id=rec["objectId"])
            out.append(SerializedAlert(int(packet["candid"]), packet["objectId"], float(rec["jd"]),
                                       int(rec["programid"]), serialize_alert(packet),
                                       int(packet["candidate"]["pid"])))
    return out


def _store_ss_fields(engine, records: list[dict]) -> None:
    """Add the ``ss*`` fields of tagged records to their ``candidates.payload`` (so later
    alerts show them in ``prv_candidates``)."""
    import json

    from sqlalchemy import select, update

    from ..alerts.ssobjects import SS_FIELDS
    from ..db import schema as s

    c = s.candidates.c
    tagged = {int(r["candid"]): r for r in records if r.get("ssnamenr") is not None}
    with engine.begin() as conn:
        rows = conn.execute(select(c.candid, c.payload).where(c.candid.in_(list(tagged))))
        for candid, payload in rows.fetchall():
            data = json.loads(payload) if payload else {}
            data.update({k: tagged[candid][k] for k in SS_FIELDS})
            conn.execute(update(s.candidates).where(c.candid == candid)
                         .values(payload=json.dumps(data, sort_keys=True)))
