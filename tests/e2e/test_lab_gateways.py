"""The lab's gateway pair end to end: ``ttsha lab up --gateways 2``, both gateway faults under
drill traffic to the virtual IP, and ``lab down`` leaving no namespace, link, address or rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ttsha.lab import Lab
from ttsha.lab.pair import LAB_NET

from ..monitor.conftest import need, need_root

pytestmark = pytest.mark.e2e

EXE = Path(sys.executable).with_name("ttsha")
#: Cheap requests mostly: the subject is the gateway, not the nodes' synthesis capacity.
TRAFFIC = ("--duration", "10s", "--rate", "4", "--mix", "new=0.2,hot=0.4,fetch=0.4")


def ttsha(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout)


def _network() -> dict[str, str]:
    """What the host shows of the lab's pair network (empty strings: nothing)."""
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return {"leftovers": ", ".join(LAB_NET.leftovers()),
            "addresses": "".join(line for line in addresses.splitlines() if f"{LAB_NET.subnet}." in line),
            # A rule of the lab's (an isolate drill's) names a node's address; others' tests have their own.
            "nft": "".join(line for line in nft.splitlines() if f"{LAB_NET.subnet}." in line)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    need_root("a gateway pair needs root (network namespaces)")
    need("nginx", "nginx")
    need("keepalived", "keepalived")
    root = tmp_path_factory.mktemp("pairlab")
    proc = ttsha("lab", "up", "--gateways", "2", "--dir", str(root))
    try:
        assert proc.returncode == 0, proc.stderr
        yield Lab(root)
    finally:
        ttsha("lab", "down", "--dir", str(root))


def test_status_shows_which_gateway_holds_the_vip_and_clients_reach_it(pair):
    status = ttsha("lab", "status", "--dir", str(pair.root))
    assert status.returncode == 0, status.stderr
    assert f"virtual IP {LAB_NET.vip}: held by gw-a" in " ".join(status.stdout.split())
    assert pair.layout().gateway_url == f"http://{LAB_NET.vip}:{pair.layout().gateway_port}"


@pytest.mark.parametrize("fault", ["gateway-kill", "gateway-freeze"])
def test_a_gateway_fault_moves_the_vip_and_every_request_after_the_move_succeeds(pair, fault):
    holder = pair.vip_holders()
    assert len(holder) == 1, holder
    report_file = pair.root / f"{fault}.json"
    proc = ttsha("lab", "drill", "--dir", str(pair.root), "--fault", fault, *TRAFFIC, "--report", str(report_file))
    report = json.loads(report_file.read_text())
    print(json.dumps({k: report[k] for k in ("fault", "vip_moved_s", "answered_s", "before_move",
                                             "failed_before_move", "after_move", "failed_after_move")}))
    # The timing objective (1.5 s for a kill) is the benchmark's to hold on a quiet machine;
    # on a shared one a slow takeover may miss it, and nothing else may be missed.
    assert proc.returncode in (0, 5), proc.stderr
    assert all("s after the fault >" in missed for missed in report["missed"]), report["missed"]
    assert report["target"] == holder[0] and report["took_over"] not in (None, holder[0])
    assert report["vip_moved_s"] is not None and report["vip_moved_s"] < 10
    assert report["after_move"] >= 10 and report["failed_after_move"] == 0, report["failures_after_move"]
    assert report["primary_before"] == report["primary_after"] == "primary"
    assert pair.vip_holders() == [report["took_over"]]  # nopreempt: the restored gateway stays backup
    # The restored gateway runs again: all its processes are the lab's and alive.
    status = pair.status()
    assert all(status[f"{role}-{holder[0]}"]["running"] for role in ("nginx", "monitor", "keepalived"))


def test_down_leaves_no_namespace_link_address_or_rule(pair):
    assert _network()["leftovers"]  # the pair's network exists while the lab runs
    proc = ttsha("lab", "down", "--dir", str(pair.root))
    assert proc.returncode == 0, proc.stderr
    assert "netns ttsha-lab-gw-a" in proc.stderr and "bridge ttlab0" in proc.stderr
    assert _network() == {"leftovers": "", "addresses": "", "nft": ""}
