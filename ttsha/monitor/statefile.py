"""The monitor's state file: written by the monitor's loop, read here, typed, by everyone else.

``ttsha status``, the drill (did the node rejoin? which events?) and the lab
read what :meth:`ttsha.monitor.daemon.Monitor.write_state` writes. The
document is checked once, where it is read; ``raw`` keeps it whole for
``ttsha status --json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TTSHAError


class StateFileError(TTSHAError):
    """The state file is missing, unreadable or not the monitor's document."""


@dataclass(frozen=True)
class NodeView:
    """One node as the monitor last saw it."""

    status: str  # up, down, unknown
    role: str = "unknown"
    since: float | None = None
    last_probe_ms: float | None = None
    last_error: str = ""
    engine: str = ""
    model_version: str = ""
    replication: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, name: str, doc: Any) -> NodeView:
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise StateFileError(f"node {name!r} has no 'status'")
        number = (int, float)
        rep = doc.get("replication")
        return cls(status=doc["status"], role=str(doc.get("role") or "unknown"),
                   since=float(doc["since"]) if isinstance(doc.get("since"), number) else None,
                   last_probe_ms=(float(doc["last_probe_ms"]) if isinstance(doc.get("last_probe_ms"), number)
                                  else None),
                   last_error=str(doc.get("last_error") or ""), engine=str(doc.get("engine") or ""),
                   model_version=str(doc.get("model_version") or ""),
                   replication=rep if isinstance(rep, dict) else None)


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    node: str
    detail: str


@dataclass(frozen=True)
class MonitorState:
    updated_at: float
    mode: str
    primary: str | None
    all_down: bool
    nodes: dict[str, NodeView]
    nginx: dict[str, Any]
    events: list[Event]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def nginx_ok(self) -> bool:
        return bool(self.nginx.get("ok"))

    def event_dicts(self) -> list[dict[str, Any]]:
        """The events as the drill's timeline reads them."""
        return [e for e in self.raw.get("events", []) if isinstance(e, dict)]

    @classmethod
    def from_json(cls, doc: Any) -> MonitorState:
        """The document, checked; raises :class:`StateFileError` naming what is wrong."""
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
            raise StateFileError("not a monitor state document (no 'nodes' table)")
        events = []
        for e in doc.get("events") or []:
            if not isinstance(e, dict) or not isinstance(e.get("at"), (int, float)):
                raise StateFileError(f"malformed event {e!r}")
            events.append(Event(float(e["at"]), str(e.get("kind", "")), str(e.get("node", "")),
                                str(e.get("detail", ""))))
        primary = doc.get("primary")
        nginx = doc.get("nginx")
        return cls(updated_at=float(doc.get("updated_at") or 0.0), mode=str(doc.get("mode") or ""),
                   primary=primary if isinstance(primary, str) and primary else None,
                   all_down=bool(doc.get("all_down")),
                   nodes={str(n): NodeView.from_json(str(n), v) for n, v in doc["nodes"].items()},
                   nginx=nginx if isinstance(nginx, dict) else {}, events=events, raw=doc)


def load(path: Path | str) -> MonitorState:
    """The state file; raises :class:`StateFileError` saying why it cannot be read."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateFileError(f"no monitor state at {path}: is 'ttsha monitor' running on this host?") from None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"cannot read the monitor state {path}: {exc}") from None
    try:
        return MonitorState.from_json(doc)
    except StateFileError as exc:
        raise StateFileError(f"cannot read the monitor state {path}: {exc}") from None


def read(path: Path | str) -> MonitorState | None:
    """:func:`load`, or None when there is no readable state (yet)."""
    try:
        return load(path)
    except StateFileError:
        return None
