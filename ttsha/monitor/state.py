"""The monitor's decisions, as a pure state machine driven by probe results.

Nothing here sleeps, probes or touches Nginx: :class:`Decider` takes
``observe(node, ok, now, info)`` calls and answers with events and the roles
Nginx should use. Tests drive it with a fake clock.

Rules (HAProxy-style hysteresis):

* a node is DOWN after ``fall`` consecutive failed probes, or after
  ``fall + 1`` failures among its last ``2 * fall + 1`` probes (a node that
  stalls now and then, slow rather than dead, answers some probes between
  failures and would never fail ``fall`` in a row), and UP again after
  ``rise`` consecutive successes; a probe succeeds only when ``/health`` says
  ``ready`` (``starting`` and ``degraded`` are failures);
* a node that goes down again within :data:`FLAP_WINDOW_S` of coming up is
  flapping: each such time the successes it needs double (up to
  ``rise`` x 2^:data:`MAX_FLAP_DOUBLINGS`), so a node that is slow now and
  then stays out instead of costing a reload and a fence every few seconds;
  a stay of :data:`FLAP_WINDOW_S` up forgives it;
* active-standby, any number of nodes: at start, the primary of the existing
  routing keeps its role until probed; without one, the choice waits until
  every node has been heard from. The primary keeps its role while UP; every
  other UP node is a backup; when the primary goes DOWN the UP node with the
  highest priority takes over (ties: the first name). A recovered node
  rejoins as a backup: no automatic failback unless ``failback =
  "after:<duration>"``, which hands the role to the highest-priority node
  once it has been UP that long;
* active-active: every UP node serves (with its weight); a DOWN node leaves
  and rejoins after ``rise`` good probes;
* when every node is DOWN the last routing is kept (an alert says so): an
  empty upstream would fail every request, a stale one may still work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..config import NodeConfig, parse_duration
from ..nginx import ACTIVE, BACKUP, DOWN, PRIMARY

UNKNOWN, UP, DOWN_STATE = "unknown", "up", "down"

#: A node down again this soon after coming up counts as flapping.
FLAP_WINDOW_S = 30.0
#: The successes a flapping node needs double at most this many times.
MAX_FLAP_DOUBLINGS = 4


@dataclass
class NodeState:
    name: str
    priority: int
    status: str = UNKNOWN
    successes: int = 0
    failures: int = 0
    since: float = 0.0  # time of the last status change
    last_probe_at: float | None = None
    last_probe_ms: float | None = None
    last_error: str = ""
    engine: str = ""
    model_version: str = ""
    #: Outcomes of the latest probes (True: good), for the "most of the recent ones failed" rule.
    recent: deque[bool] = field(default_factory=deque)
    #: How many times in a row it went down soon after coming up (see FLAP_WINDOW_S).
    flaps: int = 0
    #: Its latest UP was a recovery from DOWN (not the first sight of it).
    recovered: bool = False

    @property
    def changing(self) -> bool:
        """True while a transition is pending (the monitor probes faster then).

        An UP node stays watched closely while any of its recent probes
        failed: a node that stalls now and then answers some probes between
        stalls, and at the slow interval those good answers would space out
        the failures that mark it down.
        """
        if self.status == UP:
            return self.failures > 0 or False in self.recent
        return self.successes > 0 or self.status == UNKNOWN


def node_label(name: str | None) -> str:
    """``node NAME`` or ``no node``: nodes may be named like roles (the lab's
    "primary" and "standby"), and "primary -> standby" would not say which."""
    return f"node {name}" if name else "no node"


def moved(old: str | None, new: str) -> str:
    """A switchover event's detail."""
    return f"{node_label(old)} -> {node_label(new)}"


@dataclass(frozen=True)
class Event:
    kind: str  # probe_failed, node_down, node_up, switchover, all_down, model_mismatch
    node: str
    at: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decider:
    nodes: dict[str, NodeConfig]
    mode: str = "active-standby"
    fall: int = 2
    rise: int = 3
    failback: str = "manual"
    primary: str | None = None
    #: active-active: the node whose model the others must serve ([replicate] models_source); None: the
    #: highest-priority node that is up.
    models_source: str | None = None
    states: dict[str, NodeState] = field(init=False)

    def __post_init__(self) -> None:
        self.states = {name: NodeState(name, node.priority) for name, node in self.nodes.items()}
        self._failback_after = (
            None if self.failback == "manual" else parse_duration(self.failback.split(":", 1)[1])
        )
        #: Node -> the model version last reported as differing from the primary's (once per node and version).
        self._mismatch_reported: dict[str, tuple[str, str]] = {}
        self._all_down = False
        #: Set by a planned switchover: automatic failback leaves this primary alone.
        self._pinned: str | None = None

    # -- input -----------------------------------------------------------
    def observe(self, name: str, ok: bool, now: float, info: dict[str, Any] | None = None,
                latency_ms: float | None = None, error: str = "") -> list[Event]:
        """Account one probe result; returns what changed."""
        state = self.states[name]
        state.last_probe_at, state.last_probe_ms = now, latency_ms
        state.recent.append(ok)
        while len(state.recent) > 2 * self.fall + 1:
            state.recent.popleft()
        events: list[Event] = []
        if ok:
            state.successes += 1
            state.failures = 0
            state.last_error = ""
            if info:
                state.engine = str(info.get("engine", state.engine))
                state.model_version = str(info.get("model_version", state.model_version))
            # A node seen for the first time serves after one good probe: the
            # monitor must not hold a healthy pair down for `rise` intervals at start.
            needed = 1 if state.status == UNKNOWN else self.rise * 2 ** min(state.flaps, MAX_FLAP_DOUBLINGS)
            if state.status != UP and state.successes >= needed:
                state.recovered = state.status == DOWN_STATE
                state.status, state.since = UP, now
                state.recent.clear()  # failures before the recovery say nothing about the node now
                events.append(Event("node_up", name, now, f"{state.successes} good probes"
                                    + (f" (flapping: {state.flaps} quick relapses)" if state.flaps else "")))
            elif state.status == UP and state.flaps and now - state.since >= FLAP_WINDOW_S:
                state.flaps = 0  # up long enough: forgiven
        else:
            state.failures += 1
            state.successes = 0
            state.last_error = error
            if state.status == UP and state.failures == 1:
                # The start of a possible outage: drill timelines measure from here.
                events.append(Event("probe_failed", name, now, error or "probe failed"))
            failed_recently = state.recent.count(False)
            if state.status != DOWN_STATE and (state.failures >= self.fall or failed_recently > self.fall):
                if state.status == UP:
                    quick = state.recovered and now - state.since < FLAP_WINDOW_S
                    state.flaps = state.flaps + 1 if quick else 0
                state.status, state.since = DOWN_STATE, now
                why = error or "probe failed"
                if state.failures < self.fall:
                    why += f" ({failed_recently} of the last {len(state.recent)} probes failed)"
                events.append(Event("node_down", name, now, why))
        events += self._decide(now)
        return events

    # -- decisions -------------------------------------------------------
    def _up(self) -> list[NodeState]:
        return sorted((s for s in self.states.values() if s.status == UP), key=lambda s: (-s.priority, s.name))

    def _decide(self, now: float) -> list[Event]:
        events: list[Event] = []
        up = self._up()
        if not up:
            if not self._all_down and any(s.status == DOWN_STATE for s in self.states.values()):
                self._all_down = True
                events.append(Event("all_down", "*", now, "every node is down; keeping the last routing"))
            return events
        self._all_down = False
        if self.mode == "active-standby":
            current = self.states.get(self.primary) if self.primary else None
            if current is None and any(s.status == UNKNOWN for s in self.states.values()):
                return events  # choose once every node has been heard from
            if current is not None and current.status == UNKNOWN:
                return events  # the primary in the existing routing keeps it until probed
            chosen = current if current is not None and current.status == UP else up[0]
            best = up[0]
            if (
                self._failback_after is not None
                and best is not chosen
                and chosen.name != self._pinned
                and best.priority > chosen.priority
                and now - best.since >= self._failback_after
            ):
                chosen = best
            if chosen.name != self.primary:
                old = self.primary
                self.primary = chosen.name
                self._pinned = None
                events.append(
                    Event("switchover", chosen.name, now, moved(old, chosen.name),
                          {"from": old, "to": chosen.name})
                )
        events += self._check_models(now)
        return events

    def _check_models(self, now: float) -> list[Event]:
        primary = self.states.get(self.primary) if self.primary else None
        what = "primary"
        if self.mode == "active-active":
            # No primary: every node serves, so all must match the node the others
            # copy their models from ([replicate] models_source).
            source = self.states.get(self.models_source) if self.models_source else None
            primary = source if source is not None and source.status == UP else next(iter(self._up()), None)
            what = "models source"
        if primary is None or not primary.model_version:
            return []
        events = []
        for state in self._up():
            if state is primary or not state.model_version:
                continue
            served = (state.engine, state.model_version)
            if served == (primary.engine, primary.model_version):
                self._mismatch_reported.pop(state.name, None)  # caught up: a later difference is news again
            elif self._mismatch_reported.get(state.name) != served:
                # Each node once per version: with three or more nodes, two that
                # differ must not take turns being reported on every probe.
                self._mismatch_reported[state.name] = served
                events.append(Event("model_mismatch", state.name, now,
                                    f"node {state.name} serves {state.engine} {state.model_version}, the {what}, "
                                    f"node {primary.name}, serves {primary.engine} {primary.model_version}"))
        return events

    @property
    def all_down(self) -> bool:
        return self._all_down

    def roles(self) -> dict[str, str] | None:
        """Node name -> Nginx role, or None when there is nothing safe to route to yet."""
        if self._all_down or (self.mode == "active-standby" and self.primary is None) or not self._up():
            return None
        up = {s.name for s in self._up()}
        if self.mode == "active-active":
            return {name: (ACTIVE if name in up else DOWN) for name in self.states}
        roles = {}
        for name, state in self.states.items():
            if name == self.primary:
                roles[name] = PRIMARY
            elif state.status == UP:
                roles[name] = BACKUP
            elif state.status == UNKNOWN:
                roles[name] = BACKUP  # not probed yet: harmless as a backup
            else:
                roles[name] = DOWN
        return roles

    def set_primary(self, name: str, now: float) -> Event:
        """A planned switchover (``ttsha failover --to``).

        The chosen node stays primary while it is UP, even with automatic
        failback: an admin moved traffic on purpose.
        """
        if name not in self.states:
            raise ValueError(f"{name} is not a configured node")
        if self.states[name].status != UP:
            raise ValueError(f"{name} is not up (the monitor sees it as {self.states[name].status})")
        if self.mode != "active-standby":
            raise ValueError("a switchover needs mode = \"active-standby\"")
        old, self.primary, self._pinned = self.primary, name, name
        return Event("switchover", name, now, f"{moved(old, name)} (manual)", {"from": old, "to": name})

    def undo_switchover(self, previous: str | None) -> None:
        """Put ``previous`` back after Nginx refused a planned switchover."""
        self.primary, self._pinned = previous, None
