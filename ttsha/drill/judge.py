"""Whether a drill met the objectives of ``[drill]``: a pure verdict on its numbers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..config import DrillConfig
from .stats import DURING_S


@dataclass(frozen=True)
class Objectives:
    max_failed_requests: int = 0
    max_rto_s: float = 2.0
    max_rpo_files: int = 0
    max_stall_s: float = 3.0
    max_p99_during_s: float = 2.0

    @classmethod
    def from_config(cls, drill: DrillConfig) -> Objectives:
        return cls(drill.max_failed_requests, float(drill.max_rto), drill.max_rpo_files, float(drill.max_stall),
                   float(drill.max_p99_during))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"failed requests <= {self.max_failed_requests}, RTO <= {self.max_rto_s:g} s, "
                f"RPO <= {self.max_rpo_files} files, slowest request <= {self.max_stall_s:g} s, "
                f"p99 in the {DURING_S:g} s after the fault <= {self.max_p99_during_s:g} s")


@dataclass(frozen=True)
class Outcome:
    """The numbers a verdict needs."""

    target: str
    failed: int
    rto_s: float | None
    rpo_files: int
    slowest_s: float  # NaN: no request completed
    p99_during_s: float  # NaN: no request in the window
    rejoined_as: str | None
    restore_error: str | None = None
    unsent: int = 0  # planned requests never sent: every client was stuck
    planned: int = 0


def judge(outcome: Outcome, objectives: Objectives) -> list[str]:
    """The objectives missed, each as a sentence (empty: all met)."""
    o, obj = outcome, objectives
    missed = []
    if o.restore_error:
        missed.append(f"restoring {o.target} failed: {o.restore_error}")
    if o.failed > obj.max_failed_requests:
        missed.append(f"failed requests {o.failed} > {obj.max_failed_requests}")
    if o.rto_s is None or o.rto_s > obj.max_rto_s:
        missed.append(f"RTO {'unknown' if o.rto_s is None else f'{o.rto_s:.3f}'} s > {obj.max_rto_s:g} s")
    if o.rpo_files > obj.max_rpo_files:
        missed.append(f"RPO {o.rpo_files} files > {obj.max_rpo_files}")
    if math.isnan(o.slowest_s):
        missed.append("no request completed")
    elif o.slowest_s > obj.max_stall_s:
        missed.append(f"slowest request {o.slowest_s:.3f} s > max_stall {obj.max_stall_s:g} s")
    if math.isnan(o.p99_during_s):
        missed.append(f"no request in the {DURING_S:g} s after the fault")
    elif o.p99_during_s > obj.max_p99_during_s:
        missed.append(f"p99 in the {DURING_S:g} s after the fault {o.p99_during_s:.3f} s > {obj.max_p99_during_s:g} s")
    if o.unsent:
        # Those requests would have waited too: the drill cannot vouch for them.
        missed.append(f"{o.unsent} of {o.planned} planned requests never sent: every client was stuck")
    if o.rejoined_as is None:
        missed.append(f"{o.target} did not rejoin as standby within 60 s")
    return missed


#: A killed gateway: the VIP moves and new requests are answered within this (issue 17's target).
GATEWAY_KILL_TARGET_S = 1.5


@dataclass(frozen=True)
class GatewayOutcome:
    """The numbers a gateway drill's verdict needs (times in seconds after the fault)."""

    fault: str
    gateway: str
    answered_s: float | None  # the first request started after the VIP moved was answered
    bound_s: float  # the most ``answered_s`` may be for this fault
    failed_after_move: int
    after_move: int
    primary_before: str | None
    primary_after: str | None
    restore_error: str | None = None


def judge_gateway(o: GatewayOutcome) -> list[str]:
    """The gateway objectives missed: the VIP moved and new requests were answered in time, every
    request started after the move succeeded, and the primary node stayed the same."""
    missed = []
    if o.restore_error:
        missed.append(f"restoring {o.gateway} failed: {o.restore_error}")
    if o.answered_s is None:
        missed.append("the virtual IP did not move, or no request sent after the move was answered")
    elif o.answered_s > o.bound_s:
        missed.append(f"VIP moved and a new request answered {o.answered_s:.3f} s after the fault > {o.bound_s:g} s")
    if o.after_move == 0:
        missed.append("no request was sent after the virtual IP moved")
    if o.failed_after_move:
        missed.append(f"{o.failed_after_move} of {o.after_move} requests started after the VIP moved failed")
    if o.primary_before is None or o.primary_before != o.primary_after:
        missed.append(f"the primary node changed: {o.primary_before or 'none'} -> {o.primary_after or 'none'}")
    return missed
