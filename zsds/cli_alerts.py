"""``zsds alerts``: listen to the alert stream, show an alert packet."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "alerts_app"]

alerts_app = typer.Typer(help="Alert packets and the alert stream.", no_args_is_help=True)
log = logging.getLogger("zsds.alerts")


@alerts_app.command("listen")
def listen(
    outdir: Path = typer.Argument(..., help="Folder for matching packets (<candid>.avro)."),
    filter_expr: Optional[str] = typer.Option(None, "--filter",
                                              help='e.g. "rb >= 0.65 and nbad == 0"'),
    topic: Optional[list[str]] = typer.Option(None, "--topic",
                                              help="Topic(s); default all ztf_YYYYMMDD_programidN."),
    group: str = typer.Option("zsds-listen", "--group", help="Kafka consumer group id."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap",
                                            help="Broker (default: kafka.bootstrap_servers)."),
    max_messages: Optional[int] = typer.Option(None, "--max", help="Stop after N messages."),
    idle: Optional[float] = typer.Option(None, "--idle", help="Stop after S s without messages."),
):
    """Consume alerts in a consumer group; write those passing --filter (deduped on candid)."""
    from .alerts.filter import compile_filter
    from .alerts.kafka import consume_alerts
    from .alerts.listen import AlertSink
    from .cli import state

    servers = bootstrap or state.config.kafka.bootstrap_servers
    if not servers:
        raise typer.BadParameter("no broker: give --bootstrap or set kafka.bootstrap_servers")
    sink = AlertSink(outdir, compile_filter(filter_expr))
    n = asyncio.run(consume_alerts(servers, sink, topics=topic or None, group_id=group,
                                   max_messages=max_messages, idle_timeout=idle))
    typer.echo(f"{n} messages, {sink.n_written} written, {sink.n_duplicate} duplicates, "
               f"{sink.n_rejected} filtered out", err=True)


@alerts_app.command("show")
def show(
    path: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="Alert .avro file (one alert, or a quadrant's archive file)."),
    candid: Optional[int] = typer.Option(None, "--candid",
                                         help="Which alert of an archive file (default: first)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Cutout image (default FILE.png)."),
):
    """Print the main fields of an alert and write its three cutouts as a PNG."""
    import fastavro

    from .alerts.listen import alert_summary, plot_cutouts

    try:
        with open(path, "rb") as fh:
            packets = list(fastavro.reader(fh))
    except Exception as exc:  # noqa: BLE001 - fastavro raises several types
        raise typer.BadParameter(f"{path}: not an Avro alert file ({exc})") from None
    chosen = [p for p in packets if candid is None or p["candid"] == candid]
    if not chosen:
        raise typer.BadParameter(f"{path}: no alert with candid {candid}")
    packet = chosen[0]
    typer.echo(alert_summary(packet))
    out = png or path.with_suffix(".png")
    plot_cutouts(packet, out)
    typer.echo(f"cutouts: {out}")


@alerts_app.command("topics")
def topics(
    night: Optional[str] = typer.Argument(None, help="First night YYYYMMDD (default: today, UTC)."),
    nights: int = typer.Option(2, "--nights", min=1, help="Nights to have topics for."),
    keep_days: Optional[int] = typer.Option(None, "--keep-days", min=1,
                                            help="Delete alert topics of nights older than this."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap",
                                            help="Broker (default: kafka.bootstrap_servers)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be done."),
):
    """Create the nightly alert topics ahead (partitions, replication, retention from the
    kafka: configuration), check existing ones, optionally delete old ones.

    Exit status 0 when every topic exists with the configured settings; 1 when an existing
    topic differs (printed; alter it with kafka-configs.sh, see deploy/README.md).
    """
    from datetime import datetime, timezone

    from .alerts.topics import TopicSpec, manage_topics
    from .cli import state

    servers = bootstrap or state.config.kafka.bootstrap_servers
    if not servers:
        raise typer.BadParameter("no broker: give --bootstrap or set kafka.bootstrap_servers")
    first = night or datetime.now(timezone.utc).strftime("%Y%m%d")
    if len(first) != 8 or not first.isdigit():
        raise typer.BadParameter(f"NIGHT must be YYYYMMDD, not {first!r}")
    actions = asyncio.run(manage_topics(servers, TopicSpec.from_config(state.config), first,
                                        nights, keep_days=keep_days, dry_run=dry_run))
    for action in actions:
        would = dry_run and action.action in ("create", "delete")
        typer.echo(("would " if would else "") + str(action))
    raise typer.Exit(1 if any(a.action == "differs" for a in actions) else 0)


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` sub-app to the main CLI."""
    app.add_typer(alerts_app, name="alerts")
