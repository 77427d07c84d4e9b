"""End to end on the lab: real ttsha serve nodes, a real Nginx, the monitor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ttsha.lab import Lab, _alive

from ..monitor.conftest import need

pytestmark = pytest.mark.e2e

EXE = Path(sys.executable).with_name("ttsha")


def ttsha(*args, timeout=600):
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    need("nginx", "nginx")
    root = tmp_path_factory.mktemp("lab")
    proc = ttsha("lab", "up", "--dir", str(root))
    assert proc.returncode == 0, proc.stderr
    yield Lab(root)
    ttsha("lab", "down", "--dir", str(root))


def drill(lab, fault):
    report = lab.root / f"{fault}.json"
    proc = ttsha("lab", "drill", "--dir", str(lab.root), "--fault", fault, "--duration", "12", "--rate", "8",
                 "--report", str(report))
    return proc, json.loads(report.read_text())


def test_synthesis_through_the_gateway(lab):
    import urllib.request

    layout = lab.layout()
    req = urllib.request.Request(layout.gateway_url + "/v1/synthesize", data=json.dumps({"text": "网关测试。"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200 and resp.read(4) == b"RIFF"
        assert resp.headers["X-Upstream"]


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_drill_loses_no_request(lab, fault):
    proc, report = drill(lab, fault)
    assert report["failed"] == 0, report["failures"]
    assert report["requests"] >= 50
    assert report["rto_s"] is not None and report["rto_s"] < 2.0
    assert report["rejoined_as"] == "backup"
    for key in ("marked_down", "switchover", "reload_done", "first_success_on_standby", "rejoined"):
        assert report["timeline"].get(key) is not None, key
    # Audio acknowledged before the fault was replicated: nothing lost.
    assert report["rpo_files"] == 0 and report["lost_ids"] == []
    assert proc.returncode == 0 and report["missed"] == [], report["missed"]


def test_audio_replicated_to_the_standby(lab):
    import time
    import urllib.request

    layout = lab.layout()
    req = urllib.request.Request(layout.gateway_url + "/v1/synthesize?return=json",
                                 data=json.dumps({"text": "复制到备机的音频。"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        rid = json.loads(resp.read())["id"]
    stores = [layout.node_dir(name) / "audio" / rid[:2] / f"{rid}.wav" for name in ("primary", "standby")]
    deadline = time.monotonic() + 10
    while not all(p.exists() for p in stores) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in stores)
    assert stores[0].read_bytes() == stores[1].read_bytes()


def test_freeze_takes_the_node_out(lab):
    proc, report = drill(lab, "freeze")
    assert report["timeline"]["marked_down"] is not None and report["timeline"]["marked_down"] < 3
    assert report["rejoined_as"] == "backup"


def test_down_stops_only_what_up_started(tmp_path):
    need("nginx", "nginx")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    root = tmp_path / "lab"
    assert ttsha("lab", "up", "--dir", str(root)).returncode == 0
    pids = json.loads((root / "pids.json").read_text())
    assert set(pids) == {"primary", "standby", "nginx", "monitor", "sshd-primary", "sshd-standby", "replicate-primary", "replicate-standby"}
    status = ttsha("lab", "status", "--dir", str(root))
    assert status.returncode == 0 and "ready" in status.stdout
    proc = ttsha("lab", "down", "--dir", str(root))
    assert proc.returncode == 0
    assert not any(_alive(pid) for pid in pids.values())
    assert bystander.poll() is None
    bystander.send_signal(signal.SIGTERM)
    bystander.wait()
    assert ttsha("lab", "status", "--dir", str(root)).returncode == 0  # no pids left: an empty table
