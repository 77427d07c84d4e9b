from __future__ import annotations

import pytest

from ttsha import lab as lab_module
from ttsha.lab import Lab, LabError, find_binary


def test_missing_binary_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(lab_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(lab_module.os.path, "exists", lambda path: False)
    with pytest.raises(LabError, match="apt-get install -y nginx"):
        find_binary("nginx", "nginx")


def test_commands_on_a_missing_lab_explain(tmp_path):
    with pytest.raises(LabError, match="ttsha lab up --dir"):
        Lab(tmp_path / "none").layout()
    assert Lab(tmp_path / "none").down() == []


def test_a_failed_start_stops_what_it_started(tmp_path, monkeypatch):
    """Nodes already running when a later step fails are stopped again."""
    import json
    import subprocess
    import sys

    lab = Lab(tmp_path / "lab")
    started = []

    def fake_up(*args, **kwargs):
        lab.root.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(proc)
        lab._save_pids({"primary": proc.pid})
        raise LabError("sshd not found: install it with 'apt-get install -y openssh-server'")

    monkeypatch.setattr(lab, "_up", fake_up)
    with pytest.raises(LabError, match="openssh-server"):
        lab.up()
    assert started[0].wait(10) is not None  # stopped, not left running
    assert not (lab.root / "pids.json").exists() or json.loads((lab.root / "pids.json").read_text()) == {}


def test_a_node_that_exits_is_reported_at_once(tmp_path, monkeypatch):
    """wait_healthy names the node and its last log line, not a 120 s timeout."""
    import subprocess
    import sys
    import time

    from ttsha.errors import PeerUnreachable
    from ttsha.lab import LabLayout

    lab = Lab(tmp_path / "lab")
    lab.root.mkdir(parents=True)
    (lab.root / "standby.log").write_text("error: ttsha-standby.toml: replicate.models: expected a string\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lab._save_pids({"primary": alive.pid, "standby": dead.pid})
        monkeypatch.setattr(lab_module, "health", lambda url: None)
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match="standby exited: error: .*replicate.models"):
            lab.wait_healthy(LabLayout(lab.root, {"primary": 1, "standby": 2}, 3, 4), timeout=60)
        assert time.monotonic() - started < 5
    finally:
        alive.kill()
        alive.wait()
