"""Gateway drills: traffic to the virtual IP while the gateway holding it is killed or frozen.

:func:`run_gateway_drill` sends the drill's traffic (:mod:`.client`) to the
virtual IP, injects a :class:`ttsha.faults.GatewayFault` on the holder,
watches the address move (``holders``, polled), restores the gateway and
reports: the time for the VIP to move, the time until a request sent after
the move was answered, the requests started before the move (in flight on,
or sent to, the faulted gateway: a client's connection to a dead host cannot
be saved) and after it (these must all succeed), counted apart, and the
primary node before and after (a gateway's fault must not change it).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import Refused, TTSHAError
from ..faults import GatewayFault
from . import stats
from .client import Gateway, Traffic
from .core import SEND_GRACE_S, TrafficSettings, _seed_audio
from .judge import GATEWAY_KILL_TARGET_S, GatewayOutcome, judge_gateway
from .stats import Sample
from .traffic import schedule

log = logging.getLogger(__name__)

#: The drill's clients give up on a request after this long: one sent to a dead or frozen
#: gateway is lost anyway, and a shorter wait keeps the clients free for the requests after it.
CLIENT_TIMEOUT_S = 10.0
#: At least this many clients, so that requests stuck on the faulted gateway do not hold back the next ones.
MIN_CONCURRENCY = 32
#: How often the drill looks where the virtual IP is.
POLL_S = 0.02


def bound_s(kind: str, check_interval: float) -> float:
    """How long after the fault the VIP may move and a new request be answered.

    A kill: keepalived's takeover (3 adverts + skew) within issue 17's 1.5 s.
    A freeze must first fail the track script twice in a row (each run every
    ``check_interval``, allowed twice that to answer), then the takeover.
    """
    if kind == "gateway-kill":
        return GATEWAY_KILL_TARGET_S
    return 4 * check_interval + GATEWAY_KILL_TARGET_S


@dataclass
class GatewayReport:
    fault: str
    target: str  # the gateway that held the VIP and was faulted
    took_over: str | None  # the gateway holding it after the move
    traffic: dict[str, Any] = field(default_factory=dict)
    vip_moved_s: float | None = None  # after the fault
    answered_s: float | None = None  # the first request sent after the move answered, after the fault
    bound_s: float = GATEWAY_KILL_TARGET_S
    requests: int = 0
    before_move: int = 0
    failed_before_move: int = 0
    after_move: int = 0
    failed_after_move: int = 0
    unsent: int = 0
    #: Why requests failed (status or error), before and after the move.
    failures_before_move: dict[str, int] = field(default_factory=dict)
    failures_after_move: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    primary_before: str | None = None
    primary_after: str | None = None
    missed: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return self.failed_before_move + self.failed_after_move

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["samples"]
        return {**data, "failed": self.failed, "passed": not self.missed}


def run_gateway_drill(gateway_url: str, fault: GatewayFault, holders: Callable[[], list[str]],
                      primary: Callable[[], str | None], traffic: TrafficSettings, check_interval: float,
                      api_key: str | None = None) -> GatewayReport:
    """Run one gateway drill; see the module docstring."""
    now = holders()
    if now != [fault.gateway]:
        raise Refused(f"refusing to drill: {fault.gateway} does not hold the virtual IP alone "
                      f"(holders: {', '.join(now) or 'none'})")
    report = GatewayReport(fault.kind, fault.gateway, None, traffic.to_dict(),
                           bound_s=bound_s(fault.kind, check_interval))
    report.primary_before = primary()
    gw = Gateway(gateway_url, timeout=CLIENT_TIMEOUT_S, api_key=api_key)
    seeded = _seed_audio(gw, traffic.seed)
    plan = schedule(traffic.rate, traffic.duration, traffic.mix, random.Random(traffic.seed))
    load = Traffic(gw, plan, traffic.seed, max(traffic.concurrency, MIN_CONCURRENCY), acknowledged=seeded)
    load.start()
    fault_at = load.started_at + traffic.fault_after
    time.sleep(max(0.0, fault_at - time.monotonic()))
    fault_at = time.monotonic()
    moved_at = None
    restore_error = None
    try:
        fault.inject()
        end = load.end_time + SEND_GRACE_S
        while time.monotonic() < end:
            if moved_at is None:
                where = holders()
                if len(where) == 1 and where[0] != fault.gateway:
                    moved_at, report.took_over = time.monotonic(), where[0]
                    log.info("the virtual IP moved to %s %.3f s after %s", where[0], moved_at - fault_at, fault.kind)
            threading.Event().wait(POLL_S if moved_at is None else max(0.0, end - time.monotonic()))
    finally:
        load.stop()
        try:
            fault.restore()
        except TTSHAError as exc:
            log.error("could not restore %s: %s", fault.gateway, exc)
            restore_error = str(exc)
        load.join(CLIENT_TIMEOUT_S + 10)
    report.primary_after = primary()
    samples = sorted((replace(s, at=s.at - fault_at) for s in list(load.samples)), key=lambda s: s.at)
    moved = None if moved_at is None else moved_at - fault_at
    report.vip_moved_s = None if moved is None else round(moved, 3)
    answered = stats.first_answer_after(samples, moved)
    report.answered_s = None if answered is None else round(answered, 3)
    for key, value in stats.around_move(samples, moved).items():
        setattr(report, key, value)
    cut = math.inf if moved is None else moved
    report.failures_before_move = stats.failures([x for x in samples if x.at < cut])
    report.failures_after_move = stats.failures([x for x in samples if x.at >= cut])
    report.samples = samples
    report.requests = len(samples)
    report.unsent = load.unsent
    report.latency_ms = stats.latency_table(samples)
    report.missed = judge_gateway(GatewayOutcome(
        fault.kind, fault.gateway, None if answered is None or math.isnan(answered) else answered, report.bound_s,
        report.failed_after_move, report.after_move, report.primary_before, report.primary_after, restore_error))
    return report
