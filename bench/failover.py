"""Failover benchmark: ``kill -9`` of the primary under steady load, ttsha vs the article.

Both runs use the same lab (two real ``ttsha serve`` nodes and a real Nginx
on loopback) and the same drill traffic; only the gateway differs:

* ttsha: the rendered gateway config (retries on the standby for failed
  POSTs, short connect timeout) plus ``ttsha monitor``;
* the article: passive checks (``max_fails=2 fail_timeout=10s``), Nginx's
  default retry policy (a failed POST is not retried), no monitor.

    python bench/failover.py [--duration 20] [--rate 10] [--plot docs/failover.png]

The plot (matplotlib) shows every request's latency against time from the
kill, failures marked, for both setups.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from ttsha.config import load
from ttsha.drill import run_drill
from ttsha.lab import NODE_HOSTS, Lab
from ttsha.fsutil import atomic_write
from ttsha.nginx import render_article_baseline


def one(setup: str, duration: float, rate: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"ttsha-bench-{setup}-"))
    lab = Lab(root)
    layout = lab.up(monitor=(setup == "ttsha"))
    try:
        config = load(layout.config)
        if setup == "article":
            upstream, site = render_article_baseline(config, "primary", "standby")
            atomic_write(config.nginx.upstream_file, upstream)
            atomic_write(config.nginx.site_file, site)
            subprocess.run(config.nginx.test_command, check=True)
            subprocess.run(config.nginx.reload_command, check=True)
            import time

            time.sleep(1.0)
            monitor_state = lambda: None  # noqa: E731 - the article has no monitor
        else:
            monitor_state = lab.monitor_state
        pid = lab.pid("primary")
        report = run_drill(
            config,
            layout.gateway_url,
            "primary",
            "standby",
            inject=lambda: os.kill(pid, signal.SIGKILL),
            restore=lambda: None,
            fault="kill",
            monitor_state=monitor_state,
            drill=replace(config.drill, duration=duration, rate=rate),
        )
        return {**report.to_dict(), "samples": [(s.at, s.status, s.latency_s) for s in report.samples]}
    finally:
        lab.down()


PLOT = Path(__file__).resolve().parent.parent / "docs" / "failover.png"


def plot(result: dict, path: Path) -> None:
    """Latency of every request against time from the kill; failures in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, sharey=True)
    for ax, (name, title) in zip(axes, (("ttsha", "ttsha: gateway config + monitor"),
                                        ("article", "article's setup: passive checks, no POST retry"))):
        rep = result[name]
        ok = [(at, lat * 1000) for at, status, lat in rep["samples"] if status == 200]
        bad = [(at, lat * 1000) for at, status, lat in rep["samples"] if status != 200]
        if ok:
            ax.scatter(*zip(*ok), s=9, color="tab:blue", label="200")
        if bad:
            ax.scatter(*zip(*bad), s=40, marker="x", color="tab:red", label=f"failed ({len(bad)})")
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


def measure(duration: float = 20.0, rate: float = 10.0, plot_to: Path | None = PLOT) -> dict:
    result = {"ttsha": one("ttsha", duration, rate), "article": one("article", duration, rate),
              "duration": duration, "rate": rate}
    if plot_to is not None:
        plot(result, plot_to)
        result["plot"] = plot_to.name
    return result


def table(r: dict) -> list[str]:
    ours, base = r["ttsha"], r["article"]

    def t(rep, key):
        value = rep["timeline"].get(key)
        return "-" if value is None else f"{value:.2f} s"

    def failed(rep):
        detail = ", ".join(f"{k}: {v}" for k, v in rep["failures"].items())
        return f"{rep['failed']} of {rep['requests']}" + (f" ({detail})" if detail else "")

    def p99(rep):
        return f"{rep['latency_ms']['during']['p99']:.0f} ms"

    last_fail = lambda rep: "-" if not rep["failed"] else f"{rep['rto_s']:.2f} s"  # noqa: E731
    return [
        f"`kill -9` of the primary {r['duration'] * 0.25:.0f} s into {r['duration']:.0f} s of traffic at {r['rate']:.0f} req/s "
        "(70 % cache hits, 30 % new text).",
        "",
        "| metric | ttsha | article's setup | target |",
        "|---|---|---|---|",
        f"| failed client requests | {failed(ours)} | {failed(base)} | 0 |",
        f"| primary marked down (detection) | {t(ours, 'marked_down')} | no active check | |",
        f"| upstream rewritten / reload live | {t(ours, 'upstream_rewritten')} / {t(ours, 'reload_done')} | - | |",
        f"| first success on the standby | {t(ours, 'first_success_on_standby')} | {t(base, 'first_success_on_standby')} | <= 2 s |",
        f"| last failed request after the kill | {last_fail(ours)} | {last_fail(base)} | |",
        f"| p99 latency in the 5 s after the kill | {p99(ours)} | {p99(base)} | |",
        f"| requests retried by the gateway | {ours['retried_by_gateway']} | {base['retried_by_gateway']} | |",
        *(["", f"![latency and failures through the failover]({r['plot']})"] if r.get("plot") else []),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    result = measure(args.duration, args.rate, args.plot)
    print("\n".join(table(result)))
