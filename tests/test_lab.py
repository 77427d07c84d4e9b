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
