"""``ttsha nginx render``, ``ttsha monitor`` and ``ttsha status`` (the gateway host)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from . import Context, pass_ctx


@click.group()
def nginx() -> None:
    """Render the gateway's Nginx configuration.

    \b
    Example:
      ttsha nginx render && nginx -t && nginx -s reload
    """


@nginx.command()
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path),
              help="Write a complete, self-contained nginx.conf under DIR (run: nginx -p DIR -c DIR/nginx.conf).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the site configuration instead of writing files.")
@click.option("--force", is_flag=True, help="Overwrite an existing upstream file.")
@pass_ctx
def render(ctx: Context, prefix: Path | None, to_stdout: bool, force: bool) -> None:
    """Write the site configuration and the initial upstream include.

    The site goes to [nginx] site_file (or DIR/ttsha-site.conf with --prefix);
    the upstream file, which the monitor rewrites afterwards, is created with
    the highest-priority node as primary unless it already exists.

    \b
    Examples:
      ttsha nginx render
      ttsha nginx render --stdout > /etc/nginx/conf.d/ttsha.conf
      ttsha nginx render --prefix /tmp/gw && nginx -p /tmp/gw -c /tmp/gw/nginx.conf
    """
    from ..nginx import render_site, write_gateway_files

    if to_stdout:
        click.echo(render_site(ctx.config), nl=False)
        return
    written = write_gateway_files(ctx.config, prefix, force)
    for path in written:
        click.echo(f"wrote {path}", err=True)


@click.command()
@pass_ctx
def monitor(ctx: Context) -> None:
    """Probe the nodes and keep Nginx routing to a healthy primary.

    Rewrites only the upstream include ([nginx] upstream_file), validates it
    with the test command, reloads, and rolls back if Nginx refuses it.
    Events go to the log, the state file and the alert webhook.

    \b
    Example:
      ttsha --config /etc/ttsha/ttsha.toml monitor
    """
    from ..log import setup
    from ..monitor.daemon import Monitor

    setup(max(ctx.verbose, 1))
    raise click.exceptions.Exit(Monitor(ctx.config).run())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw state as JSON.")
@click.option("--events", "n_events", type=int, default=10, show_default=True, help="Recent events to show.")
@pass_ctx
def status(ctx: Context, as_json: bool, n_events: int) -> None:
    """Show nodes, roles, health and recent events as the monitor sees them.

    \b
    Example:
      ttsha status --events 20
    """
    from ..monitor import statefile

    state = statefile.load(ctx.config.monitor.state_file)
    if as_json:
        click.echo(json.dumps(state.raw, ensure_ascii=False, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from .output import literal, table_console

    now = time.time()
    age = now - state.updated_at
    console = table_console()
    table = Table(title=literal(f"ttsha nodes ({state.mode}; state {age:.0f} s old)"))
    for column in ("node", "role", "health", "since", "probe", "model", "replication", "last error"):
        table.add_column(column)
    styles = {"up": "green", "down": "bold red", "unknown": "yellow"}
    for name, node in state.nodes.items():
        since = f"{now - node.since:.0f} s ago" if node.since else "-"
        probe = f"{node.last_probe_ms:.1f} ms" if node.last_probe_ms is not None else "-"
        model = f"{node.engine} {node.model_version}".strip() or "-"
        rep = node.replication or {}
        if rep:
            lag = (rep.get("lag_s") or {}).get("p99")
            replication = (f"queue {rep.get('queue_depth')}, lag p99 "
                           + ("-" if lag is None else f"{1000 * lag:.0f} ms")
                           + ("" if rep.get("connected") else ", disconnected"))
            ack = rep.get("ack")
            acks = ack if isinstance(ack, dict) else {}
            if acks.get("state") == "degraded":
                why = escape(str(acks.get("reason") or "acknowledgements not waited for"))
                replication += f", [bold red]degraded[/] ({why})"
            elif acks.get("state") == "sync":
                replication += ", acks sync"
        else:
            replication = "-"
        table.add_row(literal(name), literal(node.role),
                      literal(node.status, styles.get(node.status, "")),
                      since, probe, literal(model), replication, literal(node.last_error))
    console.print(table)
    gateway = state.raw.get("gateway") or {}
    if gateway.get("vip"):
        holds = "holds" if gateway.get("holds") else "does not hold"
        console.print(literal(f"gateway {gateway.get('id')} {holds} the virtual IP {gateway['vip']} "
                              f"(role epoch {gateway.get('epoch')})"))
    events = state.events[-n_events:]
    if events:
        ev = Table(title="recent events")
        for column in ("when", "event", "node", "detail"):
            ev.add_column(column)
        for e in events:
            ev.add_row(time.strftime("%H:%M:%S", time.localtime(e.at)), literal(e.kind), literal(e.node),
                       literal(e.detail))
        console.print(ev)
