"""Two real keepalived daemons, each in its own network namespace, move the virtual IP as rendered.

The namespaces, the veth pairs and the bridge are the lab's
(:class:`ttsha.lab.pair.GatewayNet`, on a LAN namespace of the test's own),
created here and removed after; the track script is a stand-in whose answer the test controls (the
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
from ttsha.lab.pair import GATEWAYS, GatewayNet, keepalived_command

from .monitor.conftest import need, need_root

SUBNET = "10.213.0"
VIP = f"{SUBNET}.100"


def _wait(predicate, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


class Pair:
    """gw-a and gw-b in namespaces on one bridge (in a LAN namespace), each running keepalived:
    the lab's own network (:class:`ttsha.lab.pair.GatewayNet`) and keepalived command."""

    def __init__(self, root: Path) -> None:
        self.ip = need("ip", "iproute2")
        self.keepalived = need("keepalived", "keepalived")
        tag = uuid.uuid4().hex[:6]
        self.net = GatewayNet(bridge=f"tt{tag}", prefix=f"ttsha-{tag}-", subnet=SUBNET, lan=f"ttsha-lan-{tag}")
        assert self.net.vip == VIP
        self.lan = self.net.lan or ""
        self.ns = {name: self.net.namespace(name) for name in GATEWAYS}
        self.addr = {name: self.net.address(name) for name in GATEWAYS}
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        prefix = [self.ip, "netns", "exec", ns] if ns else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=check, timeout=30)

    def up(self) -> None:
        self.net.up()

    def start(self, name: str, text: str) -> None:
        self.net.power_on(name)
        conf = self.root / f"{name}.conf"
        conf.write_text(text)
        run_dir = self.root / name
        run_dir.mkdir(exist_ok=True)
        self.procs[name] = subprocess.Popen([*self.net.exec(name), *keepalived_command(self.keepalived, conf, run_dir)],
                                            stdout=open(self.root / f"{name}.log", "ab"), stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        """SIGKILL the gateway's keepalived and its VRRP child at once, as a power loss would."""
        proc = self.procs.pop(name)
        pattern = f"--use-file={self.root / name}.conf"
        subprocess.run(["pkill", "-KILL", "-f", "--", pattern], check=False)
        proc.wait(timeout=10)
        gone = _wait(lambda: subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True).returncode != 0, 10)
        assert gone is not None, f"keepalived of {name} survived SIGKILL"
        for pid_file in (self.root / name).glob("keepalived*.pid"):
            pid_file.unlink()  # a restarted keepalived must not mistake a recycled pid for itself
        self.net.power_off(name)

    def holds_vip(self, name: str) -> bool:
        return self.net.holds_vip(name)

    def holders(self) -> list[str]:
        return self.net.holders()

    def down(self) -> None:
        try:
            for name in list(self.procs):
                self.kill(name)
        finally:  # the namespaces and links go even when a kill is not confirmed
            self.net.down()


@pytest.fixture
def pair():
    need_root("network namespaces need root")
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
