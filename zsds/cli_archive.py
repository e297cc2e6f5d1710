"""Archive curation commands: ``zsds release``, ``zsds archive verify``, ``zsds export``.

:func:`register` adds them to the main Typer app (listed in ``zsds.cli._register_optional_commands``).
See ``docs/releases.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]

release_app = typer.Typer(help="Data releases (frozen, checksummed snapshots).", no_args_is_help=True)
archive_app = typer.Typer(help="Archive integrity.", no_args_is_help=True)

#: Lightcurve-store tables accepted by ``zsds export`` (besides database tables).
LC_TABLES = {"lightcurves.objects": "objects", "lightcurves.detections": "detections"}
#: Database tables never exported (secrets).
_PRIVATE_TABLES = {"api_tokens"}


@release_app.command("create")
def release_create(
    name: str = typer.Argument(..., help="Release name, e.g. dr1."),
    start: Optional[str] = typer.Option(None, "--start", help="First night YYYYMMDD of the science catalogues."),
    end: Optional[str] = typer.Option(None, "--end", help="Last night YYYYMMDD (inclusive)."),
    copy: bool = typer.Option(False, "--copy", help="Copy files instead of hard-linking them."),
    description: str = typer.Option("", "--description", help="Free text for the manifest."),
):
    """Freeze a release under <archive>/releases/NAME with a checksummed manifest."""
    from .archive.release import create_release
    from .cli import state

    res = create_release(state.config, name, start_night=start, end_night=end, copy=copy,
                         description=description)
    m = res.manifest
    p = m["provenance"]
    typer.echo(f"release {m['name']} version {m['version']}: {m['totals']['files']} files, "
               f"{m['totals']['bytes'] / 1e6:.1f} MB ({res.n_linked} linked, {res.n_copied} copied); "
               f"{p['science_images']} science images, {p['reference_images']} references, "
               f"{p.get('lightcurve_objects', 0)} lightcurve objects")
    typer.echo(str(res.path / "manifest.json"))


@release_app.command("list")
def release_list():
    """List the releases of the archive."""
    from .archive.release import read_manifest
    from .archive.verify import release_names
    from .cli import state

    root = state.config.archive.root
    for name in release_names(root):
        m = read_manifest(root, name)
        typer.echo(f"{name}\tversion {m.get('version')}\t{m.get('created')}\t"
                   f"{m.get('totals', {}).get('files')} files\t{m.get('description', '')}")


@archive_app.command("verify")
def archive_verify(
    release: Optional[str] = typer.Option(None, "--release", help="Check only this release."),
    record: bool = typer.Option(False, "--record",
                                help="First record checksums of files that have none."),
    update: bool = typer.Option(False, "--update",
                                help="With --record: re-record changed product checksums "
                                     "instead of reporting them (after a legitimate rewrite)."),
    jobs: int = typer.Option(4, "--jobs", min=1, help="Files hashed at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only damaged files."),
):
    """Re-check the checksum of every archived file; exit 1 if any is damaged.

    Checks raw files (raw_files), calibrations, quarantined files, products
    (product_checksums) and every release manifest (or one release with --release).
    Damage: MISSING, SIZE (size changed), CHECKSUM (sha256 mismatch), UNREADABLE.
    """
    from .archive.verify import verify_archive
    from .cli import state
    from .db.ops import engine_from_config

    if update and not record:
        raise typer.BadParameter("--update needs --record")
    config = state.config
    report = verify_archive(config.archive.root, engine_from_config(config), release=release,
                            record=record, update=update, jobs=jobs)
    for problem in report.problems:
        typer.echo(str(problem))
    if not quiet:
        for path in report.updated:
            typer.echo(f"UPDATED   {path}")
        if report.unrecorded:
            typer.echo(f"{len(report.unrecorded)} files have no recorded checksum, e.g. "
                       f"{report.unrecorded[0]}", err=True)
    typer.echo(report.summary(), err=True)
    raise typer.Exit(0 if report.ok else 1)


def _read_db_table(config, table: str, columns: list[str] | None, limit: int | None):
    import pandas as pd
    from sqlalchemy import select

    from .db import schema as s
    from .db.ops import engine_from_config

    if table not in s.metadata.tables or table in _PRIVATE_TABLES:
        names = sorted(set(s.metadata.tables) - _PRIVATE_TABLES) + sorted(LC_TABLES)
        raise typer.BadParameter(f"unknown table {table!r}; tables: {', '.join(names)}")
    t = s.metadata.tables[table]
    cols = [t.c[c] for c in columns] if columns else [t]
    stmt = select(*cols).order_by(t.primary_key.columns.values()[0])
    if limit:
        stmt = stmt.limit(limit)
    with engine_from_config(config).connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _read_lc_table(config, table: str, columns: list[str] | None, limit: int | None):
    import pyarrow.dataset as ds

    from .io.lcstore import LightcurveStore
    from .io.paths import ArchiveLayout

    store = LightcurveStore(ArchiveLayout(config.archive.root).lightcurves_dir)
    if not store.exists():
        raise typer.BadParameter(f"no lightcurve store at {store.root}; run zsds lightcurves build")
    files = [str(store.root / p) for p in store.read_index().query("table == @table")["path"]]
    dataset = ds.dataset(files, format="parquet")
    tab = dataset.head(limit, columns=columns) if limit else dataset.to_table(columns=columns)
    return tab.to_pandas()


def export_cmd(
    table: str = typer.Argument(..., help="Database table (science_images, candidates, objects, "
                                          "...) or lightcurves.objects / lightcurves.detections."),
    fmt: str = typer.Option("csv", "--format", "-f",
                            help="csv, ipac_table, votable, fits or parquet."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: stdout)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated columns."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many rows."),
):
    """Export a database or lightcurve-store table to CSV, IPAC, VOTable, FITS or Parquet."""
    from .archive.export import normalize_format, write_table
    from .cli import state

    try:
        key = normalize_format(fmt)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    try:
        if table in LC_TABLES:
            df = _read_lc_table(state.config, LC_TABLES[table], cols, limit)
        else:
            df = _read_db_table(state.config, table, cols, limit)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(f"{table}: {exc}") from None
    data, _ = write_table(df, key)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        typer.echo(f"{len(df)} rows of {table} -> {out} ({key}, {len(data)} bytes)", err=True)


def register(app: typer.Typer) -> None:
    """Add ``zsds release``, ``zsds archive`` and ``zsds export`` to the main app."""
    app.add_typer(release_app, name="release")
    app.add_typer(archive_app, name="archive")
    app.command("export")(export_cmd)
