"""ttsha.lab.pair: tests (the network on a LAN namespace of the test's own, so no lab lock is needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from ttsha.lab import Lab, LabError
from ttsha.lab.pair import GATEWAYS, INTERFACE, GatewayNet

from ..monitor.conftest import need_root


@pytest.fixture
def net():
    need_root("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    n = GatewayNet(bridge=f"tt{tag}", prefix=f"ttsha-t{tag}-", subnet="10.219.0", lan=f"ttsha-tlan-{tag}")
    try:
        yield n
    finally:
        n.down()


#: Connects to a closed port: "refused" (an RST came back) means the address is reachable.
_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=2)
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("unreachable")
"""


def _ping(net: GatewayNet, gateway: str, address: str) -> bool:
    out = subprocess.run([*net.exec(gateway), sys.executable, "-c", _PROBE, address], capture_output=True, text=True)
    return out.stdout.strip() == "refused"


def test_the_pair_network_links_both_gateways_and_down_leaves_nothing(net):
    assert net.leftovers() == []
    net.up()
    assert len(net.port(GATEWAYS[1])) <= 15  # Linux's limit on interface names
    assert sorted(net.namespaces()) == sorted([net.lan, *(net.namespace(g) for g in GATEWAYS)])
    assert _ping(net, "gw-a", net.address("gw-b")) and _ping(net, "gw-b", net.host_address)
    assert net.holders() == []
    # The VIP on gw-b's interface is what holders() sees; power_off takes it and the link away.
    subprocess.run([*net.exec("gw-b"), "ip", "addr", "add", f"{net.vip}/24", "dev", INTERFACE], check=True)
    assert net.holders() == ["gw-b"]
    net.power_off("gw-b")
    assert net.holders() == [] and not _ping(net, "gw-a", net.address("gw-b"))
    net.power_on("gw-b")
    assert _ping(net, "gw-a", net.address("gw-b"))
    removed = net.down()
    assert f"netns {net.namespace('gw-a')}" in removed and f"bridge {net.bridge}" in removed
    assert net.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.prefix not in listed and net.lan not in listed
    assert net.down() == []  # twice is harmless


def test_a_pair_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root.*--gateways 2"):
        Lab(tmp_path / "lab").up(gateways=2)
    assert not (tmp_path / "lab" / "lab.json").exists()  # refused before anything was made


def test_three_gateways_are_refused(tmp_path):
    with pytest.raises(LabError, match="1 or 2"):
        Lab(tmp_path / "lab").up(gateways=3)
