"""Fencing: a request in flight on a frozen node is retried on the standby soon after markdown.

Real Nginx (60 s proxy_read_timeout, as shipped), real node processes, real
``ss -K`` on loopback.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import replace

from ttsha.monitor.daemon import fence_commands

from .conftest import need_root
from .test_gateway import start_monitor, wait_for


class InFlight:
    """One POST through the gateway in a thread: its status, upstreams and when it ended."""

    def __init__(self, port: int, text: str) -> None:
        self.port, self.text = port, text
        self.status: int | None = None
        self.upstream = ""
        self.ended: float | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=90)
        try:
            conn.request("POST", "/v1/synthesize", body=json.dumps({"text": self.text}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            self.status, self.upstream = resp.status, resp.getheader("X-Upstream") or ""
        except OSError as exc:
            self.status, self.upstream = 0, str(exc)
        finally:
            conn.close()
            self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _need_root() -> None:
    need_root("fencing needs root (CAP_NET_ADMIN for SOCK_DESTROY)")


def _freeze_with_a_request_in_flight(config, nodes, gateway, monitor):
    wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
    nodes["a"].kill(signal.SIGSTOP)
    request = InFlight(gateway.port, f"冻结时在途的请求{time.monotonic_ns()}。")
    wait_for(lambda: monitor.decider.states["a"].status == "down", timeout=10, what="markdown of the frozen node")
    return request, time.monotonic()


def test_a_request_in_flight_on_a_frozen_node_is_retried_on_the_standby_after_markdown(pair):
    _need_root()
    config, nodes, gateway = pair
    monitor, thread = start_monitor(config)
    try:
        request, marked_down = _freeze_with_a_request_in_flight(config, nodes, gateway, monitor)
        request.join(15)
        assert request.status == 200, request.upstream
        # Tried on the frozen node first, then on the standby (two upstream addresses).
        assert request.upstream.count(",") == 1 and request.upstream.endswith(f"{nodes['b'].host}:{nodes['b'].port}")
        # Within ~1-2 s of markdown, not after the 60 s read timeout.
        print(f"retried on the standby {request.ended - marked_down:.3f} s after markdown, "
              f"{request.ended - request.started:.3f} s after it was sent")
        assert request.ended - marked_down < 3.0, request.ended - marked_down
        state = json.loads(config.monitor.state_file.read_text())
        assert state["nodes"]["a"]["fenced"]["count"] == 1
        assert state["nodes"]["a"]["fenced"]["connections"] >= 1
        assert any(e["kind"] == "fenced" and e["node"] == "a" for e in state["events"])
    finally:
        monitor.stop()
        thread.join(10)


def test_without_fencing_the_request_waits_for_the_read_timeout(pair):
    """The control: the same freeze with fence = false leaves the request stuck on the frozen node."""
    config, nodes, gateway = pair
    config = replace(config, monitor=replace(config.monitor, fence=False))
    monitor, thread = start_monitor(config)
    try:
        request, marked_down = _freeze_with_a_request_in_flight(config, nodes, gateway, monitor)
        request.join(3.0)
        assert request.ended is None  # still waiting, 3 s after markdown (proxy_read_timeout is 60 s)
        nodes["a"].kill(signal.SIGCONT)  # let it finish
        request.join(15)
        assert request.status == 200
    finally:
        monitor.stop()
        thread.join(10)


def test_fence_failure_is_logged_not_fatal(pair):
    config, nodes, gateway = pair
    config = replace(config, monitor=replace(config.monitor, fence_command=["false"]))
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
        nodes["a"].kill()
        wait_for(lambda: any(e["kind"] == "fence_failed" for e in monitor.events), what="fence_failed event")
        assert monitor.decider.primary == "b" and thread.is_alive()
        monitor.write_state()
        state = json.loads(config.monitor.state_file.read_text())
        assert state["nodes"]["a"]["fenced"]["failures"] == 1
    finally:
        monitor.stop()
        thread.join(10)


def test_fence_commands_fill_in_only_parsed_addresses():
    command = ["ss", "-K", "dst", "{host}", "dport", "=", "{port}"]
    assert fence_commands(command, "127.0.0.2:8900") == [["ss", "-K", "dst", "127.0.0.2", "dport", "=", "8900"]]
    assert fence_commands(command, "[::1]:80") == [["ss", "-K", "dst", "[::1]", "dport", "=", "80"]]
    assert fence_commands(command, "localhost:8900")[0][3] in ("127.0.0.1", "[::1]")


def test_the_monitor_unit_may_fence():
    """SOCK_DESTROY needs CAP_NET_ADMIN, and ss talks to the kernel over netlink."""
    from .conftest import ROOT

    unit = (ROOT / "systemd" / "ttsha-monitor.service").read_text()
    caps = next(line for line in unit.splitlines() if line.startswith("CapabilityBoundingSet="))
    families = next(line for line in unit.splitlines() if line.startswith("RestrictAddressFamilies="))
    assert "CAP_NET_ADMIN" in caps.split("=", 1)[1].split()
    assert "AF_NETLINK" in families.split("=", 1)[1].split()


def test_a_node_marked_down_is_fenced_again_on_each_failed_probe_for_a_while(pair, tmp_path):
    """Old Nginx workers of a graceful reload may still send a connection to the node after the first fence."""
    config, nodes, gateway = pair
    calls = tmp_path / "fence-calls"
    config = replace(config, monitor=replace(config.monitor, fence_command=["sh", "-c", f"echo x >> {calls}"]))
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
        nodes["a"].kill()
        wait_for(lambda: monitor.decider.primary == "b", what="switchover")
        wait_for(lambda: calls.exists() and len(calls.read_text().split()) >= 3, timeout=5,
                 what="the node fenced again by later failed probes")
        assert [e["kind"] for e in monitor.events].count("fenced") == 1  # quiet re-checks: no event each time
    finally:
        monitor.stop()
        thread.join(10)
