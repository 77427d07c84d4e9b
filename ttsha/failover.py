"""Planned switchover (``ttsha failover --to NODE``).

:func:`plan` checks that the move is safe: the target answers ``ready``,
serves the same engine and model version as the current primary, and the
primary's replicator has nothing left to send (audio a client already holds
must be on the target). :func:`execute` then switches through the one path
that edits Nginx: the running monitor applies it (asked on its control
socket, so the two never fight), or, with no monitor, this process does
under the monitor's lock. Finally it checks through the gateway that fresh
requests reach the target, and records the event in the history file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import history, httpclient
from .config import Config
from .errors import PeerUnreachable, Refused, TTSHAError, UsageError
from .fsutil import atomic_write
from .monitor import control
from .monitor.state import node_label
from .nginx import BACKUP, DOWN, PRIMARY, NginxError, UpstreamController, gateway_url, node_address, render_upstream
from .protocol import Health

log = logging.getLogger(__name__)

#: A replicator state older than this is not evidence of anything.
REPLICATION_STATE_MAX_AGE_S = 15.0
#: serve caches the replicator's state for up to 1 s; plus the request's own time.
READING_MARGIN_S = 1.5


def get_json(url: str, timeout: float = 2.0,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET ``url``: (status, JSON body or {}, lower-case headers); status 0 when unreachable."""
    reply = httpclient.get(url, timeout=timeout, headers=headers)
    if reply.error.startswith("invalid url"):  # node URLs are checked at config load; one from elsewhere may not be
        raise UsageError(f"no host in URL {url!r}")
    if reply.error:
        return 0, {}, {}
    return reply.status, reply.json_object(), reply.headers


def node_health(config: Config, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The node's ``/health`` body (whatever its status), or None when it does not answer.

    Signed like the monitor's probes (ttsha.protocol), so that a node on
    another host shows its details (replication, pid) to this gateway tool.
    """
    from .protocol import default_gateway_id, load_secret, probe_headers

    claim = probe_headers(load_secret(config.monitor.secret_file), name,
                          config.monitor.gateway_id or default_gateway_id())
    status, body, _ = get_json(config.nodes[name].url.rstrip("/") + "/health", timeout, claim)
    return body if status else None


def node_state(config: Config, name: str, timeout: float = 2.0) -> Health | None:
    """:func:`node_health` as the typed document; None when it does not answer or answers no health document."""
    return Health.parse(node_health(config, name, timeout))


def current_primary(config: Config) -> str | None:
    """The primary as the running monitor sees it, else as the upstream file routes."""
    try:
        reply = control.call(config.monitor.control_socket, {"op": "ping"}, timeout=5)
        if reply.get("ok") and reply.get("primary"):
            return reply["primary"]
    except PeerUnreachable:
        pass
    return UpstreamController(config.nginx, config.nodes).current_primary()


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Plan:
    source: str | None
    target: str
    via: str  # "monitor" or "direct"
    checks: list[Check] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)
    force: bool = False

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def describe(self, config: Config) -> list[str]:
        how = "asking the running monitor" if self.via == "monitor" else "no monitor runs: directly, under its lock"
        lines = [f"move the primary role from {node_label(self.source)} to {node_label(self.target)} ({how})"]
        lines += [f"  [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append(f"  upstream {config.nginx.upstream_file} would route:")
        lines += ["    " + line.strip() for line in render_upstream(config.nodes, self.roles).splitlines()
                  if line.strip().startswith("server")]
        lines.append(f"  then check through {gateway_url(config.nginx)} that new requests reach "
                     f"{node_address(config.nodes[self.target])}")
        return lines


def _sent_since(rep: dict[str, Any], elapsed: float) -> bool:
    """Everything that was pending ``elapsed`` s ago has reached the peer: the
    oldest file still queued was queued after that (``oldest_pending_s`` is an
    age on the node's own clock, ``age_s`` how old that reading is)."""
    oldest = rep.get("oldest_pending_s")
    if not isinstance(oldest, (int, float)):
        return False
    age = rep.get("age_s") or 0.0
    return float(oldest) + float(age) + READING_MARGIN_S < elapsed


def _replication_caught_up(config: Config, source: str, wait: float, target: str | None = None) -> Check:
    """The source's replicator has a live link, has sent every file that was
    pending when the check began, and its acknowledgements are not degraded
    (waits up to ``wait`` s).

    Under steady traffic the queue is never empty for long: new results keep
    arriving while older ones are sent. A switchover needs what clients held
    *before* it was asked for; files written during the switch are still sent
    afterwards by the old primary's replicator (and, with ``[replicate] ack =
    "standby"``, were on the target before their clients got them).
    """
    started = time.monotonic()
    deadline = started + wait
    while True:
        health = node_health(config, source)
        rep = (health or {}).get("replication")
        if isinstance(rep, dict) and isinstance((rep.get("peers") or {}).get(target), dict):
            # With N nodes the source copies to each over a queue of its own: only the target's counts here.
            rep = {**rep, **rep["peers"][target]}
        if health is None:
            # A dead primary has nothing more to send; what it acknowledged is on the standby or lost either way.
            return Check("replication", True, f"node {source} does not answer: nothing more can be sent")
        if rep is None or "queue_depth" not in rep:  # serve reports its acknowledgements even without one
            detail = f"node {source} reports no replicator state (is ttsha-replicate running there?)"
        elif (rep.get("age_s") or 0) > REPLICATION_STATE_MAX_AGE_S:
            detail = f"node {source}'s replicator state is {rep.get('age_s')} s old (is it running?)"
        elif not rep.get("connected"):
            detail = f"node {source}'s replicator is not connected to its peer: {rep.get('last_error') or 'no link'}"
        elif rep.get("queue_depth") and not _sent_since(rep, time.monotonic() - started):
            detail = (f"node {source} still has {rep.get('queue_depth')} files to send"
                      + ("" if rep.get("oldest_pending_s") is None
                         else f", the oldest waiting {rep['oldest_pending_s']:.1f} s"))
        elif isinstance(rep.get("ack"), dict) and rep["ack"].get("state") == "degraded":
            # Results were answered without the standby's acknowledgement; the
            # node says when the standby holds them all again (see [replicate] ack).
            detail = (f"node {source}'s acknowledgements are degraded (replication: degraded): "
                      f"{rep['ack'].get('reason') or 'the standby has not confirmed recent results'}")
        else:
            lag = (rep.get("lag_s") or {}).get("p99")
            done = (f"node {source}'s queue is empty" if not rep.get("queue_depth") else
                    f"node {source} has sent every file pending when the check began "
                    f"({rep.get('queue_depth')} newer ones in flight)")
            return Check("replication", True, done + ("" if lag is None else f" (lag p99 {1000 * lag:.0f} ms)"))
        if time.monotonic() >= deadline:
            return Check("replication", False, detail)
        time.sleep(0.5)


def plan(config: Config, target: str, force: bool = False, wait: float = 10.0) -> Plan:
    """Check a switchover to ``target``; raises :class:`Refused` when unsafe (unless ``force``)."""
    if target not in config.nodes:
        raise UsageError(f"unknown node {target!r}; configured: {', '.join(config.nodes)}")
    if config.monitor.mode != "active-standby":
        raise UsageError('a switchover needs [monitor] mode = "active-standby"')
    via = "monitor" if control.monitor_running(config.monitor.control_socket) else "direct"
    source = current_primary(config)
    result = Plan(source, target, via, force=force)
    health = node_state(config, target)
    ready = health is not None and health.ready
    result.checks.append(Check("target healthy", ready, f"node {target} /health: "
                               + (health.status if health else "no answer")))
    if source and source != target:
        src = node_state(config, source)
        if src and health:
            same = (src.engine, src.model_version) == (health.engine, health.model_version)
            result.checks.append(Check("same model", same, f"node {source}: {src.engine} {src.model_version}, "
                                       f"node {target}: {health.engine} {health.model_version}"))
        else:  # name the node that did not answer (the target's silence fails "target healthy" already)
            silent = target if health is None else source
            result.checks.append(Check("same model", True, f"node {silent} does not answer; nothing to compare with"))
        result.checks.append(_replication_caught_up(config, source, wait, target))
    # The target leads; the others stay as standbys when healthy.
    for name in config.nodes:
        if name == target:
            result.roles[name] = PRIMARY
        else:
            other = node_state(config, name)
            result.roles[name] = BACKUP if other and other.ready else DOWN
    return result


@dataclass
class Outcome:
    source: str | None
    target: str
    via: str
    changed: bool
    seconds: float
    verified_s: float | None
    forced_past: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_through_gateway(config: Config, target: str, timeout: float = 10.0, streak: int = 5) -> float | None:
    """Seconds until ``streak`` fresh requests in a row reached ``target`` through the gateway."""
    url = gateway_url(config.nginx) + "/health"
    want = node_address(config.nodes[target])
    started = time.monotonic()
    run = 0
    while time.monotonic() - started < timeout:
        status, _, headers = get_json(url)
        if status == 200 and headers.get("x-upstream", "").split(",")[-1].strip() == want:
            run += 1
            if run >= streak:
                return time.monotonic() - started
        else:
            run = 0
        time.sleep(0.02)
    return None


def execute(config: Config, chosen: Plan) -> Outcome:
    """Carry out a checked :class:`Plan` (see the module docstring)."""
    if chosen.failed and not chosen.force:
        raise Refused("switchover refused: " + "; ".join(f"{c.name}: {c.detail}" for c in chosen.failed)
                      + " (--force to switch anyway)")
    started = time.monotonic()
    if chosen.source == chosen.target:
        return Outcome(chosen.source, chosen.target, chosen.via, False, 0.0, None)
    if chosen.via == "monitor":
        reply = control.call(config.monitor.control_socket, {"op": "switchover", "to": chosen.target}, timeout=60)
        if not reply.get("ok"):
            raise TTSHAError(f"the monitor did not switch: {reply.get('error')}")
        changed = bool(reply.get("changed"))
    else:
        lock = control.GatewayLock(control.lock_path(config.monitor.control_socket))
        with lock.acquire(timeout=5, purpose="ttsha failover"):
            try:
                changed = UpstreamController(config.nginx, config.nodes).apply(chosen.roles).changed
            except NginxError as exc:
                raise TTSHAError(f"switchover failed, previous routing kept: {exc}") from None
    verified = verify_through_gateway(config, chosen.target)
    outcome = Outcome(chosen.source, chosen.target, chosen.via, changed, time.monotonic() - started, verified,
                      [f"{c.name}: {c.detail}" for c in chosen.failed])
    history.record(config, {"kind": "switchover", **outcome.to_dict()})
    if verified is None:
        raise TTSHAError(f"switched to node {chosen.target}, but requests through {gateway_url(config.nginx)} "
                         f"do not reach it yet; check 'ttsha status' and the Nginx error log")
    return outcome


def save_report(path: Path, data: dict[str, Any]) -> None:
    atomic_write(Path(path), json.dumps(data, ensure_ascii=False, indent=2))
