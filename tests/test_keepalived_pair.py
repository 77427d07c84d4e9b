"""Two real keepalived daemons, each in its own network namespace, move the virtual IP as rendered.

The namespaces, the veth pairs and the bridge are created here and removed
after; the track script is a stand-in whose answer the test controls (the
real ``ttsha keepalived check`` is tested against Nginx and a monitor in
test_keepalived.py), so this test is about the VRRP settings themselves:
takeover time, nopreempt, and a failing check giving the address up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ttsha import keepalived
from ttsha.config import parse

from .monitor.conftest import need

VIP = "10.213.0.100"


def _wait(predicate, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


class Pair:
    """gw-a and gw-b in namespaces on one bridge (in a third namespace), each running keepalived."""

    def __init__(self, root: Path) -> None:
        self.ip = need("ip", "iproute2")
        self.keepalived = need("keepalived", "keepalived")
        tag = uuid.uuid4().hex[:6]
        self.lan, self.ns = f"ttsha-lan-{tag}", {"gw-a": f"ttsha-a-{tag}", "gw-b": f"ttsha-b-{tag}"}
        self.addr = {"gw-a": "10.213.0.1", "gw-b": "10.213.0.2"}
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        prefix = [self.ip, "netns", "exec", ns] if ns else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=check, timeout=30)

    def up(self) -> None:
        for ns in (self.lan, *self.ns.values()):
            self.run(self.ip, "netns", "add", ns)
        self.run(self.ip, "link", "add", "br0", "type", "bridge", ns=self.lan)
        self.run(self.ip, "link", "set", "br0", "up", ns=self.lan)
        self.run(self.ip, "addr", "add", "10.213.0.250/24", "dev", "br0", ns=self.lan)
        for name, ns in self.ns.items():
            port = f"p{name[-1]}"
            self.run(self.ip, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, ns=self.lan)
            self.run(self.ip, "link", "set", port, "master", "br0", "up", ns=self.lan)
            self.run(self.ip, "link", "set", "eth0", "up", ns=ns)
            self.run(self.ip, "link", "set", "lo", "up", ns=ns)
            self.run(self.ip, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0", ns=ns)

    def start(self, name: str, text: str) -> None:
        self.run(self.ip, "link", "set", "eth0", "up", ns=self.ns[name])
        conf = self.root / f"{name}.conf"
        conf.write_text(text)
        pids = [f"--pid={self.root / name}.pid", f"--vrrp_pid={self.root / name}.vrrp.pid"]
        self.procs[name] = subprocess.Popen(
            [self.ip, "netns", "exec", self.ns[name], self.keepalived, "--dont-fork", "--vrrp", "--log-console",
             "--no-syslog", f"--use-file={conf}", *pids],
            stdout=open(self.root / f"{name}.log", "ab"), stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        """SIGKILL the gateway's keepalived and its VRRP child at once, as a power loss would."""
        proc = self.procs.pop(name)
        pattern = f"--use-file={self.root / name}.conf"
        subprocess.run(["pkill", "-KILL", "-f", "--", pattern], check=False)
        proc.wait(timeout=10)
        gone = _wait(lambda: subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True).returncode != 0, 10)
        assert gone is not None, f"keepalived of {name} survived SIGKILL"
        for pid_file in self.root.glob(f"{name}*.pid"):
            pid_file.unlink()  # a restarted keepalived must not mistake a recycled pid for itself
        # A host that lost power answers nothing and keeps no address: a killed keepalived leaves
        # the VIP configured, and the kernel would go on answering ARP for it.
        self.run(self.ip, "link", "set", "eth0", "down", ns=self.ns[name])
        self.run(self.ip, "addr", "del", f"{VIP}/24", "dev", "eth0", ns=self.ns[name], check=False)

    def holds_vip(self, name: str) -> bool:
        out = self.run(self.ip, "-o", "addr", "show", "dev", "eth0", ns=self.ns[name], check=False).stdout
        return f" {VIP}/" in out

    def holders(self) -> list[str]:
        return [name for name in self.ns if self.holds_vip(name)]

    def down(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for ns in (*self.ns.values(), self.lan):
            self.run(self.ip, "netns", "del", ns, check=False)


@pytest.fixture
def pair():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    # keepalived's script security refuses scripts under a world-writable directory such as /tmp.
    root = Path("/run") / f"ttsha-test-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    p = Pair(root)
    try:
        p.up()
        yield p
    finally:
        p.down()
        if os.environ.get("TTSHA_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)


def _stub(root: Path, gateway: str) -> Path:
    """Stands in for `ttsha` and for the Python that runs the self-check on one gateway: the check
    (`-I -S selfcheck.py …`) fails while <root>/fail-<gateway> exists, `keepalived notify …` is
    logged to <root>/notify.log."""
    stub = root / f"ttsha-{gateway}"
    stub.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -I ]; then [ ! -e "{root}/fail-{gateway}" ]; exit $?; fi\n'
        f'echo "$@" >> "{root}/notify.log"\n'
    )
    stub.chmod(0o755)
    return stub


def test_vip_moves_on_kill_and_on_a_failed_check_and_never_back(pair):
    config = parse({
        "vrrp": {"vip": f"{VIP}/24", "interface": "eth0", "advert_interval": "200ms", "router_id": 77},
        "gateways": {"gw-a": {"address": pair.addr["gw-a"], "priority": 150},
                     "gw-b": {"address": pair.addr["gw-b"], "priority": 100}},
    })
    stubs = {name: str(_stub(pair.root, name)) for name in ("gw-a", "gw-b")}
    texts = {name: keepalived.render(config, name, ttsha_bin=stubs[name], python_bin=stubs[name]) for name in stubs}
    pair.start("gw-a", texts["gw-a"])
    assert _wait(lambda: pair.holders() == ["gw-a"], 15) is not None, pair.holders()
    pair.start("gw-b", texts["gw-b"])
    assert _wait(lambda: pair.holders() != ["gw-a"], 2) is None  # the lower priority, starting later, never takes it

    # The holder's keepalived dies: the address moves within ~3 adverts + skew.
    start = time.monotonic()
    pair.kill("gw-a")
    moved = _wait(lambda: pair.holders() == ["gw-b"], 5)
    assert moved is not None and moved < 1.5, f"VIP moved after {moved}"

    # gw-a comes back with the higher priority: nopreempt keeps the address where it is.
    pair.start("gw-a", texts["gw-a"])
    assert _wait(lambda: pair.holders() != ["gw-b"], 3) is None, pair.holders()

    # gw-b's Nginx or monitor fails its check: it gives the address up, gw-a takes it.
    (pair.root / "fail-gw-b").touch()
    moved = _wait(lambda: pair.holders() == ["gw-a"], 5)
    assert moved is not None and moved < 4.0, f"VIP left the failing gateway after {moved}"
    notes = (pair.root / "notify.log").read_text()
    assert "--gateway gw-b MASTER" in notes and "--gateway gw-b FAULT" in notes
    assert time.monotonic() - start < 20
