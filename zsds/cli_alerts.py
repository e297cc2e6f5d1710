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
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Alert .avro file."),
    png: Optional[Path] = typer.Option(None, "--png", help="Cutout image (default FILE.png)."),
):
    """Print the main fields of an alert and write its three cutouts as a PNG."""
    from .alerts.listen import alert_summary, plot_cutouts
    from .alerts.packet import deserialize_alert

    packet = deserialize_alert(path.read_bytes())
    typer.echo(alert_summary(packet))
    out = png or path.with_suffix(".png")
    plot_cutouts(packet, out)
    typer.echo(f"cutouts: {out}")


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` sub-app to the main CLI."""
    app.add_typer(alerts_app, name="alerts")
