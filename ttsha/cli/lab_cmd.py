"""``ttsha lab up|status|drill|down``: the HA pair on one machine."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import click

from ..errors import TTSHAError

DEFAULT_DIR = Path("/tmp/ttsha-lab")
_dir = click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
                    show_default=True, help="Lab directory (configs, logs, pids, stores).")


@click.group()
def lab() -> None:
    """Run the whole pair on loopback: two nodes, Nginx gateway, monitor.

    \b
    Example:
      ttsha lab up && ttsha lab drill && ttsha lab down
    """


@lab.command()
@_dir
def up(root: Path) -> None:
    """Write configs, start everything on 127.0.0.0/8, wait until healthy.

    \b
    Example:
      ttsha lab up --dir /tmp/ttsha-lab
    """
    from ..lab import Lab

    lab_ = Lab(root)
    lab_.up()
    _print_status(lab_)


@lab.command()
@_dir
def status(root: Path) -> None:
    """Show the lab's processes, endpoints and logs.

    \b
    Example:
      ttsha lab status
    """
    from ..lab import Lab

    _print_status(Lab(root))


@lab.command()
@_dir
def down(root: Path) -> None:
    """Stop every process the lab started (by pid) and nothing else.

    \b
    Example:
      ttsha lab down
    """
    from ..lab import Lab

    stopped = Lab(root).down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}", err=True)


@lab.command()
@_dir
@click.option("--fault", type=click.Choice(["kill", "stop", "freeze"]), default="kill", show_default=True,
              help="kill = SIGKILL, stop = SIGTERM, freeze = SIGSTOP of the primary's serve process.")
@click.option("--duration", type=float, help="Seconds of traffic (default: [drill] duration).")
@click.option("--rate", type=float, help="Requests per second (default: [drill] rate).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report here.")
def drill(root: Path, fault: str, duration: float | None, rate: float | None, as_json: bool, report_file: Path | None) -> None:
    """Inject a fault on the lab's primary under traffic and report what clients saw.

    Exits 1 when an objective of [drill] is missed.

    \b
    Example:
      ttsha lab drill --fault kill --duration 20 --rate 10
    """
    import os

    from ..config import load
    from ..drill import run_drill
    from ..lab import NODE_HOSTS, Lab, health

    lab_ = Lab(root)
    layout = lab_.layout()
    config = load(layout.config)
    state = lab_.monitor_state() or {}
    target = state.get("primary")
    if target not in NODE_HOSTS:
        raise TTSHAError("the monitor has no primary yet; is the lab up? (ttsha lab status)")
    standby = next(n for n in NODE_HOSTS if n != target)
    if health(layout.url(standby)) != "ready":
        raise TTSHAError(f"refusing to drill: the standby {standby} is not healthy")
    pid = lab_.pid(target)
    signals = {"kill": signal.SIGKILL, "stop": signal.SIGTERM, "freeze": signal.SIGSTOP}

    def inject() -> None:
        os.kill(pid, signals[fault])

    def restore() -> None:
        if fault == "freeze":
            os.kill(pid, signal.SIGCONT)
        else:
            lab_.start_node(target)

    settings = replace(config.drill, **{k: v for k, v in (("duration", duration), ("rate", rate)) if v is not None})
    report = run_drill(config, layout.gateway_url, target, standby, inject, restore, fault, lab_.monitor_state, settings,
                       node_address=lambda name: f"{NODE_HOSTS[name]}:{layout.node_ports[name]}")
    data = report.to_dict()
    if report_file:
        report_file.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print_report(report)
    if report.missed:
        raise click.exceptions.Exit(1)


def print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    timeline = Table(title=f"drill: {report.fault} of {report.target} (standby {report.standby})")
    timeline.add_column("event")
    timeline.add_column("t (s after fault)", justify="right")
    for name, value in sorted(report.timeline.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
        timeline.add_row(name.replace("_", " "), "-" if value is None else f"{value:+.3f}")
    console.print(timeline)
    clients = Table(title="what clients saw")
    for column in ("window", "requests", "p50 ms", "p99 ms"):
        clients.add_column(column)
    for name, lat in report.latency_ms.items():
        clients.add_row(name, str(lat["n"]), f"{lat['p50']:.1f}", f"{lat['p99']:.1f}")
    console.print(clients)
    failures = ", ".join(f"{k}: {v}" for k, v in report.failures.items()) or "none"
    rto = "-" if report.rto_s is None else f"{report.rto_s:.3f} s"
    console.print(f"requests {report.requests}, failed {report.failed} ({failures}), retried by the gateway "
                  f"{report.retried_by_gateway}; RTO {rto}; RPO {report.rpo_files} files; "
                  f"{report.target} rejoined as {report.rejoined_as or '-'}")
    if report.missed:
        console.print("[bold red]objectives missed:[/] " + "; ".join(report.missed))
    else:
        console.print("[green]all objectives met[/]")


def _print_status(lab_) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ttsha lab in {lab_.root}")
    for column in ("process", "pid", "running", "endpoint", "health", "log"):
        table.add_column(column)
    for name, entry in lab_.status().items():
        table.add_row(name, str(entry["pid"]), "yes" if entry["running"] else "[red]no[/]", entry.get("endpoint", ""),
                      entry.get("health", ""), entry["log"])
    Console().print(table)
