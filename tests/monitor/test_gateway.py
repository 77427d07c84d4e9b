"""The monitor against a real Nginx and real node processes on loopback."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time

from ttsha.alert import Alerter
from ttsha.monitor.daemon import Monitor
from ttsha.nginx import NginxError, UpstreamController

from .conftest import BackgroundLoop


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Traffic(BackgroundLoop):
    """Bounded client load through the gateway: distinct texts, one at a time."""

    def __init__(self, port: int, limit: int = 2000, seconds: float = 30.0) -> None:
        self.port, self.limit, self.seconds = port, limit, seconds
        self.results: list[tuple[float, int, str]] = []
        super().__init__()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        i = 0
        while not self._stop.is_set() and i < self.limit and time.monotonic() < deadline:
            i += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("POST", "/v1/synthesize", body=json.dumps({"text": f"请求{i}号"}).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                self.results.append((time.monotonic(), resp.status, resp.getheader("X-Upstream") or ""))
                conn.close()
            except OSError as exc:
                self.results.append((time.monotonic(), 0, str(exc)))
            time.sleep(0.01)


def node_role(node, headers=None, port=None):
    """The role a node says the monitor gave it (its /health)."""
    conn = http.client.HTTPConnection(node.host if port is None else "127.0.0.1", port or node.port, timeout=5)
    conn.request("GET", "/health", headers=headers or {})
    role = json.loads(conn.getresponse().read()).get("role")
    conn.close()
    return role


def start_monitor(config):
    monitor = Monitor(config, alerter=Alerter(config.alert))
    thread = threading.Thread(target=monitor.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    return monitor, thread


def test_kill_primary_switches_nginx_with_no_failed_request(pair):
    config, nodes, gateway = pair
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
        # The probes tell each node its role (its replicator sends models only from the primary).
        wait_for(lambda: (node_role(nodes["a"]), node_role(nodes["b"])) == ("primary", "backup"), what="roles told")
        with Traffic(gateway.port) as traffic:
            wait_for(lambda: len(traffic.results) >= 20, what="traffic")
            killed_at = time.monotonic()
            nodes["a"].kill()  # kill -9
            wait_for(lambda: monitor.decider.primary == "b", timeout=5, what="switchover")
            switched_at = time.monotonic()
            wait_for(lambda: "# a: down" in config.nginx.upstream_file.read_text(), timeout=5, what="upstream rewrite")
            n = len(traffic.results)
            wait_for(lambda: len(traffic.results) >= n + 20, what="traffic after the switch")
        statuses = [status for _, status, _ in traffic.results]
        assert statuses.count(200) == len(statuses), f"failed requests: {[r for r in traffic.results if r[1] != 200]}"
        after = [up for t, _, up in traffic.results if t > switched_at + 0.2]
        assert after and all(up == f"{nodes['b'].host}:{nodes['b'].port}" for up in after)
        assert switched_at - killed_at < 2.0
        upstream = config.nginx.upstream_file.read_text()
        assert f"server {nodes['a'].host}:{nodes['a'].port} down;" in upstream
        assert f"server {nodes['b'].host}:{nodes['b'].port} max_fails=1" in upstream
        subprocess.run(config.nginx.test_command, check=True)  # what Nginx runs is valid

        # The old primary comes back: it rejoins as standby, no automatic failback.
        nodes["a"].start()
        wait_for(lambda: monitor.decider.states["a"].status == "up", what="a back up")
        wait_for(lambda: "# a: backup" in config.nginx.upstream_file.read_text(), what="a as backup")
        assert monitor.decider.primary == "b"
        wait_for(lambda: (node_role(nodes["a"]), node_role(nodes["b"])) == ("backup", "primary"), what="roles after")

        def state():
            return json.loads(config.monitor.state_file.read_text())

        wait_for(lambda: state()["nodes"]["a"]["role"] == "backup", what="state file")
        state = state()
        kinds = [e["kind"] for e in state["events"]]
        for kind in ("node_down", "switchover", "upstream_rewritten", "node_up"):
            assert kind in kinds
        assert state["nodes"]["b"]["role"] == "primary" and state["primary"] == "b"
        assert state["nginx"]["ok"] is True and state["nginx"]["live_s"] is not None

        # Only the monitor tells a node its role: the gateway drops the header
        # from client requests (checked with the monitor stopped, so no probe
        # could put the role back).
        monitor.stop()
        thread.join(5)
        node_role(nodes["b"], headers={"X-TTSHA-Role": "down"}, port=gateway.port)
        assert node_role(nodes["b"]) == "primary"
        # Direct, an unsigned role is ignored too (tests/security has the forged and replayed ones).
        assert node_role(nodes["b"], headers={"X-TTSHA-Role": "down"}) == "primary"
    finally:
        monitor.stop()
        thread.join(5)


def test_three_nodes_active_active_share_by_weight_and_a_dead_one_leaves_and_rejoins(trio_active):
    config, nodes, gateway = trio_active
    address = {name: f"{node.host}:{node.port}" for name, node in nodes.items()}
    upstream = config.nginx.upstream_file
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor._applied_roles == {"a": "active", "b": "active", "c": "active"}, what="all active")
        assert f"server {address['b']} weight=2 " in upstream.read_text()
        with Traffic(gateway.port, seconds=180) as traffic:
            wait_for(lambda: len(traffic.results) >= 60, timeout=60, what="traffic")
            served = [up for _, _, up in traffic.results]
            # Every healthy node serves; b, weighted 2, about half (Nginx's smooth weighted round robin).
            assert all(served.count(address[name]) > 0 for name in nodes), served
            assert served.count(address["b"]) > 0.3 * len(served), served
            nodes["c"].kill()  # kill -9 of one of three
            wait_for(lambda: "# c: down" in upstream.read_text(), timeout=5, what="c marked down")
            marked = time.monotonic()
            assert monitor.decider.roles() == {"a": "active", "b": "active", "c": "down"}
            # (0.5 s: the reload reaches Nginx's workers a moment after the file is rewritten)
            wait_for(lambda: sum(t > marked + 0.5 for t, _, _ in traffic.results) >= 20, timeout=60,
                     what="traffic without c")
            nodes["c"].start()
            wait_for(lambda: "# c: active" in upstream.read_text(), timeout=30, what="c rejoined")
            rejoined = time.monotonic()
            wait_for(lambda: address["c"] in [up for t, _, up in traffic.results if t > rejoined], timeout=30,
                     what="c serving again")
        failed = [r for r in traffic.results if r[1] != 200]
        assert not failed, f"failed requests: {failed}"
        away = [up for t, _, up in traffic.results if marked + 0.5 < t < rejoined]
        assert len(away) >= 20 and address["c"] not in away
        events = [(e["kind"], e["node"]) for e in json.loads(config.monitor.state_file.read_text())["events"]]
        assert ("node_down", "c") in events and ("node_up", "c") in events
    finally:
        monitor.stop()
        thread.join(5)


def test_three_nodes_active_standby_promote_the_next_by_priority(trio_standby):
    config, nodes, gateway = trio_standby
    address = {name: f"{node.host}:{node.port}" for name, node in nodes.items()}
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor._applied_roles == {"a": "primary", "b": "backup", "c": "backup"},
                 what="one primary, two backups")
        with Traffic(gateway.port) as traffic:
            wait_for(lambda: len(traffic.results) >= 20, what="traffic")
            nodes["a"].kill()
            wait_for(lambda: monitor._applied_roles == {"a": "down", "b": "primary", "c": "backup"}, timeout=5,
                     what="b (priority 200) promoted, c still backup")
            switched = time.monotonic()
            wait_for(lambda: sum(t > switched + 0.5 for t, _, _ in traffic.results) >= 20, timeout=30,
                     what="traffic after the switch")
        assert all(status == 200 for _, status, _ in traffic.results), traffic.results
        after = [up for t, _, up in traffic.results if t > switched + 0.5]
        # The new primary answers; c, a backup, only takes what Nginx retries (a busy node's 503 on this
        # loaded machine); the dead node never appears.
        assert after and not any(address["a"] in up for up in after), after
        assert sum(up == address["b"] for up in after) > len(after) / 2, after
        assert wait_for_roles(nodes, {"b": "primary", "c": "backup"})
    finally:
        monitor.stop()
        thread.join(5)


def wait_for_roles(nodes, roles) -> bool:
    wait_for(lambda: {name: node_role(nodes[name]) for name in roles} == roles, what=f"roles {roles}")
    return True


def test_starting_node_is_not_eligible(pair):
    """A frozen primary (SIGSTOP) stops answering probes and is taken out."""
    config, nodes, gateway = pair
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
        import signal

        nodes["a"].kill(signal.SIGSTOP)
        wait_for(lambda: monitor.decider.primary == "b", timeout=5, what="switchover from a frozen node")
        wait_for(lambda: monitor.nginx_status.get("live_s") is not None, timeout=5, what="reload confirmed")
        # Once the reload is live, new requests go to the standby at once.
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("X-Upstream") == f"{nodes['b'].host}:{nodes['b'].port}"
        nodes["a"].kill(signal.SIGCONT)
    finally:
        monitor.stop()
        thread.join(5)


def test_rejected_config_is_rolled_back(pair):
    config, nodes, gateway = pair
    before = config.nginx.upstream_file.read_text()
    broken = {name: node for name, node in config.nodes.items()}
    from dataclasses import replace

    broken["b"] = replace(broken["b"], address="127.0.0.3:99999")  # nginx -t: invalid port
    controller = UpstreamController(config.nginx, broken)
    try:
        controller.apply({"a": "down", "b": "primary"})
    except NginxError as exc:
        assert "nginx -t failed" in str(exc)
    else:
        raise AssertionError("nginx accepted an invalid port")
    assert config.nginx.upstream_file.read_text() == before
    subprocess.run(config.nginx.test_command, check=True)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200  # still serving on the previous config


def test_the_gateway_buffers_whole_results_but_passes_streams_through(tmp_path):
    """Nginx takes a stored result from the node at once; a stream reaches the client piece by piece."""
    from ttsha.config import Config, NginxConfig, NodeConfig
    from ttsha.nginx import PrivateGateway, render_upstream

    from ..server.conftest import SERVE, FakeEngine, Node
    from .conftest import free_port, need

    engine = FakeEngine()
    node = Node(engine, tmp_path / "store", SERVE)
    prefix = tmp_path / "gw"
    prefix.mkdir()
    config = Config(nodes={"a": NodeConfig(url=f"http://127.0.0.1:{node.port}")},
                    nginx=NginxConfig(listen=f"127.0.0.1:{free_port()}", upstream_file=prefix / "up.conf",
                                      site_file=prefix / "ttsha-site.conf"))
    (prefix / "up.conf").write_text(render_upstream(config.nodes, {"a": "primary"}))
    gateway = PrivateGateway(config, prefix, need("nginx", "nginx"))
    gateway.start()
    try:
        engine.permits = threading.Semaphore(1)  # only the first sentence may be synthesized
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.request("POST", "/v1/synthesize?stream=1", body=json.dumps({"text": "一。二。三。"}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("X-Accel-Buffering") is None  # Nginx consumed it
        piece, pause = 4000 * 2, int(0.3 * 16000) * 2
        first = resp.read(44 + piece + pause)  # through the gateway while sentences 2 and 3 are held back
        assert len(first) == 44 + piece + pause
        engine.permits.release(2)
        rest = resp.read()
        conn.close()
        assert len(rest) >= 2 * piece
        # A whole result is buffered: the node's answer carries no opt-out.
        engine.permits = None
        resp, data = node.client.synth(text="缓冲")
        assert resp.status == 200 and resp.getheader("X-Accel-Buffering") is None
    finally:
        gateway.stop()
        node.close()


def test_a_request_retried_on_the_other_node_keeps_its_first_arrival_stamp(tmp_path):
    """Nginx stamps X-Request-Start once: the node that gets the retry sees how long the request has waited."""
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ttsha.config import Config, NginxConfig, NodeConfig
    from ttsha.nginx import PrivateGateway, render_upstream
    from ttsha.protocol import ARRIVAL_HEADER

    from .conftest import free_port, need, reply_json

    hang_up_after = 0.4
    dying = socket.create_server(("127.0.0.1", 0))  # reads the request, then dies without answering

    def die_mid_request() -> None:
        while True:
            try:
                conn, _ = dying.accept()
            except OSError:
                return
            conn.recv(65536)
            time.sleep(hang_up_after)  # the node "synthesizes", then its process is gone
            conn.close()

    seen: list[tuple[str | None, float]] = []

    class Standby(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.headers.get(ARRIVAL_HEADER), time.time()))
            reply_json(self, {"ok": True})

        def log_message(self, *args):
            pass

    standby = ThreadingHTTPServer(("127.0.0.1", 0), Standby)
    threads = [threading.Thread(target=die_mid_request, daemon=True),
               threading.Thread(target=standby.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)]
    for thread in threads:
        thread.start()
    prefix = tmp_path / "gw"
    prefix.mkdir()
    config = Config(nodes={"a": NodeConfig(url=f"http://127.0.0.1:{dying.getsockname()[1]}", priority=200),
                           "b": NodeConfig(url=f"http://127.0.0.1:{standby.server_address[1]}", priority=100)},
                    nginx=NginxConfig(listen=f"127.0.0.1:{free_port()}", upstream_file=prefix / "up.conf",
                                      site_file=prefix / "ttsha-site.conf"))
    (prefix / "up.conf").write_text(render_upstream(config.nodes, {"a": "primary", "b": "backup"}))
    gateway = PrivateGateway(config, prefix, need("nginx", "nginx"))
    gateway.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        sent = time.time()
        # A client's own stamp is replaced by the gateway's.
        conn.request("POST", "/v1/synthesize", body=b'{"text": "x"}',
                     headers={"Content-Type": "application/json", ARRIVAL_HEADER: "t=1.000"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        conn.close()
    finally:
        gateway.stop()
        standby.shutdown()
        dying.close()
    (stamp, received), = seen
    assert stamp is not None and stamp.startswith("t=")
    arrived = float(stamp[2:])
    assert sent - 0.05 <= arrived  # the gateway's stamp, not the client's
    # Stamped when the request first went to the dying node, not when it was retried.
    assert received - arrived >= hang_up_after - 0.05, (received, arrived)
