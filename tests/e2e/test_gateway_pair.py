"""The gateway pair end to end (issue 17): two gateway hosts, each in its own
network namespace with a real Nginx, ``ttsha monitor`` and keepalived (track
script ``ttsha keepalived check``, notify ``ttsha keepalived notify``), in
front of two nodes; an outside client (standard library only) in the LAN
namespace calls the virtual IP while a gateway is killed, then while the
other one's Nginx is frozen. The network is the lab's
(:class:`ttsha.lab.pair.GatewayNet`) on a LAN namespace this test makes and
removes. ``ttsha lab up --gateways 2`` is tested in test_lab_gateways.py;
this test watches the nodes' role claims (epochs) through both moves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ttsha import keepalived
from ttsha.config import parse, to_toml
from ttsha.nginx import render_main, render_site, render_upstream
from ttsha.protocol import generate_secret

from ..monitor.conftest import need, need_root
from ..test_keepalived_pair import SUBNET, VIP, Pair, _wait

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("ttsha")
CLIENT = Path(__file__).with_name("outside_client.py")
NODES = {"a": f"{SUBNET}.21", "b": f"{SUBNET}.22"}
NODE_PORT, GATEWAY_PORT = 8900, 8080


class StackPair(Pair):
    """Pair's namespaces plus nodes on the LAN and a whole ttsha gateway on each side."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.nginx = need("nginx", "nginx")
        self.secret = root / "monitor.secret"
        generate_secret(self.secret)
        self.configs: dict[str, Path] = {}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.gateway_procs: dict[str, subprocess.Popen] = {}

    def in_lan(self, *argv: str) -> list[str]:
        return [self.ip, "netns", "exec", self.lan, *argv]

    def start_nodes(self) -> None:
        for name, host in NODES.items():
            self.net.add_address(host)
            proc = subprocess.Popen(
                self.in_lan(sys.executable, "-m", "tests.server.fake_node", host, str(NODE_PORT),
                            str(self.root / f"store-{name}"), str(self.secret), name, "64"),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            self.nodes[name] = proc

    def config_for(self, name: str) -> Path:
        home = self.root / name
        home.mkdir(exist_ok=True)
        prefix = home / "nginx"
        nginx = [self.nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        config = parse({
            "nodes": {n: {"url": f"http://{h}:{NODE_PORT}", "priority": 200 if n == "a" else 100}
                      for n, h in NODES.items()},
            # Nodes' gray failures are other tests' subject: no slow-probe rule here, where four
            # Python servers share two cores with the clients.
            "monitor": {"interval": "200ms", "fast_interval": "50ms", "fall": 2, "rise": 2, "slow_probe": "0",
                        "read_timeout": "1s",
                        "state_file": str(home / "monitor.json"), "control_socket": str(home / "monitor.sock"),
                        "secret_file": str(self.secret), "gateway_id": name},
            "nginx": {"listen": f"0.0.0.0:{GATEWAY_PORT}", "upstream_file": str(prefix / "ttsha-upstream.conf"),
                      "site_file": str(prefix / "ttsha-site.conf"), "test_command": [*nginx, "-t", "-q"],
                      "reload_command": [*nginx, "-s", "reload"]},
            "vrrp": {"vip": f"{VIP}/24", "interface": "eth0", "advert_interval": "200ms", "router_id": 78,
                     "check_interval": "1s"},
            "gateways": {"gw-a": {"address": self.addr["gw-a"], "priority": 150},
                         "gw-b": {"address": self.addr["gw-b"], "priority": 100}},
        })
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
            (prefix / "tmp" / sub).chmod(0o1777)  # Nginx's workers run as nobody
        (prefix / "nginx.conf").write_text(render_main(config, prefix))
        (prefix / "ttsha-site.conf").write_text(render_site(config))
        (prefix / "ttsha-upstream.conf").write_text(render_upstream(config.nodes, {"a": "primary", "b": "backup"}))
        path = home / "ttsha.toml"
        path.write_text(to_toml(config))
        self.configs[name] = path
        return path

    def start_gateway(self, name: str) -> None:
        """Nginx and the monitor, then keepalived (as the systemd drop-in orders them)."""
        path = self.configs.get(name) or self.config_for(name)
        prefix = path.parent / "nginx"
        ns = self.ns[name]
        self.run(self.ip, "link", "set", "eth0", "up", ns=ns)
        self.run(self.nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), ns=ns)
        log = open(path.parent / "monitor.log", "ab")
        self.gateway_procs[name] = subprocess.Popen(
            [self.ip, "netns", "exec", ns, str(EXE), "--config", str(path), "monitor"], stdout=log,
            stderr=subprocess.STDOUT)
        assert _wait(lambda: (path.parent / "monitor.sock").exists(), 30) is not None, "monitor did not start"
        config = parse_file(path)
        self.start(name, keepalived.render(config, name, ttsha_bin=str(EXE), config_path=path))

    def nginx_pids(self, name: str) -> list[int]:
        prefix = self.configs[name].parent / "nginx"
        master = int((prefix / "nginx.pid").read_text())
        children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        return [master, *map(int, children)]

    def kill_gateway(self, name: str) -> None:
        """Power loss of a gateway host: its keepalived, Nginx and monitor SIGKILLed, its link down."""
        for pid in self.nginx_pids(name):
            os.kill(pid, signal.SIGKILL)
        self.gateway_procs.pop(name).kill()
        (self.configs[name].parent / "nginx" / "nginx.pid").unlink(missing_ok=True)
        self.kill(name)

    def health(self, node: str) -> dict:
        out = subprocess.run(self.in_lan(sys.executable, "-m", "tests.e2e.node_watch", str(self.secret),
                                         f"{node}=http://{NODES[node]}:{NODE_PORT}"),
                             capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
        return json.loads(out)

    def watch(self, seconds: float) -> subprocess.Popen:
        nodes = ",".join(f"{n}=http://{h}:{NODE_PORT}" for n, h in NODES.items())
        return subprocess.Popen(self.in_lan(sys.executable, "-m", "tests.e2e.node_watch", str(self.secret), nodes,
                                            str(seconds), str(self.root / "watch.jsonl")), cwd=ROOT)

    def down(self) -> None:
        for name in list(self.gateway_procs):
            try:
                for pid in self.nginx_pids(name):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            self.gateway_procs.pop(name).kill()
        for proc in self.nodes.values():
            proc.kill()
        super().down()


def parse_file(path: Path):
    from ttsha.config import load

    return load(path)


@pytest.fixture
def stack():
    need_root("network namespaces need root")
    need("keepalived", "keepalived")
    root = Path("/run") / f"ttsha-e2e-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    s = StackPair(root)
    try:
        s.up()
        s.start_nodes()
        yield s
    finally:
        s.down()
        if os.environ.get("TTSHA_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)


def run_traffic(stack: StackPair, seconds: float, name: str) -> subprocess.Popen:
    return subprocess.Popen(stack.in_lan(sys.executable, str(CLIENT), "traffic", f"http://{VIP}:{GATEWAY_PORT}",
                                         str(seconds), "10", str(stack.root / f"{name}.json")))


def test_a_gateway_dies_then_the_other_freezes_and_clients_and_nodes_never_notice(stack):
    stack.start_gateway("gw-a")
    assert _wait(lambda: stack.holders() == ["gw-a"], 20) is not None, stack.holders()
    stack.start_gateway("gw-b")
    assert _wait(lambda: [stack.health(n).get("role_gateway") for n in NODES] == ["gw-a", "gw-a"], 20) is not None
    watch = stack.watch(40)
    figures: dict[str, float | int | None] = {}

    # 1. The holder loses power under load.
    traffic = run_traffic(stack, 10, "kill")
    time.sleep(3)  # traffic flows through gw-a first
    killed_at = time.time()
    stack.kill_gateway("gw-a")
    moved = _wait(lambda: stack.holders() == ["gw-b"], 10)
    moved_at = time.time()
    assert moved is not None, stack.holders()
    figures["vip_move_after_kill_s"] = round(moved, 3)
    assert traffic.wait(60) == 0
    results = json.loads((stack.root / "kill.json").read_text())
    after = [r for r in results if r["at"] > moved_at]
    figures.update(kill_requests=len(results), kill_failed=sum(r["status"] != 200 for r in results),
                   kill_failed_after_move=sum(r["status"] != 200 for r in after),
                   kill_slowest_s=round(max(r["latency_s"] for r in results), 3))
    assert len(after) >= 10 and figures["kill_failed_after_move"] == 0, [r for r in after if r["status"] != 200]
    # Only requests started before the move may fail (their TCP peer vanished).
    assert all(r["at"] < moved_at for r in results if r["status"] != 200)
    wait = _wait(lambda: [stack.health(n).get("role_gateway") for n in NODES] == ["gw-b", "gw-b"], 10)
    assert wait is not None, "the new holder did not take the role authority"
    assert [stack.health(n)["role"] for n in NODES] == ["primary", "backup"]  # the primary did not change

    # 2. gw-a comes back (nopreempt: the address stays), then gw-b's Nginx freezes.
    stack.start_gateway("gw-a")
    assert _wait(lambda: stack.holders() != ["gw-b"], 3) is None, stack.holders()
    traffic = run_traffic(stack, 12, "freeze")
    time.sleep(3)
    frozen = stack.nginx_pids("gw-b")
    frozen_at = time.time()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        moved = _wait(lambda: stack.holders() == ["gw-a"], 15)
        moved_at = time.time()
        assert moved is not None, stack.holders()
        figures["vip_move_after_freeze_s"] = round(moved, 3)
        assert traffic.wait(60) == 0
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    results = json.loads((stack.root / "freeze.json").read_text())
    after = [r for r in results if r["at"] > moved_at]
    figures.update(freeze_requests=len(results), freeze_failed=sum(r["status"] != 200 for r in results),
                   freeze_failed_after_move=sum(r["status"] != 200 for r in after),
                   freeze_slowest_after_move_s=round(max(r["latency_s"] for r in after), 3))
    assert len(after) >= 10 and figures["freeze_failed_after_move"] == 0
    # Requests sent to the frozen Nginx before the move fail: its kernel accepted them, and the
    # client waits for an answer until its own timeout (15 s here). Reported, not yet solved
    # (issue 17): resetting those connections from the deposed gateway once the address has
    # left does not reach the clients.
    stuck = [r for r in results if r["status"] != 200]
    figures["freeze_failed_slowest_s"] = round(max((r["latency_s"] for r in stuck), default=0.0), 3)
    assert all(r["at"] < moved_at for r in stuck), stuck
    watch.wait(60)

    # The nodes: the primary never changed, and no node took a role from gw-a again once gw-b led.
    samples = [json.loads(line) for line in (stack.root / "watch.jsonl").read_text().splitlines() if line]
    for node in NODES:
        mine = [s for s in samples if s["node"] == node and s["gateway"]]
        assert {s["role"] for s in mine} == {"primary" if node == "a" else "backup"}
        leaders = [s["gateway"] for s in mine]
        switches = [(x, y) for x, y in zip(leaders, leaders[1:], strict=False) if x != y]
        assert switches == [("gw-a", "gw-b"), ("gw-b", "gw-a")], switches  # one per VIP move, never back and forth
        epochs = [s["epoch"] for s in mine]
        assert epochs == sorted(epochs)
    notes = (stack.root / "gw-b" / "monitor.json").read_text()
    assert "vip_takeover" in notes
    print(json.dumps({"killed_at": killed_at, "frozen_at": frozen_at, **figures}))
