"""Failover drills: real traffic through the gateway, a real fault, a measured report.

:func:`prepare` finds the primary and a healthy standby (or refuses) and the
fault to inject (:mod:`ttsha.faults`: locally or over SSH); :func:`execute`
runs it. :func:`run_drill` seeds some audio, starts bounded synthetic
traffic (cache hits and new texts) through the gateway, injects the fault on
the primary, keeps the traffic going, restores the node, and then checks
what clients saw: failures by status, latency before/during/after, the
recovery time (RTO) and the audio acknowledged before the fault that can no
longer be fetched (RPO, in files). The timeline comes from the monitor's
events. Run it on the gateway host, where the monitor runs.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config, DrillConfig
from .errors import Refused, TTSHAError
from .faults import FAULTS, Fault

log = logging.getLogger(__name__)

__all__ = ["FAULTS", "DrillPlan", "DrillReport", "execute", "prepare", "run_drill"]
#: Audio acknowledged before the fault and never requested again: only
#: replication can keep it fetchable after the primary dies (RPO). Each drill
#: adds its own number, so an earlier drill's copies cannot hide a loss.
RPO_TEXTS = [f"演练{{run}}前生成的第{i}段音频。" for i in range(1, 9)]
#: Texts the traffic repeats (cache hits).
HIT_TEXTS = [f"常用提示语第{i}条。" for i in range(1, 9)]


@dataclass
class Sample:
    at: float  # seconds relative to the fault
    status: int
    latency_s: float
    upstream: str
    audio_id: str = ""
    error: str = ""


@dataclass
class DrillReport:
    fault: str
    target: str
    standby: str
    objectives: dict[str, Any]
    timeline: dict[str, float | None] = field(default_factory=dict)
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    retried_by_gateway: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rto_s: float | None = None
    rpo_files: int = 0
    lost_ids: list[str] = field(default_factory=list)
    rejoined_as: str | None = None
    missed: list[str] = field(default_factory=list)
    #: Every request as the client saw it (for plots; not in :meth:`to_dict`).
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        del data["samples"]
        return {**data, "failed": self.failed, "passed": not self.missed}


class Gateway:
    """A small HTTP client for the gateway (one connection per request: as clients do)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_drill(
    config: Config,
    gateway_url: str,
    target: str,
    standby: str,
    inject: Callable[[], None],
    restore: Callable[[], None],
    fault: str,
    monitor_state: Callable[[], dict | None],
    drill: DrillConfig | None = None,
    node_address: Callable[[str], str] | None = None,
) -> DrillReport:
    """Run one drill; see the module docstring."""
    drill = drill or config.drill
    address = node_address or (lambda name: urlsplit(config.nodes[name].url).netloc)
    # Clients wait longer than Nginx does: a request stuck on a frozen node is
    # retried by Nginx after proxy_read_timeout, and the report shows it as slow.
    gw = Gateway(gateway_url, timeout=config.nginx.proxy_read_timeout + 15)
    report = DrillReport(
        fault,
        target,
        standby,
        {"max_failed_requests": drill.max_failed_requests, "max_rto_s": drill.max_rto, "max_rpo_files": drill.max_rpo_files},
    )
    # Audio acknowledged before the fault: it must stay fetchable.
    seeded: list[str] = []
    run = int(time.time() * 1000) % 10**9
    for text in (t.format(run=run) for t in RPO_TEXTS):
        status, headers, _ = gw.request("POST", "/v1/synthesize", {"text": text})
        if status == 200 and headers.get("x-audio-id"):
            seeded.append(headers["x-audio-id"])
    samples: list[Sample] = []
    lock = threading.Lock()
    stop = threading.Event()
    # The fault comes a quarter into the run, after at least 2 s of "before".
    start = time.monotonic()
    fault_at = [start + max(2.0, drill.duration * 0.25)]
    deadline = start + drill.duration
    limit = int(drill.rate * drill.duration) + 1
    rng = random.Random(1)

    def one(text: str) -> None:
        started = time.monotonic()
        try:
            status, headers, _ = gw.request("POST", "/v1/synthesize", {"text": text})
            sample = Sample(started - fault_at[0], status, time.monotonic() - started,
                            headers.get("x-upstream", ""), headers.get("x-audio-id", ""))
        except OSError as exc:
            sample = Sample(started - fault_at[0], 0, time.monotonic() - started, "", error=str(exc))
        with lock:
            samples.append(sample)

    def scheduler() -> None:
        # Open loop: requests start on schedule whatever earlier ones are doing,
        # so one hung request cannot hide the others (bounded in count and time).
        in_flight: list[threading.Thread] = []
        for i in range(limit):
            at = start + i / drill.rate
            if stop.is_set() or at > deadline:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            in_flight = [t for t in in_flight if t.is_alive()]
            if len(in_flight) >= 256:
                continue  # the gateway is swamped; the report shows the gap
            text = rng.choice(HIT_TEXTS) if rng.random() < 0.7 else f"演练流量第{i}号请求。"
            t = threading.Thread(target=one, args=(text,), daemon=True)
            t.start()
            in_flight.append(t)
        for t in in_flight:
            t.join(gw.timeout + 5)

    traffic = threading.Thread(target=scheduler, daemon=True)
    traffic.start()
    time.sleep(max(0.0, fault_at[0] - time.monotonic()))
    fault_at[0] = time.monotonic()
    wall_fault = time.time()
    try:
        inject()
        log.info("fault %s injected on %s", fault, target)
        traffic.join(drill.duration + gw.timeout + 30)
    finally:
        # Whatever happens (an error, Ctrl-C), the node is given back.
        stop.set()
        restore_at = time.time()
        try:
            restore()
        except TTSHAError as exc:
            log.error("could not restore %s: %s", target, exc)
            report.missed.append(f"restoring {target} failed: {exc}")
    rejoin_deadline = time.monotonic() + (60 if monitor_state() is not None else 0)
    while time.monotonic() < rejoin_deadline:
        state = monitor_state() or {}
        node = state.get("nodes", {}).get(target, {})
        if node.get("status") == "up" and node.get("role") in ("backup", "primary"):
            report.rejoined_as = node["role"]
            break
        time.sleep(0.2)
    # Timeline from the monitor's events, relative to the fault.
    state = monitor_state() or {}
    timeline: dict[str, float | None] = {"fault_injected": 0.0}
    for event in state.get("events", []):
        rel = event["at"] - wall_fault
        if rel < -0.5:
            continue
        if event["kind"] == "probe_failed" and event["node"] == target:
            timeline.setdefault("first_failed_probe", rel)
        elif event["kind"] == "node_down" and event["node"] == target:
            timeline.setdefault("marked_down", rel)
        elif event["kind"] == "switchover" and event["node"] == standby:
            timeline.setdefault("switchover", rel)
        elif event["kind"] == "upstream_rewritten" and "upstream_rewritten" not in timeline and rel >= 0:
            timeline["upstream_rewritten"] = rel - (event["data"].get("reload_s") or 0) - (event["data"].get("live_s") or 0)
            timeline["reload_done"] = rel
        elif event["kind"] == "node_up" and event["node"] == target and event["at"] >= restore_at:
            timeline.setdefault("rejoined", rel)
    standby_addr = address(standby)
    ok_after = [s for s in samples if s.at >= 0 and s.status == 200 and s.upstream.endswith(standby_addr)]
    timeline["first_success_on_standby"] = min((s.at + s.latency_s for s in ok_after), default=None)
    timeline["node_restored"] = restore_at - wall_fault
    report.timeline = timeline
    report.samples = sorted(samples, key=lambda s: s.at)
    report.requests = len(samples)
    report.failures = dict(Counter(str(s.status or "connection") for s in samples if s.status != 200))
    report.retried_by_gateway = sum(1 for s in samples if "," in s.upstream)
    windows = {
        "before": [s for s in samples if s.at < 0],
        "during": [s for s in samples if 0 <= s.at < 5],
        "after": [s for s in samples if s.at >= 5],
    }
    report.latency_ms = {
        name: {"p50": 1000 * _pct([s.latency_s for s in group], 0.5), "p99": 1000 * _pct([s.latency_s for s in group], 0.99),
               "max": 1000 * max((s.latency_s for s in group), default=float("nan")), "n": len(group)}
        for name, group in windows.items()
    }
    # RTO: from the fault to the last failed request (0 when none failed),
    # or to the first success on the standby, whichever is later.
    failed_after = [s.at + s.latency_s for s in samples if s.at >= 0 and s.status != 200]
    first_ok = timeline["first_success_on_standby"]
    report.rto_s = max([0.0, *failed_after, first_ok or 0.0]) if (first_ok is not None or failed_after) else None
    # RPO: acknowledged audio that cannot be fetched any more.
    for audio_id in seeded:
        status, _, _ = gw.request("GET", f"/v1/audio/{audio_id}.wav")
        if status != 200:
            report.lost_ids.append(audio_id)
    report.rpo_files = len(report.lost_ids)
    if report.failed > drill.max_failed_requests:
        report.missed.append(f"failed requests {report.failed} > {drill.max_failed_requests}")
    if report.rto_s is None or report.rto_s > drill.max_rto:
        report.missed.append(f"RTO {report.rto_s if report.rto_s is not None else 'unknown'} s > {drill.max_rto} s")
    if report.rpo_files > drill.max_rpo_files:
        report.missed.append(f"RPO {report.rpo_files} files > {drill.max_rpo_files}")
    if report.rejoined_as is None:
        report.missed.append(f"{target} did not rejoin as standby within 60 s")
    return report


def read_state(path: Path) -> dict | None:
    """The monitor's state file, or None."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class DrillPlan:
    target: str
    standby: str
    gateway: str
    fault: Fault
    settings: DrillConfig

    def describe(self) -> list[str]:
        s = self.settings
        return [
            f"drill: {self.fault.kind} of the primary {self.target}; {self.standby} should take over",
            f"traffic: {s.rate:g} requests/s for {s.duration:g} s through {self.gateway} "
            f"(70 % cache hits, 30 % new texts), the fault after {max(2.0, s.duration * 0.25):g} s",
            *self.fault.describe(),
            f"then wait for {self.target} to rejoin as standby, and fetch the audio acknowledged before the fault",
            f"objectives: failed requests <= {s.max_failed_requests}, RTO <= {s.max_rto:g} s, "
            f"RPO <= {s.max_rpo_files} files",
        ]


def prepare(config: Config, fault: str, settings: DrillConfig | None = None) -> DrillPlan:
    """Check the pair can be drilled and work out what to do; raises :class:`Refused`."""
    from . import failover
    from .monitor import control
    from .nginx import gateway_url

    if not control.monitor_running(config.monitor.control_socket):
        raise Refused("no monitor runs on this host (nothing would fail over); run the drill on the gateway "
                      "with 'ttsha monitor' running")
    target = failover.current_primary(config)
    if target is None:
        raise Refused("no primary: the monitor has not chosen one yet (see 'ttsha status')")
    health = failover.node_health(config, target)
    if not health or health.get("status") != "ready":
        raise Refused(f"refusing to drill: the primary {target} is not healthy "
                      f"({(health or {}).get('status') or 'no answer'})")
    standbys = sorted(
        (n for n in config.nodes if n != target),
        key=lambda n: -config.nodes[n].priority,
    )
    ready = [n for n in standbys if (failover.node_health(config, n) or {}).get("status") == "ready"]
    if not ready:
        raise Refused(f"refusing to drill: no standby is healthy ({', '.join(standbys) or 'none configured'})")
    pid = health.get("pid") if isinstance(health.get("pid"), int) else None
    return DrillPlan(target, ready[0], gateway_url(config.nginx), Fault(config, target, fault, pid),
                     settings or config.drill)


def execute(config: Config, plan: DrillPlan) -> DrillReport:
    """Run a prepared drill and record it in the failover history."""
    from . import failover

    try:
        plan.fault.preflight()
        report = run_drill(config, plan.gateway, plan.target, plan.standby, plan.fault.inject, plan.fault.restore,
                           plan.fault.kind, lambda: read_state(config.monitor.state_file), plan.settings)
    finally:
        plan.fault.close()
    failover.record(config, {"kind": "drill", "fault": report.fault, "target": report.target,
                             "requests": report.requests, "failed": report.failed, "rto_s": report.rto_s,
                             "rpo_files": report.rpo_files, "missed": report.missed})
    return report
