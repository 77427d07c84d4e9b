"""Failover benchmark: every fault of the primary under load, ttsha vs the article.

Both setups use the same lab (two real ``ttsha serve`` nodes with their
replicators and a real Nginx on loopback), the same faults (:mod:`ttsha.faults`,
over SSH as on a real pair) and the same drill traffic (same seeds, same
rate, same mix); only the gateway differs:

* ttsha: the rendered gateway config (retries on the standby for failed
  POSTs, short connect timeout) plus ``ttsha monitor``;
* the article: passive checks (``max_fails=2 fail_timeout=10s``), a
  ``backup`` server, Nginx's default retry policy (a failed POST is not
  retried) and default timeouts; no monitor.

The rate is 80 % of the capacity measured on the ttsha lab before the first
fault (new texts per second; hot texts and downloads on top). Each fault
is injected on whichever node is primary, restored, and the next one waits
until both nodes are healthy again (and, for the article, until its passive
check sends traffic to the primary again).

    python bench/failover.py [--duration 20] [--load 0.8] [--faults kill,stop] [--plot docs/failover.png | --no-plot]

The plot (matplotlib) shows every request's latency against time from the
kill, failures marked, for both setups.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ttsha import failover as fo
from ttsha.config import Config, load
from ttsha.drill import Mix, TrafficSettings, run_drill
from ttsha.drill.client import Gateway
from ttsha.drill.core import with_capacity
from ttsha.drill.traffic import new_seed
from ttsha.faults import FAULTS, Fault
from ttsha.fsutil import atomic_write
from ttsha.lab import Lab, LabLayout
from ttsha.nginx import node_address, render_article_baseline


def _article_gateway(config: Config) -> None:
    import subprocess

    upstream, site = render_article_baseline(config, "primary", "standby")
    atomic_write(config.nginx.upstream_file, upstream)
    atomic_write(config.nginx.site_file, site)
    subprocess.run(config.nginx.test_command, check=True)
    subprocess.run(config.nginx.reload_command, check=True)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _routes_to(config: Config, layout: LabLayout, name: str) -> bool:
    """A fresh request through the gateway is answered by ``name``."""
    try:
        resp = Gateway(layout.gateway_url, 5).request("GET", "/v1/voices")
    except OSError:
        return False
    return resp.headers.get("x-upstream", "").strip() == node_address(config.nodes[name])


def run_setup(setup: str, faults: list[str], duration: float, seed: int, load_fraction: float,
              rate: float | None = None) -> tuple[dict, TrafficSettings]:
    """Every fault in turn on one lab; the reports, and the traffic used (rate measured when not given)."""
    root = Path(tempfile.mkdtemp(prefix=f"ttsha-bench-{setup}-"))
    lab = Lab(root)
    layout = lab.up(monitor=(setup == "ttsha"))
    results: dict[str, dict] = {}
    try:
        config = load(layout.config)
        traffic = TrafficSettings(seed, duration, rate or 1.0, config.drill.concurrency, Mix(),
                                  load=None if rate else load_fraction)
        if setup == "article":
            _article_gateway(config)
            monitor_state = lambda: None  # noqa: E731 - the article has no monitor
        else:
            monitor_state = lab.monitor_state
        for i, fault in enumerate(faults):
            lab.wait_healthy(layout, 120)
            if setup == "ttsha":
                _wait(lambda: (lab.monitor_state() or {}).get("nodes", {}).get("primary", {}).get("status") == "up"
                      and (lab.monitor_state() or {}).get("nodes", {}).get("standby", {}).get("status") == "up",
                      60, "both nodes up in the monitor")
                target = lab.monitor_state()["primary"]
            else:
                target = "primary"  # the article's static primary, back once its fail_timeout has passed
                _wait(lambda: _routes_to(config, layout, "primary"), 60, "the article's gateway to use the primary")
            standby = next(n for n in config.nodes if n != target)
            if traffic.load is not None and traffic.capacity is None:
                traffic = with_capacity(traffic, layout.gateway_url, config.nginx.proxy_read_timeout + 15)
            health = fo.node_health(config, target) or {}
            injected = Fault(config, target, fault, health.get("pid") if isinstance(health.get("pid"), int) else None)
            try:
                injected.preflight()
                report = run_drill(config, layout.gateway_url, target, standby, injected.inject, injected.restore,
                                   fault, monitor_state, traffic=replace(traffic, seed=seed + i))
            finally:
                injected.close()
            results[fault] = {**report.to_dict(), "max_latency_s": report.max_latency_s,
                              "samples": [(s.at, s.status, s.waited_s) for s in report.samples]}
    finally:
        lab.down()
    return results, traffic


PLOT = Path(__file__).resolve().parent.parent / "docs" / "failover.png"


def plot(result: dict, path: Path) -> None:
    """Latency of every request against time from the kill; failures in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, sharey=True)
    for ax, (name, title) in zip(axes, (("ttsha", "ttsha: gateway config + monitor"),
                                        ("article", "article's setup: passive checks, no POST retry")), strict=True):
        rep = result["faults"]["kill"][name]
        ok = [(at, lat * 1000) for at, status, lat in rep["samples"] if status == 200]
        bad = [(at, lat * 1000) for at, status, lat in rep["samples"] if status != 200]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=9, color="tab:blue", label="200")
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=40, marker="x", color="tab:red", label=f"failed ({len(bad)})")
        ax.axvline(0, color="black", linewidth=1)
        ax.text(0.05, 0.92, "kill -9", transform=ax.get_xaxis_transform())
        for key, style in (("marked_down", ":"), ("reload_done", "--")):
            t = rep["timeline"].get(key)
            if t is not None:
                ax.axvline(t, color="tab:green", linestyle=style, linewidth=1, label=key.replace("_", " "))
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds from the kill of the primary")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure(duration: float = 20.0, load_fraction: float = 0.8, faults: list[str] | None = None,
            plot_to: Path | None = PLOT) -> dict:
    faults = list(faults or FAULTS)
    seed = new_seed()
    ours, traffic = run_setup("ttsha", faults, duration, seed, load_fraction)
    base, _ = run_setup("article", faults, duration, seed, load_fraction, rate=traffic.rate)
    result = {"faults": {f: {"ttsha": ours[f], "article": base[f]} for f in faults}, "duration": duration,
              "rate": traffic.rate, "load": load_fraction, "seed": seed,
              "capacity": traffic.capacity.to_dict() if traffic.capacity else None, "mix": traffic.mix.describe()}
    if plot_to is not None and "kill" in faults:
        plot(result, plot_to)
        result["plot"] = plot_to.name
    return result


def table(r: dict) -> list[str]:
    def failed(rep: dict) -> str:
        detail = [f"{k}: {v}" for k, v in rep["failures"].items()]
        if rep.get("unsent"):
            # Every client was stuck: those requests would have waited (or failed) too.
            detail.append(f"{rep['unsent']} never sent")
        return f"{rep['failed']} of {rep['requests']}" + (f" ({', '.join(detail)})" if detail else "")

    def slowest(rep: dict) -> str:
        value = rep["max_latency_s"]
        return "-" if value != value else f"{value:.2f} s"

    def first_ok(rep: dict) -> str:
        value = rep["timeline"].get("first_success_on_standby")
        return "never" if value is None else f"{value:.2f} s"

    capacity = r["capacity"]
    measured = (f"{r['load']:g} x {capacity['rps']:.1f} new texts/s measured on the ttsha lab = " if capacity else "")
    lines = [
        f"Each fault on the primary {max(2.0, r['duration'] * 0.25):.0f} s into {r['duration']:.0f} s of traffic at "
        f"{measured}{r['rate']:.1f} requests/s ({r['mix']}), 8 client connections; the same seeds in both setups "
        f"(base seed {r['seed']}).",
        "",
        "| fault | failed requests: ttsha | article | slowest request: ttsha | article "
        "| first success on the standby: ttsha | article |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault, pair in r["faults"].items():
        ours, base = pair["ttsha"], pair["article"]
        lines.append(f"| {fault} | {failed(ours)} | {failed(base)} | {slowest(ours)} | {slowest(base)} "
                     f"| {first_ok(ours)} | {first_ok(base)} |")
    lines += ["", "Targets for ttsha: 0 failed requests, no request over 3 s (`max_stall`), the standby serving within "
              "2 s. The slowest requests of each ttsha drill and why:", ""]
    for fault, pair in r["faults"].items():
        top = pair["ttsha"]["slowest"][:2]
        why = "; ".join(f"{s['latency_s']:.2f} s {s['kind']} at {s['at']:+.1f} s ({s['why']})" for s in top)
        lines.append(f"- {fault}: {why or '-'}")
    if r.get("plot"):
        lines += ["", f"![latency and failures through the failover]({r['plot']})"]
    return lines


if __name__ == "__main__":
    import signal
    import sys

    # Stopped from outside, the labs still come down and the faults are undone (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated (default: every fault)")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    args = parser.parse_args()
    result = measure(args.duration, args.load, [f for f in args.faults.split(",") if f],
                     None if args.no_plot else args.plot)
    if args.json:
        import json

        args.json.write_text(json.dumps(result, ensure_ascii=False, default=str))
    print("\n".join(table(result)))
