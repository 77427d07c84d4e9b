"""``ttsha lab up|status|drill|down``: the HA pair on one machine."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TTSHAError
from .failover_cmd import drill_options

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
@click.option("--gateways", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: a gateway pair (Nginx, monitor, keepalived each) in network namespaces, sharing a virtual "
              "IP that clients call (root only).")
def up(root: Path, gateways: int) -> None:
    """Write configs, start everything on 127.0.0.0/8, wait until healthy.

    With --gateways 2, each gateway runs in a network namespace of its own,
    linked by veth pairs to a bridge the lab creates (and 'lab down' removes).

    \b
    Examples:
      ttsha lab up --dir /tmp/ttsha-lab
      sudo ttsha lab up --gateways 2
    """
    from ..lab import Lab

    lab_ = Lab(root)
    layout = lab_.up(gateways=gateways)
    _print_status(lab_)
    if not layout.store_mounts:
        click.echo("note: not root, so the stores share a filesystem: the disk-full fault needs 'lab up' as root",
                   err=True)


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
@drill_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report here.")
@click.option("--dry-run", is_flag=True, help="Explain what would be done; change nothing.")
def drill(root: Path, fault: str | None, duration: float | None, rate: float | None, load: float | None,
          concurrency: int | None, seed: int | None, mix, as_json: bool, report_file: Path | None,
          dry_run: bool) -> None:
    """Run 'ttsha failover --drill' against the lab, or a gateway fault.

    Node faults are injected over SSH, as on a real pair. In a lab with two
    gateways, gateway-kill and gateway-freeze hit the gateway holding the
    virtual IP; the report gives the time for the address to move and counts
    requests started before and after the move apart. Exits 5 when an
    objective is missed.

    \b
    Examples:
      ttsha lab drill --fault kill --duration 20s --rate 10
      ttsha lab drill --fault stop --load 0.8 --concurrency 8
      ttsha lab drill --fault gateway-kill --duration 10s --rate 10
    """
    from ..drill import DrillOptions, GatewayReport
    from ..lab import Lab
    from .failover_cmd import show_report

    lab_ = Lab(root)
    options = DrillOptions(fault, duration, rate, load, concurrency, seed, mix)
    if dry_run:
        for line in lab_.drill_plan(options):
            click.echo(line)
        return
    report = lab_.drill(options)
    if isinstance(report, GatewayReport):
        _show_gateway_report(report, as_json, report_file)
    else:
        show_report(report, as_json, report_file)


def _show_gateway_report(report, as_json: bool, report_file: Path | None) -> None:
    """Print (and save) a gateway drill's report; exit 5 when an objective was missed."""
    import json

    from ..errors import ObjectiveMissed
    from ..failover import save_report
    from .output import literal, table_console

    data = report.to_dict()
    if report_file:
        save_report(report_file, data)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        def s(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} s"

        console = table_console()
        console.print(literal(f"drill: {report.fault} of {report.target} (the VIP holder); the VIP moved to "
                              f"{report.took_over or 'no gateway'} after {s(report.vip_moved_s)}; a request sent "
                              f"after the move answered {s(report.answered_s)} after the fault "
                              f"(objective <= {report.bound_s:g} s)"))
        console.print(literal(f"requests {report.requests}: started before the move {report.before_move} "
                              f"(failed {report.failed_before_move}: in flight on, or sent to, {report.target}), "
                              f"after it {report.after_move} (failed {report.failed_after_move}); never sent "
                              f"{report.unsent}; primary node {report.primary_before or '-'} -> "
                              f"{report.primary_after or '-'}"))
        if report.missed:
            console.print(literal("objectives missed: ", "bold red") + literal("; ".join(report.missed)))
        else:
            console.print("[green]all objectives met[/]")
    if report.missed:
        raise ObjectiveMissed("drill objectives missed: " + "; ".join(report.missed))


@lab.command("start-node", hidden=True)
@_dir
@click.argument("name")
def start_node(root: Path, name: str) -> None:
    """Start one lab node's serve (the lab nodes' start_command, used by drills)."""
    click.echo(_lab_for_node(root, name).start_node(name))


@lab.command("power-on", hidden=True)
@_dir
@click.argument("name")
def power_on(root: Path, name: str) -> None:
    """Start a crashed lab node's sshd, replicator and serve (its power_on_command)."""
    click.echo(_lab_for_node(root, name).power_on(name))


def _lab_for_node(root: Path, name: str):
    from ..lab import NODE_HOSTS, Lab

    if name not in NODE_HOSTS:
        raise TTSHAError(f"no lab node {name!r}; one of {', '.join(NODE_HOSTS)}")
    return Lab(root)


def _print_status(lab_) -> None:
    from rich.table import Table

    from .output import literal, table_console

    table = Table(title=literal(f"ttsha lab in {lab_.root}"))
    for column in ("process", "pid", "running", "endpoint", "health", "log"):
        table.add_column(column)
    for name, entry in lab_.status().items():
        table.add_row(literal(name), str(entry["pid"]), literal("yes") if entry["running"] else literal("no", "red"),
                      literal(entry.get("endpoint", "")),
                      literal(entry.get("health", "")), literal(entry["log"]))
    console = table_console()
    console.print(table)
    if lab_.layout().gateways == 2:
        holders = lab_.vip_holders()
        from ..lab.pair import LAB_NET

        held = ", ".join(holders) if holders else "no gateway"
        console.print(literal(f"virtual IP {LAB_NET.vip}: held by {held}"
                              + (" (split: more than one holds it)" if len(holders) > 1 else "")))
