"""The official ZTF alert Avro schema (packaged verbatim) and validation against it.

The schema files of the newest version (4.02) are shipped unmodified under
``zsds/alerts/schema/<version>/`` (copied from ``shared/ztf-alert-schema``). The leaf files
(``cutout``, ``candidate``, ``prv_candidate``, ``fp_hist``) are parsed first into ONE fastavro
named-type registry, then ``alert.avsc``, which refers to them by full name.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

from ..errors import ZsdsError

__all__ = ["SCHEMA_VERSION", "LEAF_SCHEMAS", "AlertSchemaError", "available_versions",
           "load_schema_json", "parse_alert_schema", "writer_schema", "record_fields", "validate_alert"]

#: The alert schema version zsds writes (the newest packaged one).
SCHEMA_VERSION = "4.02"
#: Leaf schema files, in parse order (``fp_hist`` exists from 4.0 on).
LEAF_SCHEMAS = ("cutout", "candidate", "prv_candidate", "fp_hist")


class AlertSchemaError(ZsdsError):
    """An alert packet does not conform to the alert schema (the message names the field)."""


def _schema_root():
    return resources.files("zsds.alerts") / "schema"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def available_versions() -> list[str]:
    """Packaged schema versions, oldest first."""
    names = [p.name for p in _schema_root().iterdir() if p.is_dir() and p.name[0].isdigit()]
    return sorted(names, key=_version_key)


def load_schema_json(name: str, version: str = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON of one packaged schema file (``alert``, ``candidate``, ...), unparsed.

    Raises
    ------
    AlertSchemaError
        If the version or file is not packaged.
    """
    path = _schema_root() / version / f"{name}.avsc"
    if not path.is_file():
        raise AlertSchemaError(f"alert schema file {version}/{name}.avsc is not packaged "
                               f"(versions: {', '.join(available_versions())})")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def parse_alert_schema(version: str | None = None) -> dict[str, Any]:
    """The parsed ``ztf.alert`` schema, leaf types registered first in one registry.

    Parameters
    ----------
    version : str, optional
        Schema version folder; default the newest packaged (:data:`SCHEMA_VERSION`).

    Returns
    -------
    dict
        A fastavro parsed schema (cached; do not modify).
    """
    version = version or available_versions()[-1]
    named: dict[str, Any] = {}
    for leaf in LEAF_SCHEMAS:
        if (_schema_root() / version / f"{leaf}.avsc").is_file():
            fastavro.parse_schema(load_schema_json(leaf, version), named_schemas=named)
    return fastavro.parse_schema(load_schema_json("alert", version), named_schemas=named)


def _inline(node: Any, leaves: dict[str, dict], done: set[str]) -> Any:
    """Replace the first reference to each leaf type by its definition (JSON)."""
    if isinstance(node, str) and node in leaves and node not in done:
        done.add(node)
        return _inline(leaves[node], leaves, done)
    if isinstance(node, list):
        return [_inline(n, leaves, done) for n in node]
    if isinstance(node, dict):
        return {k: (_inline(v, leaves, done) if k in ("type", "items", "fields") else v)
                for k, v in node.items()}
    return node


def _strip_docs(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_docs(n) for n in node]
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k != "doc"}
    return node


@lru_cache(maxsize=None)
def writer_schema(version: str | None = None) -> dict[str, Any]:
    """The alert schema as ONE self-contained parsed schema (leaf records defined inline).

    This is what gets embedded in each Avro container (so any reader can decode it alone);
    the definitions are exactly the official ones, nested at their first use, without the
    ``doc`` strings (which Avro's parsing canonical form ignores; saves ~20 kB per alert).
    """
    version = version or available_versions()[-1]
    leaves = {}
    for leaf in LEAF_SCHEMAS:
        if (_schema_root() / version / f"{leaf}.avsc").is_file():
            js = load_schema_json(leaf, version)
            leaves[f"{js['namespace']}.{js['name']}"] = js
    inlined = _strip_docs(_inline(load_schema_json("alert", version), leaves, set()))
    return fastavro.parse_schema(inlined)


@lru_cache(maxsize=None)
def record_fields(record: str, version: str = SCHEMA_VERSION) -> tuple[tuple[str, Any], ...]:
    """``(name, avro type)`` of the fields of one leaf record (``candidate``, ``fp_hist``...)."""
    return tuple((f["name"], f["type"]) for f in load_schema_json(record, version)["fields"])


def validate_alert(packet: dict[str, Any], version: str | None = None) -> None:
    """Validate a packet against the alert schema (strict: unknown keys are errors too).

    Raises
    ------
    AlertSchemaError
        Naming the offending field(s), e.g. ``ztf.alert.candidate.magpsf``.
    """
    version = version or available_versions()[-1]
    try:
        validate(packet, parse_alert_schema(version), raise_errors=True, strict=True)
    except ValidationError as exc:
        problems = _locate(packet, "alert", version, "alert") or [str(e) for e in exc.errors]
        candid = packet.get("candid") if isinstance(packet, dict) else None
        raise AlertSchemaError(f"alert candid={candid} does not match the ZTF alert schema "
                               f"{version}: " + "; ".join(problems[:5])) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "...") if len(text) > 43 else text


def _locate(value: Any, record: str, version: str, path: str) -> list[str]:
    """Human-readable problems of ``value`` as a ``record``, each naming the field path."""
    if not isinstance(value, dict):
        return [f"{path}: expected a record (dict), got {type(value).__name__}"]
    fields = record_fields(record, version)
    known = {name for name, _ in fields}
    problems = [f"{path}.{k}: not a field of the schema" for k in value if k not in known]
    for name, ftype in fields:
        problems += _check_field(value.get(name), ftype, version, f"{path}.{name}")
    return problems


def _check_field(value: Any, ftype: Any, version: str, path: str) -> list[str]:
    branches = ftype if isinstance(ftype, list) else [ftype]
    if value is None:
        return [] if "null" in branches else [f"{path}: missing or null, type is {ftype}"]
    for branch in branches:
        if isinstance(branch, str) and branch.startswith("ztf.alert."):
            return _locate(value, branch.rsplit(".", 1)[1], version, path)
        if isinstance(branch, dict) and branch.get("type") == "array":
            if not isinstance(value, list):
                return [f"{path}: expected a list"]
            item = branch["items"].rsplit(".", 1)[1]
            return [p for i, v in enumerate(value) for p in _locate(v, item, version,
                                                                     f"{path}[{i}]")]
    if validate(value, ftype, raise_errors=False, strict=True):
        return []
    return [f"{path}: {_describe(value)} ({type(value).__name__}) is not {ftype}"]
