"""Failover drills: real traffic through the gateway, a real fault, a measured report.

:func:`prepare` finds the primary and a healthy standby (or refuses), the
fault to inject (:mod:`ttsha.faults`: locally or over SSH) and the traffic
(seed, mix, concurrency, rate or load). :func:`execute` measures the node's
capacity when a load is asked for, then calls :func:`run_drill`: it seeds
audio, runs the traffic (:mod:`.client`) through the gateway, injects the
fault on the primary, restores the node, waits for it to rejoin and fetches
the audio acknowledged before the fault. The numbers come from
:mod:`.stats`, the verdict from :mod:`.judge`. Run it on the gateway host,
where the monitor runs.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import history
from ..config import Config, DrillConfig, Duration
from ..errors import Refused, TTSHAError, UsageError
from ..faults import FAULTS, Fault
from ..monitor import statefile
from ..monitor.statefile import MonitorState, StateFileError
from . import stats
from .client import Capacity, Gateway, Traffic, load_api_key, measure_capacity
from .judge import Objectives, Outcome, judge
from .stats import Sample
from .timeline import timeline as failover_timeline
from .traffic import HOT_TEXTS, Mix, new_seed, rate_for_load, schedule, seeded_text

log = logging.getLogger(__name__)

#: Audio acknowledged before the fault and never requested again (RPO).
SEEDED_FILES = 8
#: How long a load level's capacity measurement runs.
CAPACITY_SECONDS = 5.0
#: Rates a drill accepts (requests per second), as ``[drill] rate``.
MIN_RATE, MAX_RATE = 0.1, 1000.0
#: How long after the last request is due the traffic stops taking new ones.
SEND_GRACE_S = 0.25
#: How long the drill waits for the restored node to rejoin.
REJOIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TrafficSettings:
    """The traffic of one drill, resolved before it starts."""

    seed: int
    duration: float
    rate: float  # requests per second, all kinds
    concurrency: int
    mix: Mix = field(default_factory=Mix)
    load: float | None = None  # the fraction of capacity asked for, if any
    capacity: Capacity | None = None
    min_before: float = 2.0  # seconds of traffic before the fault, at least

    @property
    def fault_after(self) -> float:
        """The fault comes a quarter into the run, after at least ``min_before`` seconds."""
        return max(self.min_before, self.duration * 0.25)

    def describe(self) -> str:
        how = (f"{self.load:g} x measured capacity" if self.load is not None and self.capacity is None
               else f"{self.rate:.1f} requests/s")
        if self.capacity is not None:
            how += f" ({self.load:g} x {self.capacity.rps:.1f} new texts/s measured)"
        return (f"{how} for {self.duration:g} s with {self.concurrency} clients ({self.mix.describe()}), "
                f"seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "duration_s": self.duration, "rate": round(self.rate, 3),
                "concurrency": self.concurrency, "mix": self.mix.to_dict(), "load": self.load,
                "capacity": self.capacity.to_dict() if self.capacity else None}


@dataclass
class DrillReport:
    fault: str
    target: str
    standby: str
    objectives: dict[str, Any]
    traffic: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, float | None] = field(default_factory=dict)
    requests: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    failures_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    retried_by_gateway: int = 0
    resumed_with_range: int = 0  # bodies cut mid-way (a node died while sending) that a Range request completed
    new_cached: int = 0
    late_requests: int = 0
    unsent: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    slowest: list[dict[str, Any]] = field(default_factory=list)
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

    @property
    def max_latency_s(self) -> float:
        """The slowest request, counted from when it was due."""
        return max((s.waited_s for s in self.samples), default=math.nan)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["samples"]
        return {**data, "failed": self.failed, "passed": not self.missed}


def node_names(config: Config) -> dict[str, str]:
    """host:port as Nginx names it in X-Upstream (``[nodes.X] address`` honoured) -> node name."""
    from ..nginx import node_address

    return {node_address(node): name for name, node in config.nodes.items()}


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
    traffic: TrafficSettings | None = None,
    api_key: str | None = None,
) -> DrillReport:
    """Run one drill; see the module docstring. ``api_key``: see :func:`drill_api_key`."""
    drill = drill or config.drill
    traffic = traffic or TrafficSettings(new_seed(), float(drill.duration), drill.rate, drill.concurrency,
                                         mix_of(drill))
    names = node_names(config)
    addresses = {name: address for address, name in names.items()}
    # Clients wait longer than Nginx does: a request stuck on a frozen node is
    # retried by Nginx after proxy_read_timeout, and the report shows it as slow.
    gw = Gateway(gateway_url, timeout=config.nginx.proxy_read_timeout + 15, api_key=api_key)
    objectives = Objectives.from_config(drill)
    report = DrillReport(fault, target, standby, objectives.to_dict(), traffic.to_dict())
    seeded = _seed_audio(gw, traffic.seed)
    plan = schedule(traffic.rate, traffic.duration, traffic.mix, random.Random(traffic.seed))
    load = Traffic(gw, plan, traffic.seed, traffic.concurrency, acknowledged=seeded)
    load.start()
    fault_at = load.started_at + traffic.fault_after
    time.sleep(max(0.0, fault_at - time.monotonic()))
    fault_at, wall_fault = time.monotonic(), time.time()
    inject_s = 0.0
    restore_error = None
    try:
        inject()
        # Zero of every figure is when the fault is in effect, not when the drill
        # set out to inject it: an SSH session and a helper on a busy node took
        # inject_s (seconds, under load), which are the drill's, not the failover's.
        inject_s = time.monotonic() - fault_at
        fault_at, wall_fault = fault_at + inject_s, wall_fault + inject_s
        log.info("fault %s injected on %s (%.2f s to inject)", fault, target, inject_s)
        # Sleep until the last request is due (and a moment for it to go out),
        # then stop: what was not sent by then is counted as unsent.
        threading.Event().wait(max(0.0, load.end_time + SEND_GRACE_S - time.monotonic()))
    finally:
        # Whatever happens (an error, Ctrl-C), the node is given back.
        load.stop()
        restore_at = time.time()
        try:
            restore()
        except TTSHAError as exc:
            log.error("could not restore %s: %s", target, exc)
            restore_error = str(exc)
        if not load.join(gw.timeout + 10):
            log.warning("some drill requests were still running after %.0f s", gw.timeout + 10)
    report.rejoined_as = _wait_rejoined(monitor_state, target)
    state = _view(monitor_state)
    samples = sorted((_shift(s, fault_at) for s in list(load.samples)), key=lambda s: s.at)
    timeline = failover_timeline(state.event_dicts() if state else [], wall_fault, restore_at, target, standby,
                                 inject_s)
    timeline["inject_started"] = -round(inject_s, 3)
    timeline["first_success_on_standby"] = stats.first_success_on(samples, addresses[standby])
    report.timeline = timeline
    report.samples = samples
    report.requests = len(samples)
    report.kinds = stats.kinds(samples)
    report.failures = stats.failures(samples)
    report.failures_by_kind = stats.failures_by_kind(samples)
    report.retried_by_gateway = sum(1 for s in samples if s.retried)
    report.resumed_with_range = sum(1 for s in samples if s.resumed)
    report.new_cached = stats.new_cached(samples)
    report.late_requests = sum(1 for s in samples if s.lag_s >= stats.LATE_S)
    report.unsent = load.unsent
    report.latency_ms = stats.latency_table(samples)
    report.slowest = stats.slowest(samples, names, concurrency=load.concurrency)
    report.rto_s = stats.rto(samples, timeline["first_success_on_standby"])
    report.lost_ids = [audio_id for audio_id in seeded if not _fetchable(gw, audio_id)]
    report.rpo_files = len(report.lost_ids)
    report.missed = judge(
        Outcome(target, report.failed, report.rto_s, report.rpo_files, report.max_latency_s,
                report.latency_ms["during"]["p99"] / 1000, report.rejoined_as, restore_error, report.unsent,
                len(plan)),
        objectives,
    )
    return report


def _seed_audio(gw: Gateway, seed: int) -> list[str]:
    """Audio acknowledged before the fault (it must stay fetchable); the hot texts made hot."""
    ids = []
    for i in range(1, SEEDED_FILES + 1):
        try:
            resp = gw.synthesize(seeded_text(seed, i))
        except OSError as exc:
            raise TTSHAError(f"the gateway did not answer before the fault: {exc}") from None
        if resp.status == 200 and resp.headers.get("x-audio-id"):
            ids.append(resp.headers["x-audio-id"])
    if not ids:
        raise TTSHAError("the gateway acknowledged no audio before the fault; is the pair healthy?")
    for text in HOT_TEXTS:  # hot texts are cache hits, from the first drill on
        try:
            gw.synthesize(text)
        except OSError:
            pass  # the traffic will show it
    return ids


def _fetchable(gw: Gateway, audio_id: str) -> bool:
    try:
        return gw.fetch(audio_id).status == 200
    except OSError:
        return False


def _shift(sample: Sample, fault_at: float) -> Sample:
    sample.at -= fault_at
    return sample


def _wait_rejoined(monitor_state: Callable[[], dict | None], target: str) -> str | None:
    """The role the restored node got back from the monitor (None: not within the timeout, or no monitor)."""
    deadline = time.monotonic() + (REJOIN_TIMEOUT_S if monitor_state() is not None else 0)
    while True:
        state = _view(monitor_state)
        node = state.nodes.get(target) if state else None
        if node and node.status == "up" and node.role in ("backup", "primary"):
            return node.role
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def read_state(path: Path) -> dict | None:
    """The monitor's state file as its raw document (what :func:`run_drill` is
    given), or None; read by :mod:`ttsha.monitor.statefile`."""
    state = statefile.read(path)
    return state.raw if state else None


def _view(monitor_state: Callable[[], dict | None]) -> MonitorState | None:
    """What ``monitor_state`` returns, typed (None: no state, or not the monitor's document)."""
    doc = monitor_state()
    try:
        return None if doc is None else MonitorState.from_json(doc)
    except StateFileError:
        return None


def mix_of(drill: DrillConfig) -> Mix:
    return Mix(drill.mix_new, drill.mix_hot, drill.mix_fetch)


@dataclass(frozen=True)
class DrillOptions:
    """What the command line may change for one drill (None: from ``[drill]``)."""

    fault: str | None = None
    duration: float | None = None
    rate: float | None = None
    load: float | None = None
    concurrency: int | None = None
    seed: int | None = None
    mix: Mix | None = None

    def check(self) -> None:
        if self.rate is not None and self.load is not None:
            raise UsageError("give --rate or --load, not both")
        if self.rate is not None and not MIN_RATE <= self.rate <= MAX_RATE:
            raise UsageError(f"--rate must be between {MIN_RATE:g} and {MAX_RATE:g} requests per second")
        if self.load is not None and not 0 < self.load <= 2:
            raise UsageError("--load must be above 0 and at most 2 (a fraction of the measured capacity)")
        if self.concurrency is not None and not 1 <= self.concurrency <= 256:
            raise UsageError("--concurrency must be between 1 and 256")
        if self.duration is not None and not 1 <= self.duration <= 86400:
            raise UsageError("--duration must be between 1 s and 1 d")
        if self.seed is not None and not 0 <= self.seed < 10**9:
            raise UsageError("--seed must be between 0 and 999999999")
        if self.fault is not None and self.fault not in FAULTS:
            raise UsageError(f"unknown fault {self.fault!r}; one of {', '.join(FAULTS)}")


@dataclass
class DrillPlan:
    target: str
    standby: str
    gateway: str
    fault: Fault
    settings: DrillConfig
    traffic: TrafficSettings
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr or a log

    def describe(self) -> list[str]:
        t = self.traffic
        return [
            f"drill: {self.fault.kind} of the primary, node {self.target}; node {self.standby} should take over",
            *([f"first: {CAPACITY_SECONDS:g} s of new texts back to back with {t.concurrency} clients through "
               f"{self.gateway} to measure capacity"] if t.load is not None else []),
            f"traffic: {t.describe()} through {self.gateway}; the fault after {t.fault_after:g} s",
            *self.fault.describe(),
            f"then wait for {self.target} to rejoin as standby, and fetch the audio acknowledged before the fault",
            f"objectives: {Objectives.from_config(self.settings).describe()}",
        ]


def resolve(drill: DrillConfig, options: DrillOptions) -> tuple[DrillConfig, TrafficSettings]:
    """``[drill]`` with the command line's changes, and the traffic they ask for.

    An explicit rate wins over ``[drill] load``; a new seed unless one is given.
    """
    options.check()
    if options.duration is not None:
        drill = replace(drill, duration=Duration(options.duration))
    if options.rate is not None:
        load = None
    else:
        load = options.load if options.load is not None else (drill.load or None)
    traffic = TrafficSettings(
        seed=options.seed if options.seed is not None else new_seed(),
        duration=float(drill.duration),
        rate=options.rate if options.rate is not None else drill.rate,
        concurrency=options.concurrency or drill.concurrency,
        mix=options.mix or mix_of(drill),
        load=load,
    )
    return drill, traffic


def prepare(config: Config, options: DrillOptions | None = None, gateway: str | None = None) -> DrillPlan:
    """Check the pair can be drilled and work out what to do; raises :class:`Refused`.

    ``gateway``: the URL the clients call (default: this host's Nginx; the lab's pair gives its virtual IP).
    """
    from .. import failover
    from ..monitor import control
    from ..nginx import gateway_url

    options = options or DrillOptions()
    settings, traffic = resolve(config.drill, options)
    api_key = drill_api_key(config)
    if not control.monitor_running(config.monitor.control_socket):
        raise Refused("no monitor runs on this host (nothing would fail over); run the drill on the gateway "
                      "with 'ttsha monitor' running")
    target = failover.current_primary(config)
    if target is None:
        raise Refused("no primary: the monitor has not chosen one yet (see 'ttsha status')")
    health = failover.node_state(config, target)
    if not health or not health.ready:
        raise Refused(f"refusing to drill: the primary, node {target}, is not healthy "
                      f"({health.status if health else 'no answer'})")
    standbys = sorted(
        (n for n in config.nodes if n != target),
        key=lambda n: -config.nodes[n].priority,
    )
    ready = [n for n in standbys if (state := failover.node_state(config, n)) is not None and state.ready]
    if not ready:
        raise Refused(f"refusing to drill: no standby is healthy ({', '.join(standbys) or 'none configured'})")
    pid = health.pid
    fault = options.fault or settings.fault
    return DrillPlan(target, ready[0], gateway or gateway_url(config.nginx), Fault(config, target, fault, pid),
                     settings, traffic, api_key)


def drill_api_key(config: Config) -> str | None:
    """The key the drill's clients send (``[drill] api_key_file``), or None.

    Refuses a drill whose every request the gateway would answer 401: keys
    required (``[nginx] api_keys_file``) and none configured for the drill,
    or one the gateway's file (when readable here) does not hold.
    """
    from ..errors import ConfigError
    from ..nginx import load_api_keys

    key = load_api_key(config.drill.api_key_file)
    required = config.nginx.api_keys_file
    if required is None:
        return key
    if key is None:
        raise Refused("the gateway requires API keys ([nginx] api_keys_file): set [drill] api_key_file to a file "
                      "(mode 0600) holding one of them, with a rate above the drill's")
    try:
        known = load_api_keys(required, config.nginx.api_rate)
    except ConfigError:
        return key  # not readable on this host: the gateway is the judge
    if not any(k.key == key for k in known):
        raise Refused("the key in [drill] api_key_file is not one of [nginx] api_keys_file: the gateway would "
                      "answer every drill request 401 (add it there, then 'ttsha nginx render' and reload Nginx)")
    return key


def with_capacity(traffic: TrafficSettings, gateway_url: str, timeout: float,
                  seconds: float = CAPACITY_SECONDS, api_key: str | None = None) -> TrafficSettings:
    """``traffic`` with its rate set from a capacity measurement (unchanged without a load)."""
    if traffic.load is None:
        return traffic
    capacity = measure_capacity(Gateway(gateway_url, timeout, api_key=api_key), traffic.seed, traffic.concurrency,
                                seconds)
    rate = min(MAX_RATE, max(MIN_RATE, rate_for_load(traffic.load, capacity.rps, traffic.mix)))
    log.info("capacity %.2f new texts/s; drill rate %.2f requests/s", capacity.rps, rate)
    return replace(traffic, rate=rate, capacity=capacity)


def execute(config: Config, plan: DrillPlan) -> DrillReport:
    """Run a prepared drill and record it in the failover history."""

    try:
        plan.fault.preflight()
        traffic = with_capacity(plan.traffic, plan.gateway, config.nginx.proxy_read_timeout + 15,
                                api_key=plan.api_key)
        report = run_drill(config, plan.gateway, plan.target, plan.standby, plan.fault.inject, plan.fault.restore,
                           plan.fault.kind, lambda: read_state(config.monitor.state_file), plan.settings, traffic,
                           api_key=plan.api_key)
    finally:
        plan.fault.close()
    slowest = None if math.isnan(report.max_latency_s) else round(report.max_latency_s, 3)
    history.record(config, {"kind": "drill", "fault": report.fault, "target": report.target,
                             "seed": traffic.seed, "rate": round(traffic.rate, 3), "requests": report.requests,
                             "failed": report.failed, "max_latency_s": slowest,
                             "rto_s": report.rto_s, "rpo_files": report.rpo_files, "missed": report.missed})
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While in this block (in the main thread), SIGTERM raises KeyboardInterrupt, so a drill
    stopped from outside (systemd's TimeoutStartSec, kill) still restores what it broke."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: Config, options: DrillOptions | None = None, gateway: str | None = None) -> DrillReport:
    """Prepare and execute one drill: the one entry of ``failover --drill`` and ``lab drill``.

    A drill stopped from outside still gives the node back (:class:`sigterm_unwinds`).
    """
    plan = prepare(config, options, gateway)
    with sigterm_unwinds():
        return execute(config, plan)
