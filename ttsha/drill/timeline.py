"""The failover as the monitor recorded it, relative to the fault (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def timeline(events: Iterable[dict[str, Any]], wall_fault: float, restore_at: float, target: str,
             standby: str) -> dict[str, float | None]:
    """The failover as the monitor recorded it, in seconds after the fault.

    Events from before the fault (beyond clock jitter) belong to an earlier
    story and are ignored; ``rejoined`` counts only after the node was restored.
    """
    out: dict[str, float | None] = {"fault_injected": 0.0}
    for event in events:
        try:
            at, kind, node = float(event["at"]), event["kind"], event.get("node")
        except (KeyError, TypeError, ValueError):
            continue
        rel = at - wall_fault
        if rel < -0.5:
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
