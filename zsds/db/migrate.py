"""Schema upgrades of the operations database (``zsds db upgrade``).

zsds changes its schema additively: new tables, new nullable columns, new indexes.
:func:`plan_upgrade` compares the live database (SQLAlchemy's inspector) with
:data:`zsds.db.schema.metadata` and lists the DDL that brings it up to date;
:func:`upgrade` applies the plan in one transaction (PostgreSQL and SQLite both have
transactional DDL) and records ``schema_version`` (and ``upgraded_at``) in ``schema_info``.
Running it again finds nothing to do. The same code runs on SQLite and PostgreSQL.

What is *not* done automatically, and refused with an error naming the table and column:

* a new column that cannot be added to a table with rows: NOT NULL without a server
  default, part of the primary key, UNIQUE or a foreign key;
* a database whose ``schema_version`` is newer than this zsds (upgrade zsds instead).

Columns or tables the database has and the schema does not are left alone (reported as
``extra``), so an older zsds keeps working against a newer additive schema. Incompatible
changes (a type change, a renamed column) bump :data:`~zsds.db.schema.SCHEMA_VERSION` and
need a hand-written step, run first in the same transaction:

* 1 -> 2: ``object_counters`` is keyed by ``(year, block)`` (objectIds counted per
  field-quadrant block, :mod:`zsds.alerts.objects`). The old per-year counters become
  block 0, whose names are exactly those handed out before (``aaaaaaa`` onwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Column, Engine, Table, inspect, select
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from ..errors import ZsdsError
from . import schema as s
from .ops import utcnow

__all__ = ["SchemaUpgradeError", "UpgradePlan", "plan_upgrade", "upgrade", "stored_version"]


class SchemaUpgradeError(ZsdsError):
    """The database cannot be upgraded automatically."""


@dataclass
class UpgradePlan:
    """What :func:`upgrade` would do.

    Attributes
    ----------
    stored_version : str or None
        ``schema_info.schema_version`` of the database (None: not recorded, or no table).
    target_version : str
        :data:`zsds.db.schema.SCHEMA_VERSION`.
    statements : list of str
        The DDL, in order, as compiled for the database's dialect.
    extra : list of str
        Tables and columns the database has beyond the schema (left alone).
    """

    stored_version: str | None
    target_version: str
    statements: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    _ddl: list = field(default_factory=list, repr=False)
    _steps: list = field(default_factory=list, repr=False)

    @property
    def up_to_date(self) -> bool:
        return not self._ddl and not self._steps and self.stored_version == self.target_version


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def stored_version(engine: Engine) -> str | None:
    """The ``schema_version`` recorded in the database, or None."""
    if not inspect(engine).has_table(s.schema_info.name):
        return None
    with engine.connect() as conn:
        return conn.execute(select(s.schema_info.c.value)
                            .where(s.schema_info.c.key == "schema_version")).scalar()


def _addable(table: Table, column: Column) -> str:
    """Why ``column`` cannot be added to an existing ``table`` ('' if it can)."""
    if column.primary_key:
        return "is part of the primary key"
    if column.foreign_keys:
        return "has a foreign key"
    if column.unique:
        return "is UNIQUE"
    if not column.nullable and column.server_default is None:
        return "is NOT NULL without a server default"
    return ""


def plan_upgrade(engine: Engine) -> UpgradePlan:
    """Compare the database with the schema; nothing is changed.

    Raises
    ------
    SchemaUpgradeError
        If the database's schema version is newer than this zsds, or a missing column cannot
        be added automatically (see the module docstring).
    """
    version = stored_version(engine)
    if version is not None and _version_key(version) > _version_key(s.SCHEMA_VERSION):
        raise SchemaUpgradeError(
            f"database {engine.url.render_as_string(hide_password=True)} has schema version "
            f"{version}, newer than this zsds ({s.SCHEMA_VERSION}); upgrade zsds")
    plan = UpgradePlan(version, s.SCHEMA_VERSION)
    insp = inspect(engine)
    existing = set(insp.get_table_names())
    refused = []
    if "object_counters" in existing and \
            "block" not in {c["name"] for c in insp.get_columns("object_counters")}:
        plan._steps.append(_counters_by_block)
        existing.discard("object_counters")  # recreated by the step
    for table in s.metadata.sorted_tables:
        if table.name == "object_counters" and _counters_by_block in plan._steps:
            continue
        if table.name not in existing:
            plan._ddl.append(CreateTable(table))
            plan._ddl.extend(CreateIndex(ix) for ix in sorted(table.indexes, key=lambda i: i.name))
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            why = _addable(table, column)
            if why:
                refused.append(f"{table.name}.{column.name} {why}")
            else:
                plan._ddl.append(_AddColumn(table, column))
        plan.extra += [f"{table.name}.{c}" for c in sorted(have - set(table.columns.keys()))]
        indexes = {ix["name"] for ix in insp.get_indexes(table.name)}
        plan._ddl.extend(CreateIndex(ix) for ix in sorted(table.indexes, key=lambda i: i.name)
                         if ix.name not in indexes)
    if refused:
        raise SchemaUpgradeError(
            "cannot add automatically (needs a hand-written upgrade step): " + "; ".join(refused))
    plan.extra = sorted(existing - set(s.metadata.tables)) + plan.extra
    plan.statements = [step.__doc__.strip().splitlines()[0] for step in plan._steps]
    plan.statements += [str(d.compile(dialect=engine.dialect)).strip() for d in plan._ddl]
    return plan


def _counters_by_block(conn) -> None:
    """(schema 1 -> 2) recreate object_counters keyed by (year, block); old counters -> block 0."""
    old = conn.exec_driver_sql("SELECT year, next_index FROM object_counters").all()
    conn.exec_driver_sql("DROP TABLE object_counters")
    conn.execute(CreateTable(s.object_counters))
    if old:
        conn.execute(s.object_counters.insert(),
                     [{"year": y, "block": 0, "next_index": n} for y, n in old])


@dataclass(frozen=True)
class _AddColumn:
    """``ALTER TABLE <table> ADD COLUMN <column definition>`` (portable subset)."""

    table: Table
    column: Column

    def compile(self, dialect):
        definition = CreateColumn(self.column).compile(dialect=dialect)
        name = dialect.identifier_preparer.format_table(self.table)
        return f"ALTER TABLE {name} ADD COLUMN {definition}"


def upgrade(engine: Engine, *, dry_run: bool = False) -> UpgradePlan:
    """Bring the database up to the current schema (idempotent); see the module docstring.

    Parameters
    ----------
    engine : Engine
    dry_run : bool
        Only plan (:func:`plan_upgrade`).

    Returns
    -------
    UpgradePlan
        What was (or, with ``dry_run``, would be) executed.
    """
    plan = plan_upgrade(engine)
    if dry_run or plan.up_to_date:
        return plan
    info = s.schema_info
    with engine.begin() as conn:
        for step in plan._steps:
            step(conn)
        for d in plan._ddl:
            conn.exec_driver_sql(str(d.compile(dialect=engine.dialect)).strip())
        for key, value in (("schema_version", s.SCHEMA_VERSION),
                           ("upgraded_at", utcnow().isoformat(timespec="seconds"))):
            done = conn.execute(info.update().where(info.c.key == key).values(value=value))
            if done.rowcount == 0:
                conn.execute(info.insert().values(key=key, value=value))
    return plan
