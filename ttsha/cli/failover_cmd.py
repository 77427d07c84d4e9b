"""``ttsha failover --to NODE`` and ``ttsha failover --drill``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from ..config import parse_duration
from ..errors import ObjectiveMissed, UsageError
from . import Context, pass_ctx


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--to", "target", metavar="NODE", help="Planned switchover: make NODE the primary.")
@click.option("--force", is_flag=True, help="Switch even if a safety check fails (unhealthy target, other model, "
              "replication behind).")
@click.option("--wait", "wait_s", default="10s", show_default=True, callback=_duration,
              help="How long to wait for replication to catch up before refusing.")
@click.option("--drill", is_flag=True, help="Inject a fault on the primary under traffic and report what clients saw.")
@click.option("--fault", type=click.Choice(["kill", "stop", "freeze", "isolate"]),
              help="Drill fault (default: [drill] fault): kill = SIGKILL, stop = SIGTERM, freeze = SIGSTOP of the "
              "serve process; isolate = drop packets to its port.")
@click.option("--duration", callback=_duration, help="Drill: traffic duration, e.g. 60s (default: [drill] duration).")
@click.option("--rate", type=float, help="Drill: requests per second (default: [drill] rate).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON result to FILE.")
@click.option("--dry-run", is_flag=True, help="Explain what would be done; change nothing.")
@pass_ctx
def failover(ctx: Context, target: str | None, force: bool, wait_s: float, drill: bool, fault: str | None,
             duration: float | None, rate: float | None, as_json: bool, report_file: Path | None,
             dry_run: bool) -> None:
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
      ttsha failover --drill --fault isolate --dry-run
    """
    if bool(target) == drill:
        raise UsageError("give either --to NODE or --drill")
    if drill:
        _drill(ctx, fault, duration, rate, as_json, report_file, dry_run)
        return
    if fault or duration is not None or rate is not None:
        raise UsageError("--fault, --duration and --rate go with --drill")
    from .. import failover as fo

    config = ctx.config
    plan = fo.plan(config, target, force=force, wait=wait_s)
    if dry_run:
        for line in plan.describe(config):
            click.echo(line)
        if plan.failed and not force:
            click.echo("would refuse: " + "; ".join(c.name for c in plan.failed) + " (--force to switch anyway)")
        return
    outcome = fo.execute(config, plan)
    data = {**outcome.to_dict(), "checks": [vars(c) for c in plan.checks]}
    if report_file:
        fo.save_report(report_file, data)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    elif not outcome.changed:
        click.echo(f"{target} is already the primary; nothing to do", err=True)
    else:
        forced = f" (forced past: {'; '.join(outcome.forced_past)})" if outcome.forced_past else ""
        click.echo(f"primary is now {outcome.target} (was {outcome.source or 'none'}), via the {outcome.via}; "
                   f"requests reach it through the gateway after {outcome.verified_s:.2f} s{forced}", err=True)


def _drill(ctx: Context, fault: str | None, duration: float | None, rate: float | None, as_json: bool,
           report_file: Path | None, dry_run: bool) -> None:
    from .. import drill as drill_
    from .. import failover as fo

    config = ctx.config
    overrides = {k: v for k, v in (("duration", duration), ("rate", rate)) if v is not None}
    if overrides.get("rate") is not None and not 0.1 <= overrides["rate"] <= 1000:
        raise UsageError("--rate must be between 0.1 and 1000 requests per second")
    settings = replace(config.drill, **overrides)
    plan = drill_.prepare(config, fault or settings.fault, settings)
    if dry_run:
        for line in plan.describe():
            click.echo(line)
        return
    report = drill_.execute(config, plan)
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
    from .output import literal, table_console
    from rich.table import Table

    console = table_console()
    timeline = Table(title=literal(f"drill: {report.fault} of {report.target} (standby {report.standby})"))
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
    failures = ", ".join(f"{k}: {v}" for k, v in report.failures.items()) or "none"
    rto = "-" if report.rto_s is None else f"{report.rto_s:.3f} s"
    console.print(literal(f"requests {report.requests}, failed {report.failed} ({failures}), retried by the gateway "
                          f"{report.retried_by_gateway}; RTO {rto}; RPO {report.rpo_files} files; "
                          f"{report.target} rejoined as {report.rejoined_as or '-'}"))
    if report.missed:
        console.print(literal("objectives missed: ", "bold red") + literal("; ".join(report.missed)))
    else:
        console.print("[green]all objectives met[/]")
