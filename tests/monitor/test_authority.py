"""Two gateways, one authority over the nodes' roles (issue 17, item 2).

Real node processes and two real Nginx gateways on loopback, each with its
own monitor. The virtual IP is seen through the :class:`Authority` seam (a
set of addresses the test changes), so no interface of the host is touched.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from ttsha import keepalived
from ttsha.monitor.authority import Authority, local_addresses
from ttsha.nginx import PrivateGateway, render_upstream

from .conftest import BackgroundLoop, free_port, need_root
from .test_gateway import start_monitor, wait_for

VIP = "192.0.2.100/24"


def test_authority_follows_the_address_and_its_epoch_only_grows():
    clock = [2000.0]
    held: set[str] = set()
    authority = Authority(VIP, addresses=lambda: set(held), clock=lambda: clock[0])
    assert not authority.holds and authority.epoch == 0
    assert authority.refresh(force=True) is None
    held.add("192.0.2.100")
    assert authority.refresh(force=True) == "takeover"
    assert authority.holds and authority.epoch == 2_000_000
    clock[0] += 5
    assert authority.refresh(force=True) is None and authority.epoch == 2_000_000  # the same tenure
    held.clear()
    assert authority.refresh(force=True) == "released" and not authority.holds
    clock[0] = 1000.0  # the clock stepped back: the next takeover still outranks the last
    held.add("192.0.2.100")
    assert authority.refresh(force=True) == "takeover" and authority.epoch == 2_000_001
    single = Authority("", clock=lambda: 3000.0)  # one gateway: it holds from the start
    assert single.holds and single.epoch == 3_000_000 and single.refresh(force=True) is None


def test_local_addresses_reads_the_real_interfaces():
    assert "127.0.0.1" in local_addresses("lo")


def health(node) -> dict:
    conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
    conn.request("GET", "/health")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def through(port: int) -> str:
    """Which node answered a request through the gateway on ``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return (resp.getheader("X-Upstream") or "").split(",")[-1].strip()


class Sampler(BackgroundLoop):
    """Reads both nodes' (role, gateway) every 20 ms, bounded."""

    def __init__(self, nodes, seconds: float = 60.0) -> None:
        self.nodes, self.seconds = nodes, seconds
        self.seen: dict[str, list[tuple[str, str]]] = {name: [] for name in nodes}
        super().__init__()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            for name, node in self.nodes.items():
                body = health(node)
                self.seen[name].append((body.get("role"), body.get("role_gateway")))
            time.sleep(0.02)


def second_gateway(config, tmp_path):
    """Another Nginx and monitor config for the same nodes (gateway id gw2)."""
    prefix = tmp_path / "gw2"
    prefix.mkdir()
    port = free_port()
    binary = config.nginx.test_command[0]
    config2 = replace(
        config,
        monitor=replace(config.monitor, gateway_id="gw2", state_file=tmp_path / "monitor2.json",
                        control_socket=tmp_path / "monitor2.sock"),
        nginx=replace(config.nginx, listen=f"127.0.0.1:{port}", upstream_file=prefix / "ttsha-upstream.conf",
                      site_file=prefix / "ttsha-site.conf",
                      test_command=[binary, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                      reload_command=[binary, "-s", "reload", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]),
    )
    gateway = PrivateGateway(config2, prefix, binary)
    gateway.write()
    (prefix / "ttsha-upstream.conf").write_text(render_upstream(config2.nodes, {"a": "primary", "b": "backup"}))
    gateway.start()
    return config2, gateway


def test_only_the_vip_holder_sets_roles_and_a_split_never_flips_a_node(pair, tmp_path):
    config, nodes, gateway = pair
    config1 = replace(config, monitor=replace(config.monitor, gateway_id="gw1"))
    config2, gateway2 = second_gateway(config, tmp_path)
    address = {name: f"{node.host}:{node.port}" for name, node in nodes.items()}
    held: set[str] = set()
    m1, t1 = start_monitor(config1)  # one gateway, no VIP: holds from its start
    m2 = None
    try:
        wait_for(lambda: [health(n).get("role_gateway") for n in nodes.values()] == ["gw1", "gw1"],
                 what="roles from gw1")
        # gw2 is in the pair but does not hold the address: it claims no role and routes as the nodes say.
        from ttsha.alert import Alerter
        from ttsha.monitor.daemon import Monitor

        m2 = Monitor(config2, alerter=Alerter(config2.alert))
        m2.authority = Authority(VIP, addresses=lambda: set(held))
        t2 = threading.Thread(target=m2.run, kwargs={"install_signals": False}, daemon=True)
        t2.start()
        wait_for(lambda: m2.decider.primary == "a" and m2._applied_roles, what="gw2 routes")
        refused = m2.control({"op": "switchover", "to": "b"})
        assert not refused["ok"] and "does not hold the virtual IP" in refused["error"]
        # A switchover on the holder reaches the other gateway's upstream through the nodes.
        assert m1.control({"op": "switchover", "to": "b"})["ok"]
        wait_for(lambda: health(nodes["b"])["role"] == "primary", what="b told it is primary")
        wait_for(lambda: m2.decider.primary == "b", what="gw2 follows")
        wait_for(lambda: through(gateway2.port) == address["b"], what="gw2's Nginx routes to b")
        assert through(gateway.port) == address["b"]
        assert [health(n).get("role_gateway") for n in nodes.values()] == ["gw1", "gw1"]  # gw2 never claimed
        assert not any(e["kind"] == "split_brain" for e in m1.events + m2.events)

        # gw2 takes the address while gw1 still believes it holds it (the two cannot see each other).
        with Sampler(nodes) as sampler:
            held.add("192.0.2.100")
            # keepalived's notify hook tells the monitor at once (it would look within 250 ms anyway).
            told = keepalived.tell_monitor(config2)
            assert told is not None and told["holds"] is True and told["epoch"] > m1.authority.epoch
            wait_for(lambda: [health(n).get("role_gateway") for n in nodes.values()] == ["gw2", "gw2"],
                     what="roles from gw2")
            assert any(e["kind"] == "vip_takeover" for e in m2.events)
            wait_for(lambda: any(e["kind"] == "split_brain" for e in m1.events), what="gw1 reports the split")
            refused = m1.control({"op": "switchover", "to": "a"})
            assert not refused["ok"] and "follow gateway gw2" in refused["error"]
            n = len(sampler.seen["a"])
            wait_for(lambda: len(sampler.seen["a"]) > n + 50, what="samples while both claim")
        for name, seen in sampler.seen.items():
            gateways = [gw for _, gw in seen]
            first = gateways.index("gw2")
            assert set(gateways[first:]) == {"gw2"}, f"{name} went back to gw1: {gateways}"
            assert {role for role, _ in seen} == {"primary" if name == "b" else "backup"}  # roles never flipped
        state = json.loads(config1.monitor.state_file.read_text())
        assert state["gateway"]["id"] == "gw1" and state["gateway"]["holds"] is True
    finally:
        m1.stop()
        t1.join(10)
        if m2 is not None:
            m2.stop()
        gateway2.stop()


def test_address_events_tell_the_monitor_when_to_look(tmp_path):
    """The kernel's rtnetlink messages, in a network namespace of the test's own (root only)."""
    import os
    import subprocess
    import sys
    import uuid

    from .conftest import need

    need_root("a network namespace needs root")
    ip = need("ip", "iproute2")
    ns = f"ttsha-t-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "watch.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "from ttsha.monitor.authority import AddressEvents, Authority\n"
        "ip = sys.argv[1]\n"
        "events = AddressEvents()\n"
        "assert events.available\n"
        "authority = Authority('198.51.100.7/24', 'lo', events=events)\n"
        "assert authority.refresh(force=True) is None and not authority.holds\n"
        "assert not events.pending()  # nothing changed yet\n"
        "subprocess.run([ip, 'addr', 'add', '198.51.100.7/32', 'dev', 'lo'], check=True)\n"
        "deadline = time.monotonic() + 5\n"
        "change = None\n"
        "while change is None and time.monotonic() < deadline:\n"
        "    change = authority.refresh()\n"
        "    time.sleep(0.01)\n"
        "assert change == 'takeover', change\n"
        "subprocess.run([ip, 'addr', 'del', '198.51.100.7/32', 'dev', 'lo'], check=True)\n"
        "deadline = time.monotonic() + 5\n"
        "change = None\n"
        "while change is None and time.monotonic() < deadline:\n"
        "    change = authority.refresh()\n"
        "    time.sleep(0.01)\n"
        "assert change == 'released', change\n"
        "authority.close()\n"
        "print('ok')\n")
    subprocess.run([ip, "netns", "add", ns], check=True)
    try:
        root = str(Path(__file__).resolve().parents[2])
        proc = subprocess.run([ip, "netns", "exec", ns, sys.executable, str(script), ip], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})
    finally:
        subprocess.run([ip, "netns", "del", ns], check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert ns not in subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout


def test_without_an_event_the_authority_does_not_look_until_the_idle_check():
    class Quiet:
        available = True

        def pending(self) -> bool:
            return False

        def close(self) -> None:
            pass

    looks = []

    def addresses() -> set[str]:
        looks.append(1)
        return set()

    authority = Authority(VIP, addresses=addresses, events=Quiet())
    authority.refresh(force=True)
    for _ in range(50):
        authority.refresh()
    assert len(looks) == 1  # no event: no look (IDLE_CHECK_S later it looks anyway)
