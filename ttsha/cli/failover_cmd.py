"""``ttsha failover --to NODE`` and ``ttsha failover --drill``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import Config, parse_duration
from ..errors import ObjectiveMissed, Refused, UsageError
from ..faults import FAULTS
from . import Context, pass_ctx


def _mix(ctx, param, value):
    if value is None:
        return None
    from ..drill.traffic import Mix

    try:
        return Mix.parse(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_DRILL_OPTIONS = [
    click.option("--fault", type=click.Choice(FAULTS),
                 help="Drill fault (default: [drill] fault): kill = SIGKILL, stop = SIGTERM, freeze = SIGSTOP of the "
                 "serve process; isolate = drop packets to its port; crash = SIGKILL of serve, replicator and sshd "
                 "at once; disk-full = fill the store's filesystem; slow = stop/continue serve on a duty cycle; "
                 "gateway-kill, gateway-freeze = of the gateway holding the virtual IP (lab with --gateways 2)."),
    click.option("--duration", callback=_duration,
                 help="Drill: traffic duration, e.g. 60s (default: [drill] duration)."),
    click.option("--rate", type=float, help="Drill: requests per second (default: [drill] rate)."),
    click.option("--load", type=float, help="Drill: measure the node's capacity first, then send this fraction of it "
                 "(e.g. 0.8; default: [drill] load)."),
    click.option("--concurrency", type=int, help="Drill: client connections at once (default: [drill] concurrency)."),
    click.option("--seed", type=int, help="Drill: seed of the texts and the mix (default: a new one each run)."),
    click.option("--mix", callback=_mix, metavar="new=W,hot=W,fetch=W",
                 help="Drill: weights of new texts, repeated texts and downloads (default: [drill] mix_*)."),
]


def drill_options(command):
    """The drill's options, shared by ``failover --drill`` and ``lab drill``."""
    for option in reversed(_DRILL_OPTIONS):
        command = option(command)
    return command


@click.command()
@click.option("--to", "target", metavar="NODE", help="Planned switchover: make NODE the primary.")
@click.option("--force", is_flag=True, help="Switch even if a safety check fails (unhealthy target, other model, "
              "replication behind).")
@click.option("--wait", "wait_s", default="10s", show_default=True, callback=_duration,
              help="How long to wait for replication to catch up before refusing.")
@click.option("--drill", is_flag=True, help="Inject a fault on the primary under traffic and report what clients saw.")
@drill_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON result to FILE.")
@click.option("--dry-run", is_flag=True, help="Explain what would be done; change nothing.")
@pass_ctx
def failover(ctx: Context, target: str | None, force: bool, wait_s: float, drill: bool, fault: str | None,
             duration: float | None, rate: float | None, load: float | None, concurrency: int | None,
             seed: int | None, mix, as_json: bool, report_file: Path | None, dry_run: bool) -> None:
    """Move traffic to another node on purpose, or rehearse a failure.

    Run on the gateway host. A switchover goes through the running monitor
    (or, without one, through the same Nginx code path under its lock),
    after checking the target is healthy, serves the same model and that
    replication has caught up. A drill refuses to start unless the standby
    is healthy; it exits 5 when an objective in [drill] is missed.

    \b
    Examples:
      ttsha failover --to standby
      ttsha failover --drill --fault kill --duration 60s --rate 10
      ttsha failover --drill --fault freeze --load 0.8 --mix new=0.5,hot=0.25,fetch=0.25
      ttsha failover --drill --fault isolate --dry-run
    """
    if bool(target) == drill:
        raise UsageError("give either --to NODE or --drill")
    if drill:
        from ..drill import DrillOptions

        options = DrillOptions(fault, duration, rate, load, concurrency, seed, mix)
        run_drill(ctx.config, options, as_json, report_file, dry_run)
        return
    if fault or any(v is not None for v in (duration, rate, load, concurrency, seed, mix)):
        raise UsageError("--fault, --duration, --rate, --load, --concurrency, --seed and --mix go with --drill")
    from .. import failover as fo

    config = ctx.config
    assert target is not None  # without --drill, --to was required above
    plan = fo.plan(config, target, force=force, wait=wait_s)
    if dry_run:
        for line in plan.describe(config):
            click.echo(line)
        if plan.failed and not force:  # exit 6, as the switchover itself would
            raise Refused("dry run: the switchover would be refused: " + "; ".join(c.name for c in plan.failed)
                          + " (--force to switch anyway)")
        return
    outcome = fo.execute(config, plan)
    data = {**outcome.to_dict(), "checks": [vars(c) for c in plan.checks]}
    if report_file:
        fo.save_report(report_file, data)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    elif not outcome.changed:
        click.echo(f"node {target} is already the primary; nothing to do", err=True)
    else:
        forced = f" (forced past: {'; '.join(outcome.forced_past)})" if outcome.forced_past else ""
        click.echo(f"node {outcome.target} is now the primary (was {fo.node_label(outcome.source)}), "
                   f"via the {outcome.via}; "
                   f"requests reach it through the gateway after {outcome.verified_s:.2f} s{forced}", err=True)


def run_drill(config: Config, options, as_json: bool, report_file: Path | None, dry_run: bool) -> None:
    """``failover --drill``: :func:`ttsha.drill.prepare` (dry run) or :func:`ttsha.drill.run`, then the report."""
    from .. import drill as drill_

    if dry_run:
        for line in drill_.prepare(config, options).describe():
            click.echo(line)
        return
    show_report(drill_.run(config, options), as_json, report_file)


def show_report(report, as_json: bool, report_file: Path | None) -> None:
    """Print (and save) a drill report; exit 5 when an objective was missed."""
    from .. import failover as fo

    data = report.to_dict()
    if report_file:
        fo.save_report(report_file, data)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print_report(report)
    if report.missed:
        raise ObjectiveMissed("drill objectives missed: " + "; ".join(report.missed))


def print_report(report) -> None:
    """The drill report as rich tables."""
    from rich.table import Table

    from .output import literal, table_console

    console = table_console()
    t = report.traffic
    if t:
        mix = ", ".join(f"{100 * v:.0f} % {k}" for k, v in t["mix"].items())
        load = (f"{t['load']:g} x {t['capacity']['rps']:.1f} new texts/s measured = " if t.get("capacity") else "")
        console.print(literal(f"traffic: seed {t['seed']}, {load}{t['rate']:.1f} requests/s for {t['duration_s']:g} s, "
                      f"{t['concurrency']} clients, {mix}"))
    timeline = Table(title=literal(f"drill: {report.fault} of node {report.target} (standby: node {report.standby})"))
    timeline.add_column("event")
    timeline.add_column("t (s after fault)", justify="right")
    for name, value in sorted(report.timeline.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
        timeline.add_row(name.replace("_", " "), "-" if value is None else f"{value:+.3f}")
    console.print(timeline)
    clients = Table(title="what clients saw")
    for column in ("window", "requests", "p50 ms", "p99 ms", "max ms"):
        clients.add_column(column, justify="right")
    for name, lat in report.latency_ms.items():
        clients.add_row(name, str(lat["n"]), f"{lat['p50']:.1f}", f"{lat['p99']:.1f}", f"{lat['max']:.1f}")
    console.print(clients)
    if report.slowest:
        slow = Table(title="slowest requests")
        for column in ("t (s)", "ms", "kind", "status", "window", "why"):
            slow.add_column(column, justify="left" if column == "why" else "right")
        for s in report.slowest:
            slow.add_row(f"{s['at']:+.2f}", f"{1000 * s['latency_s']:.0f}", s["kind"], str(s["status"] or "-"),
                         s["window"], s["why"])
        console.print(slow)
    failures = ", ".join(f"{k}: {v}" for k, v in report.failures.items()) or "none"
    rto = "-" if report.rto_s is None else f"{report.rto_s:.3f} s"
    console.print(literal(f"requests {report.requests}, failed {report.failed} ({failures}), retried by the gateway "
                          f"{report.retried_by_gateway}, bodies completed by Range {report.resumed_with_range}; "
                          f"RTO {rto}; RPO {report.rpo_files} files; "
                          f"node {report.target} rejoined as {report.rejoined_as or '-'}"))
    if report.new_cached or report.late_requests or report.unsent:
        console.print(f"new texts answered from cache {report.new_cached}; requests sent late for lack of a free "
                      f"client {report.late_requests}, never sent {report.unsent}")
    if report.missed:
        console.print(literal("objectives missed: ", "bold red") + literal("; ".join(report.missed)))
    else:
        console.print("[green]all objectives met[/]")
