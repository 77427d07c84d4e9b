"""Failover benchmark: every fault of the primary under load, ttsha beside the article.

Two labs, one after the other in the same run, each with two real ``ttsha
serve`` nodes (same code, same deadline admission), their replicators, sshd
and a real Nginx on loopback; only the gateway differs:

* ttsha: the rendered gateway (a failed POST retried on the standby, short
  connect timeout) plus ``ttsha monitor`` (active probes, switchover,
  fencing of the dead node's connections);
* the article: its upstream (``max_fails=2 fail_timeout=10s``, a ``backup``
  server) and Nginx's defaults for everything else, no monitor
  (:mod:`article`).

Every fault of :mod:`ttsha.faults` is injected, over SSH as on a real pair,
into whichever node is the primary, a quarter into the traffic, and undone
when the traffic's schedule ends. The traffic comes from an outside client
(:mod:`client`, its own process, the standard library only): the same rate,
mix and number of requests in both setups, fresh texts every run. The rate
is a fraction of the new texts per second measured through the ttsha lab's
gateway before its first fault.

The labs use fixed loopback addresses: the benchmark holds
``/tmp/ttsha-lab.lock`` (as e2e runs and ``ttsha lab`` commands do) while
one is up, so it never runs beside them; under ``flock /tmp/ttsha-lab.lock``
it uses the lock it was given.

    python bench/failover.py [--duration 20] [--load 0.8] [--faults kill,stop] [--json out.json] [--no-plot]
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import article

from ttsha import failover as fo
from ttsha.config import Config, load
from ttsha.drill.timeline import timeline as failover_timeline
from ttsha.errors import TTSHAError
from ttsha.faults import FAULTS, Fault
from ttsha.lab import Lab, LabLayout
from ttsha.nginx import node_address

LOCK_FILE = Path("/tmp/ttsha-lab.lock")
CLIENT = Path(__file__).resolve().with_name("client.py")
PLOT = Path(__file__).resolve().parent.parent / "docs" / "failover.png"
#: A request slower than this is a stall (ttsha's ``[drill] max_stall`` default).
STALL_S = 3.0
#: The outside client's share of new texts (see client.py); the rest cost the node little.
NEW_SHARE = 0.5
SETUPS = ("ttsha", "article")


@dataclass(frozen=True)
class TrafficPlan:
    """The outside client's traffic for one fault."""

    rate: float  # requests per second, all kinds
    duration: float
    concurrency: int = 16
    #: Longer than the article's 60 s proxy timeouts, so its stalls show as what they are.
    timeout: float = 75.0

    @property
    def requests(self) -> int:
        return max(1, int(self.rate * self.duration))

    @property
    def fault_after(self) -> float:
        return max(2.0, self.duration * 0.25)

    @property
    def bound(self) -> float:
        """How long the client may take in all: every thread stuck a few times on a dead node, at worst."""
        return self.duration + 3 * self.timeout + 30


# -- what the client saw (pure) ----------------------------------------------

def last_upstream(sample: dict[str, Any]) -> str:
    """The node that gave the final answer (Nginx lists every node it tried)."""
    return str(sample.get("upstream") or "").rsplit(",", 1)[-1].strip()


def failure_key(sample: dict[str, Any]) -> str:
    """The status code, or the kind of error when there was no HTTP answer."""
    if sample["status"]:
        return str(sample["status"])
    return (str(sample.get("error") or "").split(":", 1)[0] or "connection").strip()


def summarize(samples: list[dict[str, Any]], fault_at: float, standby: str, names: dict[str, str],
              stall_s: float = STALL_S) -> dict[str, Any]:
    """Failed, slowest, stalled requests and the first success on ``standby`` (host:port), relative to the fault.

    A request's time counts from when it was due, not when a free client
    thread sent it (no coordinated omission). ``notable`` lists every failed
    or stalled request with what the gateway said about it.
    """
    waited = [s["end"] - s["due"] for s in samples]
    failed = [s for s in samples if s["status"] != 200]
    standby_ends = [s["end"] - fault_at for s in samples
                    if s["status"] == 200 and last_upstream(s) == standby and s["end"] >= fault_at]
    notable = []
    for s, w in zip(samples, waited, strict=True):
        if s["status"] != 200 or w > stall_s:
            hops = [names.get(a.strip(), a.strip()) for a in str(s.get("upstream") or "").split(",") if a.strip()]
            notable.append({"due": round(s["due"] - fault_at, 3), "sent": round(s["sent"] - fault_at, 3),
                            "end": round(s["end"] - fault_at, 3), "waited_s": round(w, 3), "kind": s["kind"],
                            "status": s["status"], "nodes": hops, "upstream_status": s.get("upstream_status", ""),
                            "cache": s.get("cache", ""), "error": " ".join(str(s.get("error") or "").split())[:160]})
    return {
        "requests": len(samples),
        "kinds": dict(Counter(s["kind"] for s in samples)),
        "failed": len(failed),
        "failures": dict(Counter(failure_key(s) for s in failed)),
        "max_latency_s": max(waited, default=math.nan),
        "over_stall": sum(1 for w in waited if w > stall_s),
        "first_success_on_standby": min(standby_ends, default=None),
        "retried_by_gateway": sum(1 for s in samples if "," in str(s.get("upstream") or "")),
        "notable": sorted(notable, key=lambda n: n["due"]),
    }


def reason(error: str) -> str:
    """A failed answer's reason in a word: ttsha's JSON ``error``, or the title of Nginx's HTML page."""
    found = re.search(r'"error":\s*"([^"]+)"', error)  # the body may be cut short: no json.loads
    if found:
        return found.group(1)
    if "<title>" in error:
        return error.split("<title>", 1)[1].split("</title>", 1)[0].split(" ", 1)[-1]
    return error.split(":", 1)[0][:40]


def failure_groups(notable: list[dict[str, Any]]) -> dict[tuple[int, str, str], list[float]]:
    """Failed requests by (status, reason, nodes tried): when each was due."""
    groups: dict[tuple[int, str, str], list[float]] = {}
    for n in notable:
        if n["status"] != 200:
            key = (n["status"], reason(n["error"]), " then ".join(n["nodes"]) or "no node")
            groups.setdefault(key, []).append(n["due"])
    return groups


def monitor_events(events: list[dict[str, Any]], wall_fault: float) -> list[dict[str, Any]]:
    """The monitor's events from the fault on, at seconds relative to it."""
    out = []
    for event in events:
        try:
            rel = float(event["at"]) - wall_fault
        except (KeyError, TypeError, ValueError):
            continue
        if rel >= -0.5:
            out.append({"at": round(rel, 3), "kind": event.get("kind"), "node": event.get("node"),
                        "detail": event.get("detail", "")})
    return out


# -- running it ----------------------------------------------------------------

def _inherited_lock(path: Path) -> int | None:
    """A descriptor of ``path`` this process inherited (``flock path make bench``), if any."""
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                return int(entry)
        except OSError:
            continue
    return None


@contextmanager
def lab_lock(path: Path = LOCK_FILE, wait: float = 3600.0) -> Iterator[None]:
    """Hold the labs' lock (wait for an e2e run or another lab to finish), or use the one inherited."""
    inherited = _inherited_lock(path)
    if inherited is not None:
        try:
            # Succeeds when the inherited open file already holds the lock: the caller took it for us.
            fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield
            return
        except BlockingIOError:
            pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TTSHAError(f"{path} still held after {wait:.0f} s (an e2e run or a lab?)") from None
                if not told:
                    print(f"failover bench: waiting for {path} (an e2e run or a lab holds it)", file=sys.stderr)
                    told = True
                time.sleep(1.0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TTSHAError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def _both_up(lab: Lab) -> dict | None:
    state = lab.monitor_state() or {}
    nodes = state.get("nodes") or {}
    ok = state.get("primary") and all((nodes.get(n) or {}).get("status") == "up" for n in ("primary", "standby"))
    return state if ok else None


def _routes_to(config: Config, layout: LabLayout, name: str) -> bool:
    """Five fresh requests in a row through the gateway are answered by ``name``."""
    address = node_address(config.nodes[name])
    for _ in range(5):
        answer = _client_call(layout.gateway_url)
        if answer is None or answer != address:
            return False
    return True


def _client_call(url: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/v1/voices", timeout=5) as resp:
            return (resp.headers.get("X-Upstream") or "").strip()
    except OSError:
        return None


def _client(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def _finish(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TTSHAError(f"the benchmark client did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise TTSHAError(f"the benchmark client failed: {err.decode(errors='replace').strip()[-300:]}")
    return json.loads(out)


def measure_capacity(url: str, seed: int, seconds: float = 6.0, concurrency: int = 4) -> dict[str, Any]:
    """New texts per second through the gateway, back to back (the outside client's closed loop)."""
    proc = _client("capacity", "--url", url, "--seconds", str(seconds), "--concurrency", str(concurrency),
                   "--seed", str(seed), "--timeout", "30")
    result = _finish(proc, seconds + 60)
    if not result["ok"]:
        raise TTSHAError(f"could not measure capacity: none of {result['failed']} requests succeeded")
    return result


def run_fault(setup: str, lab: Lab, layout: LabLayout, config: Config, fault: str, traffic: TrafficPlan,
              seed: int) -> dict[str, Any]:
    """One fault of the primary under the outside client's traffic; what the client saw and the monitor did."""
    lab.wait_healthy(layout, 120)
    if setup == "ttsha":
        target = _wait_for(lambda: _both_up(lab), 90, "both nodes up in the monitor")["primary"]
    else:
        target = "primary"  # the article's static primary, used again once its fail_timeout has passed
        _wait_for(lambda: _routes_to(config, layout, "primary"), 90, "the article's gateway to use the primary")
    standby = next(n for n in config.nodes if n != target)
    health = fo.node_health(config, target) or {}
    injected = Fault(config, target, fault, health.get("pid") if isinstance(health.get("pid"), int) else None)
    proc: subprocess.Popen | None = None
    restore_error = None
    try:
        injected.preflight()
        start_at = time.monotonic() + 1.0
        proc = _client("traffic", "--url", layout.gateway_url, "--rate", f"{traffic.rate:.4f}",
                       "--requests", str(traffic.requests), "--concurrency", str(traffic.concurrency),
                       "--seed", str(seed), "--start-at", repr(start_at), "--timeout", str(traffic.timeout))
        _sleep_until(start_at + traffic.fault_after)
        fault_at, wall_fault = time.monotonic(), time.time()
        try:
            injected.inject()
            _sleep_until(start_at + traffic.duration + 0.25)
        finally:
            restore_at = time.time()
            try:
                injected.restore()
            except TTSHAError as exc:
                restore_error = str(exc)
        restored_after = time.time() - wall_fault
        result = _finish(proc, traffic.bound)
    finally:
        injected.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    names = {node_address(node): name for name, node in config.nodes.items()}
    summary = summarize(result["samples"], fault_at, node_address(config.nodes[standby]), names)
    summary.update(target=target, standby=standby, seed=seed, restore_error=restore_error,
                   restored_after_s=round(restored_after, 3), fault_at_s=traffic.fault_after,
                   samples=[(round(s["sent"] - fault_at, 3), s["status"], round(s["end"] - s["due"], 3))
                            for s in result["samples"]])
    if setup == "ttsha":
        # The restored node rejoins (the events then hold the whole story), bounded.
        try:
            _wait_for(lambda: _both_up(lab), 60, f"{target} to rejoin")
        except TTSHAError:
            pass
        state = lab.monitor_state() or {}
        events = state.get("events") or []
        summary["timeline"] = failover_timeline(events, wall_fault, restore_at, target, standby)
        summary["events"] = monitor_events(events, wall_fault)
    else:
        summary["timeline"] = {"fault_injected": 0.0, "node_restored": round(restore_at - wall_fault, 3)}
        summary["events"] = []
    return summary


def run_setup(setup: str, faults: list[str], duration: float, seed: int, load_fraction: float,
              rate: float | None = None,
              keep: bool = False) -> tuple[dict[str, Any], TrafficPlan, dict[str, Any] | None]:
    """Every fault in turn on one lab; the results, the traffic used and the capacity measured (without ``rate``)."""
    root = Path(tempfile.mkdtemp(prefix=f"ttsha-bench-{setup}-"))
    lab = Lab(root)
    results: dict[str, Any] = {}
    capacity = None
    ok = False
    try:
        layout = lab.up(monitor=(setup == "ttsha"))
        config = load(layout.config)
        if setup == "article":
            article.install(config)
        if rate is None:
            capacity = measure_capacity(layout.gateway_url, seed)
            rate = round(load_fraction * capacity["rps"] / NEW_SHARE, 2)
        traffic = TrafficPlan(rate=rate, duration=duration)
        for i, fault in enumerate(faults):
            print(f"failover bench: {setup}: {fault}", file=sys.stderr)
            results[fault] = run_fault(setup, lab, layout, config, fault, traffic, seed + 1 + i)
        ok = True
    finally:
        lab.down()
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"failover bench: {setup} lab kept in {root} (logs)", file=sys.stderr)
    return results, traffic, capacity


def measure(duration: float = 20.0, load_fraction: float = 0.8, faults: list[str] | None = None,
            plot_to: Path | None = PLOT, keep: bool = False) -> dict[str, Any]:
    """Both setups, every fault, one run (holding the labs' lock throughout)."""
    import random

    faults = list(faults or FAULTS)
    seed = random.SystemRandom().randrange(100_000, 1_000_000)
    with lab_lock():
        started = time.time()  # the wait for the lock is not the benchmark's
        ours, traffic, capacity = run_setup("ttsha", faults, duration, seed, load_fraction, keep=keep)
        # The article's lab gets the same traffic, with fresh texts of its own seed range.
        base, _, _ = run_setup("article", faults, duration, seed + 1000, load_fraction, traffic.rate, keep)
    result = {"faults": {f: {"ttsha": ours[f], "article": base[f]} for f in faults}, "duration": duration,
              "rate": traffic.rate, "requests": traffic.requests, "concurrency": traffic.concurrency,
              "fault_after": traffic.fault_after, "load": load_fraction, "seed": seed, "capacity": capacity,
              "minutes": round((time.time() - started) / 60, 1)}
    if plot_to is not None and "kill" in faults:
        plot(result, plot_to)
        result["plot"] = plot_to.name
    return result


# -- the report ----------------------------------------------------------------

def _seconds(value: float | None, none: str = "-") -> str:
    if value is None or value != value:
        return none
    return f"{value:.2f} s"


def table(r: dict[str, Any]) -> list[str]:
    def failed(rep: dict[str, Any]) -> str:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(rep["failures"].items()))
        return f"{rep['failed']} of {rep['requests']}" + (f" ({detail})" if detail else "")

    def detection(rep: dict[str, Any], setup: str) -> str:
        if setup == "article":
            return "no active check"
        t = rep["timeline"]
        down, live = t.get("marked_down"), t.get("reload_done")
        if down is None:
            return "not marked down"
        return f"down {down:.2f} s, gateway switched {_seconds(live)}"

    capacity = r["capacity"]
    measured = (f"{r['load']:g} x {capacity['rps']:.1f} new texts/s measured through the ttsha lab's gateway = "
                if capacity else "")
    lines = [
        f"One run of {r['minutes']:g} min. For each fault, {r['requests']} requests from an outside client "
        f"(`bench/client.py`, its own process, one connection per request, {r['concurrency']} threads) at "
        f"{measured}{r['rate']:.1f} requests/s (50 % new texts, 25 % hot texts, 25 % downloads of earlier "
        f"results); the fault on the primary {r['fault_after']:g} s in, undone after {r['duration']:g} s. "
        f"A request's time counts from when it was due.",
        "",
        "| fault | setup | failed requests | slowest request | requests over 3 s | first success on the standby "
        "| detection |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault, pair in r["faults"].items():
        for setup in SETUPS:
            rep = pair[setup]
            name = "ttsha" if setup == "ttsha" else "article's setup"
            lines.append(f"| {fault} | {name} | {failed(rep)} | {_seconds(rep['max_latency_s'])} "
                         f"| {rep['over_stall']} | {_seconds(rep['first_success_on_standby'], 'never')} "
                         f"| {detection(rep, setup)} |")
    lines += ["", "ttsha's targets: 0 failed requests, none over 3 s (`max_stall`). Every ttsha request that "
              "failed or took over 3 s (times in seconds from the fault; nodes in the order the gateway tried them):",
              ""]
    any_notable = False
    for fault, pair in r["faults"].items():
        for n in pair["ttsha"]["notable"][:6]:
            any_notable = True
            tried = " then ".join(n["nodes"]) or "no node"
            what = f"status {n['status']}" if n["status"] else f"no answer ({n['error'][:60]})"
            lines.append(f"- {fault}: {n['kind']} due {n['due']:+.2f}, {what} after {n['waited_s']:.2f} s "
                         f"via {tried} ({n['upstream_status'] or '-'})")
    if not any_notable:
        lines.append("- none")
    lines += ["", "What failed in the article's setup, by answer (when the requests were due, from the fault):", ""]
    any_failed = False
    for fault, pair in r["faults"].items():
        for (status, why, tried), sent in failure_groups(pair["article"]["notable"]).items():
            any_failed = True
            lines.append(f"- {fault}: {len(sent)} x {status or 'no answer'} {why} from {tried}, "
                         f"due {min(sent):+.1f} to {max(sent):+.1f} s")
    if not any_failed:
        lines.append("- none")
    if r.get("plot"):
        lines += ["", f"![latency and failures through a kill -9 of the primary]({r['plot']})"]
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency of every request against time from the kill, failures in red, both setups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, sharey=True)
    titles = {"ttsha": "ttsha: gateway config + monitor",
              "article": "article's setup: passive checks, backup server, Nginx defaults"}
    for ax, setup in zip(axes, SETUPS, strict=True):
        rep = result["faults"]["kill"][setup]
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
        ax.set_title(titles[setup], fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds from the kill of the primary (when each request was sent)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    # Stopped from outside, the labs still come down and the faults are undone (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description="ttsha vs the article's gateway, every fault, one run")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated (default: every fault)")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    parser.add_argument("--keep-labs", action="store_true", help="keep the lab directories (logs)")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not 5 <= args.duration <= 300 or not 0 < args.load <= 2:
        parser.error(f"faults from {', '.join(FAULTS)}; --duration 5..300 s; --load in (0, 2]")
    result = measure(args.duration, args.load, faults, None if args.no_plot else args.plot, args.keep_labs)
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
