"""``ttsha monitor``: probe every node, decide, make Nginx follow, record.

One thread per node probes ``/health`` on its own interval (faster while the
node is changing state) and feeds results into the main loop, which runs the
:class:`~ttsha.monitor.state.Decider`, applies its roles through the single
Nginx code path, writes the state file ``ttsha status`` reads, and alerts.

When a node is marked down, the monitor also *fences* it on the gateway host
once the reload is done: it destroys the gateway's TCP connections to the
node (``ss -K``, SOCK_DESTROY). Nginx then sees an upstream error on every
request still waiting on that node, before any byte reached the client, and
``proxy_next_upstream error`` retries it on the standby at once, rather than
after ``proxy_read_timeout`` (60 s) on a frozen or isolated node.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import httpclient, systemd
from ..alert import Alert, Alerter
from ..config import Config, models_source
from ..fsutil import atomic_write
from ..nginx import NginxError, UpstreamController, node_address
from ..protocol import DOWN, PRIMARY, Health, HealthError, default_gateway_id, load_secret, sign_claim
from .authority import AddressEvents, Authority
from .control import ControlServer, GatewayLock, lock_path
from .state import Decider, Event, moved

log = logging.getLogger(__name__)

#: Probe intervals vary by this fraction either way (uniformly: the mean stays the interval).
PROBE_JITTER = 0.5
#: How long after markdown each failed probe of the node fences it again.
REFENCE_S = 10.0

MAX_EVENTS = 200


@dataclass
class Command:
    """A control-socket request, handled by the main loop like a probe result."""

    request: dict[str, Any]
    reply: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1))


@dataclass(frozen=True)
class Probe:
    node: str
    ok: bool
    at: float
    latency_ms: float | None
    info: dict[str, Any] | None
    error: str = ""


def probe(url: str, connect_timeout: float, read_timeout: float,
          claim: dict[str, str] | None = None, slow_after: float = 0.0) -> tuple[bool, dict[str, Any] | None, str]:
    """One ``GET /health``: (eligible, body, reason). ``claim`` (signed
    headers, see :mod:`ttsha.protocol`) tells the node what it is in the live
    upstream (its replicator acts on it). An answer slower than ``slow_after``
    seconds (0: no limit) is a failure: ``/health`` answers from memory, so a
    node that takes that long is stalling (a gray failure) even while it answers."""
    # An answer later than slow_after fails the probe anyway: no point waiting longer for it.
    reply = httpclient.get(url.rstrip("/") + "/health", headers=claim, connect_timeout=connect_timeout,
                           timeout=min(read_timeout, slow_after) if slow_after else read_timeout, limit=65536)
    if reply.error:
        if reply.timed_out and reply.connected and slow_after and slow_after < read_timeout:
            return False, None, f"slow: no answer within {1000 * slow_after:.0f} ms"
        return False, None, reply.error
    try:
        health = Health.from_json(reply.json())
    except HealthError as exc:
        return False, None, f"HTTP {reply.status}, {'not JSON' if reply.json() is None else exc}"
    if slow_after and reply.elapsed > slow_after:
        return False, health.raw, \
            f"slow: /health took {1000 * reply.elapsed:.0f} ms (over {1000 * slow_after:.0f} ms)"
    if reply.status == 200 and health.ready:
        return True, health.raw, ""
    return False, health.raw, f"HTTP {reply.status} {health.status}"


def fence_commands(command: list[str], address: str) -> list[list[str]]:
    """``command`` with ``{host}``/``{port}`` filled in, once per IP address of ``address`` (host:port).

    Only addresses parsed by :mod:`ipaddress` and an integer port reach the
    argv; IPv6 addresses are bracketed, as ``ss`` wants them.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    try:
        ips = {str(ipaddress.ip_address(host))}
    except ValueError:
        ips = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    argvs = []
    for ip in sorted(ips):
        shown = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
        argvs.append([arg.replace("{host}", shown).replace("{port}", str(port)) for arg in command])
    return argvs


def fence(command: list[str], address: str, timeout: float = 5.0) -> int:
    """Destroy this host's connections to ``address``; how many. Raises OSError when it could not."""
    destroyed = 0
    for argv in fence_commands(command, address):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OSError(f"{argv[0]} timed out after {timeout:g} s") from None
        # ss exits 0 even when the kernel refused SOCK_DESTROY (no CAP_NET_ADMIN): read stderr.
        if proc.returncode != 0 or "not permitted" in proc.stderr.lower():
            raise OSError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
        destroyed += sum(1 for line in proc.stdout.splitlines() if line.strip())
    return destroyed


class Monitor:
    def __init__(self, config: Config, alerter: Alerter | None = None) -> None:
        self.config = config
        mc = config.monitor
        self.nginx = UpstreamController(config.nginx, config.nodes)
        self.decider = Decider(config.nodes, mc.mode, mc.fall, mc.rise, mc.failback,
                               primary=self.nginx.current_primary(), models_source=models_source(config))
        self.alerter = alerter or Alerter(config.alert)
        # Probe results and control commands: only the main loop touches the Decider.
        self.inbox: queue.Queue[Probe | Command] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.nginx_status: dict[str, Any] = {}
        self._stop = threading.Event()
        self._applied_roles: dict[str, str] | None = None
        self._last_state_write = 0.0
        self._replication: dict[str, Any] = {}
        self._fenced: dict[str, dict[str, Any]] = {}
        # Roles go to the nodes signed (ttsha.protocol); without a secret no node would believe them.
        self._secret = load_secret(mc.secret_file)
        self.gateway_id = mc.gateway_id or default_gateway_id()
        # Only the holder of the virtual IP tells the nodes their roles (ttsha.monitor.authority).
        self.authority = Authority(config.vrrp.vip, config.vrrp.interface or None,
                                   events=AddressEvents() if config.vrrp.vip else None)
        self._splits: set[tuple[str, int]] = set()
        if self._secret is None:
            log.warning("no [monitor] secret_file: nodes are not told their roles, so models = \"primary\" "
                        "sends from no node (see ttsha(1), SECURITY)")

    # -- probing ---------------------------------------------------------
    def _probe_loop(self, name: str) -> None:
        mc = self.config.monitor
        url = self.config.nodes[name].url
        while not self._stop.is_set():
            started = time.monotonic()
            applied = self._applied_roles  # replaced, never mutated: safe to read here
            role = applied.get(name) if applied and self.authority.holds else None
            epoch = self.authority.epoch
            try:
                claim = sign_claim(self._secret, role or "", name, self.gateway_id, epoch) if self._secret else None
                ok, info, error = probe(url, mc.connect_timeout, mc.read_timeout, claim, mc.slow_probe)
            except Exception as exc:  # a probe thread that dies leaves its node's state frozen
                log.exception("probe of %s failed unexpectedly; probing on", name)
                ok, info, error = False, None, f"{type(exc).__name__}: {exc}"
            latency = (time.monotonic() - started) * 1000
            self.inbox.put(Probe(name, ok, time.time(), latency, info, error))
            state = self.decider.states[name]
            base = mc.fast_interval if state.changing or not ok else mc.interval
            # Jittered by up to half: probes in step with a node that stalls
            # periodically (a duty-cycled CPU, a cron job) land in the same phase
            # of it. With a fifth, a probe that landed in the node's short awake
            # phase had even odds of landing in the next one too (a lab drill saw
            # 1.9-4.8 s of good probes from a node stalled 80 % of the time); with
            # half, the next probe's phase is spread over a whole period.
            interval = base * (1.0 + random.uniform(-PROBE_JITTER, PROBE_JITTER))
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    # -- decisions -------------------------------------------------------
    def handle(self, result: Probe) -> list[Event]:
        if result.info is not None:
            self._replication[result.node] = result.info.get("replication")
        events = self.decider.observe(result.node, result.ok, result.at, result.info, result.latency_ms, result.error)
        events += self._follow_the_leader(result)
        for event in events:
            self._record(event)
        roles = self.decider.roles()
        applied = roles is not None and roles != self._applied_roles
        if roles is not None and applied:
            self._apply(roles, result.at)
        elif not result.ok and self._refence_due(result.node):
            self._fence(result.node, again=True)
        if events or applied or time.monotonic() - self._last_state_write > 2.0:
            self.write_state()
        return events

    def _follow_the_leader(self, result: Probe) -> list[Event]:
        """Roles another gateway gave the nodes: follow them when that gateway
        leads (it holds the virtual IP and this one does not, or it took over
        later: a split, reported once per epoch), so both gateways route alike."""
        info = result.info or {}
        gateway, epoch, role = info.get("role_gateway"), info.get("role_epoch"), info.get("role")
        if not isinstance(gateway, str) or gateway == self.gateway_id or not isinstance(epoch, int):
            return []
        events: list[Event] = []
        if self.authority.holds:
            if epoch < self.authority.epoch:
                return []  # an earlier holder's claim: the node hears this gateway's next probe
            if (gateway, epoch) not in self._splits:
                self._splits.add((gateway, epoch))
                events.append(Event(
                    "split_brain", result.node, result.at,
                    f"node {result.node} follows gateway {gateway} (epoch {epoch}), which took over after this one "
                    f"(epoch {self.authority.epoch}): two gateways hold the roles; this one follows it",
                    {"gateway": gateway, "epoch": epoch, "mine": self.authority.epoch}))
        state = self.decider.states.get(result.node)
        if (role == PRIMARY and self.decider.mode == "active-standby" and self.decider.primary != result.node
                and state is not None and state.status == "up"):
            switched = self.decider.set_primary(result.node, result.at)
            events.append(Event("switchover", result.node, result.at,
                                f"{moved(switched.data['from'], result.node)}, following gateway {gateway} "
                                f"(epoch {epoch})", switched.data))
        return events

    def _check_authority(self, force: bool = False) -> None:
        change = self.authority.refresh(force)
        if change == "takeover":
            self._record(Event("vip_takeover", "*", time.time(),
                               f"holds {self.authority.vip}: tells the nodes their roles, epoch {self.authority.epoch}",
                               {"epoch": self.authority.epoch}))
        elif change == "released":
            self._record(Event("vip_released", "*", time.time(),
                               f"no longer holds {self.authority.vip}: follows the roles the nodes report"))
        if change:
            self.write_state()

    def _record(self, event: Event) -> None:
        entry = asdict(event)
        self.events.append(entry)
        del self.events[:-MAX_EVENTS]
        severity = {"node_down": "warning", "switchover": "warning", "all_down": "critical",
                    "model_mismatch": "warning", "fence_failed": "warning", "split_brain": "critical"}
        level = logging.INFO if event.kind in ("node_up", "probe_failed") else logging.WARNING
        log.log(level, "event=%s node=%s %s", event.kind, event.node, event.detail)
        if event.kind in severity:
            self.alerter.send(Alert(event.kind, f"{event.kind} {event.node}: {event.detail}", severity[event.kind],
                                    event.at))

    # -- control socket ----------------------------------------------------
    def control(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Called from a control connection's thread: queue, wait for the main loop's answer."""
        command = Command(request)
        self.inbox.put(command)
        try:
            return command.reply.get(timeout=timeout)
        except queue.Empty:
            return {"ok": False, "error": f"the monitor did not answer within {timeout:.0f} s"}

    def _command(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "primary": self.decider.primary, "pid": os.getpid()}
        if op == "authority":  # keepalived's notify hook: look at the address now
            self._check_authority(force=True)
            return {"ok": True, **self.authority.describe()}
        if op != "switchover":
            return {"ok": False, "error": f"unknown op {op!r}"}
        if not self.authority.holds:
            return {"ok": False, "error": f"this gateway does not hold the virtual IP {self.authority.vip}: run the "
                                          "switchover on the gateway that does (this one follows it)"}
        leaders = [(gw, ep) for gw, ep in self._splits if ep >= self.authority.epoch]
        if leaders:
            gw, ep = max(leaders, key=lambda pair: pair[1])
            return {"ok": False, "error": f"the nodes follow gateway {gw}, which took over after this one "
                                          f"(epoch {ep}): run the switchover there"}
        target = str(request.get("to", ""))
        old = self.decider.primary
        if target == old:
            return {"ok": True, "changed": False, "from": old, "to": target}
        now = time.time()
        try:
            event = self.decider.set_primary(target, now)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        self._record(event)
        roles = self.decider.roles()
        assert roles is not None  # set_primary accepted an up node, so there is a primary to route to
        if not self._apply(roles, now):
            self.decider.undo_switchover(old)
            self.write_state()
            return {"ok": False, "error": f"nginx refused the change: {self.nginx_status.get('error')}"}
        self.write_state()
        return {"ok": True, "changed": True, "from": old, "to": target, "nginx": self.nginx_status}

    def _apply(self, roles: dict[str, str], at: float) -> bool:
        started = time.time()
        try:
            result = self.nginx.apply(roles)
        except (NginxError, OSError) as exc:
            self.nginx_status = {"ok": False, "at": started, "error": str(exc), "roles": roles}
            self._record(Event("nginx_failed", "*", started, str(exc)))
            self.alerter.send(Alert("nginx_failed", f"nginx rejected the upstream change: {exc}", "critical", started))
            return False
        previous = self._applied_roles or {}
        self._applied_roles = roles
        if self.config.monitor.fence:
            for name, role in roles.items():
                if role == DOWN and previous.get(name, DOWN) != DOWN:
                    self._fence(name)
        self.nginx_status = {
            "ok": True,
            "at": started,
            "changed": result.changed,
            "test_s": round(result.test_s, 4),
            "reload_s": round(result.reload_s, 4),
            "live_s": None if result.live_s is None else round(result.live_s, 4),
            "roles": roles,
        }
        if result.changed:
            self._record(
                Event(
                    "upstream_rewritten",
                    self.decider.primary or "*",
                    time.time(),
                    ", ".join(f"{n}={r}" for n, r in roles.items()),
                    {"test_s": result.test_s, "reload_s": result.reload_s, "live_s": result.live_s,
                     "after_probe_s": started - at},
                )
            )
        return True

    def _refence_due(self, name: str) -> bool:
        """Whether a node marked down is fenced again on this failed probe.

        For :data:`REFENCE_S` after markdown: during a graceful reload the old
        Nginx workers may still accept a connection or two and send it to the
        node that is down, after the first fence ran.
        """
        if not self.config.monitor.fence or not self._applied_roles or self._applied_roles.get(name) != DOWN:
            return False
        first = self._fenced.get(name, {}).get("marked_at")
        return first is not None and time.time() - first < REFENCE_S

    def _fence(self, name: str, again: bool = False) -> None:
        """After the reload: cut the gateway's connections to a node marked down (never fatal)."""
        address = node_address(self.config.nodes[name])
        started = time.time()
        entry = self._fenced.setdefault(name, {"count": 0, "connections": 0, "failures": 0})
        if not again:
            entry["marked_at"] = started
        try:
            destroyed = fence(list(self.config.monitor.fence_command), address)
        except OSError as exc:
            if again:  # the markdown's own fence reported it already
                log.debug("fencing %s again failed: %s", address, exc)
                return
            entry.update(failures=entry["failures"] + 1, last_at=started, last_error=str(exc))
            self._record(Event("fence_failed", name, started, f"could not fence {address}: {exc}"))
            return
        took = time.time() - started
        entry.update(count=entry["count"] + 1, connections=entry["connections"] + destroyed, last_at=started,
                     last_error="")
        if again and not destroyed:
            return  # nothing had slipped through: no event for a quiet re-check
        self._record(Event("fenced", name, started, f"destroyed {destroyed} gateway connections to {address}",
                           {"connections": destroyed, "fence_s": round(took, 4)}))

    def write_state(self) -> None:
        self._last_state_write = time.monotonic()
        roles = self._applied_roles or {}
        nodes = {}
        for name, state in self.decider.states.items():
            nodes[name] = {
                "url": self.config.nodes[name].url,
                "address": node_address(self.config.nodes[name]),
                "status": state.status,
                "role": roles.get(name, "unknown"),
                "since": state.since,
                "last_probe_at": state.last_probe_at,
                "last_probe_ms": state.last_probe_ms,
                "last_error": state.last_error,
                "engine": state.engine,
                "model_version": state.model_version,
                "replication": self._replication.get(name),
                "fenced": self._fenced.get(name),
            }
        data = {
            "updated_at": time.time(),
            "mode": self.decider.mode,
            "primary": self.decider.primary,
            "all_down": self.decider.all_down,
            "nodes": nodes,
            "nginx": self.nginx_status,
            "gateway": {"id": self.gateway_id, **self.authority.describe()},
            "events": self.events,
        }
        try:
            atomic_write(Path(self.config.monitor.state_file), json.dumps(data, ensure_ascii=False, indent=1))
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self.config.monitor.state_file, exc)

    # -- daemon ----------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        mc = self.config.monitor
        # One controller of the upstream at a time (see monitor.control).
        lock = GatewayLock(lock_path(mc.control_socket)).acquire(timeout=30, purpose="ttsha monitor")
        control = ControlServer(mc.control_socket, self.control)
        control.start()
        threads = [
            threading.Thread(target=self._probe_loop, args=(name,), name=f"probe-{name}", daemon=True)
            for name in self.config.nodes
        ]
        for thread in threads:
            thread.start()
        systemd.ready(f"monitoring {len(threads)} nodes")
        log.info("monitoring %s", ", ".join(f"{n}={c.url}" for n, c in self.config.nodes.items()))
        interval = systemd.watchdog_interval()
        next_ping = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                item = None
            self._check_authority()
            if isinstance(item, Command):
                item.reply.put(self._command(item.request))
            elif item is not None:
                self.handle(item)
            if interval and time.monotonic() >= next_ping:
                # Pinged from the loop that does the work: a stuck loop stops the pings.
                systemd.watchdog_ping()
                next_ping = time.monotonic() + interval
        systemd.stopping()
        control.close()
        self.authority.close()
        self.write_state()
        lock.release()
        self.alerter.close(timeout=2)
        return 0

    def stop(self) -> None:
        self._stop.set()
