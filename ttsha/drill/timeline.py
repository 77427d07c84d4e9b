"""The failover as the monitor recorded it, relative to the fault (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def timeline(events: Iterable[dict[str, Any]], wall_fault: float, restore_at: float, target: str,
             standby: str, injecting_s: float = 0.0) -> dict[str, float | None]:
    """The failover as the monitor recorded it, in seconds after the fault.

    ``wall_fault`` is when the fault was in effect; injecting it took
    ``injecting_s`` before that, during which it may already have been seen
    (those events come out negative). Events from before the injection began
    (beyond clock jitter) belong to an earlier story and are ignored;
    ``rejoined`` counts only after the node was restored.
    """
    out: dict[str, float | None] = {"fault_injected": 0.0}
    for event in events:
        try:
            at, kind, node = float(event["at"]), event["kind"], event.get("node")
        except (KeyError, TypeError, ValueError):
            continue
        rel = at - wall_fault
        if rel < -0.5 - injecting_s:
            continue
        if kind == "probe_failed" and node == target:
            out.setdefault("first_failed_probe", rel)
        elif kind == "node_down" and node == target:
            out.setdefault("marked_down", rel)
        elif kind == "switchover" and node == standby:
            out.setdefault("switchover", rel)
        elif kind == "upstream_rewritten" and "upstream_rewritten" not in out and rel >= 0:
            data = event.get("data") or {}
            out["upstream_rewritten"] = rel - (data.get("reload_s") or 0) - (data.get("live_s") or 0)
            out["reload_done"] = rel
        elif kind == "node_up" and node == target and at >= restore_at:
            out.setdefault("rejoined", rel)
    out["node_restored"] = restore_at - wall_fault
    return out
