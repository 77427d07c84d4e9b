"""ttsha.lab.core: tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttsha import lab as lab_module
from ttsha.lab import Lab, LabError

from ..monitor.conftest import need_root


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
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(lab.root)])
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


# -- trust: the lab directory may sit in a shared /tmp -------------------------


def _sleeper(*args: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_down_signals_only_what_the_lab_started(tmp_path):
    """A planted pids.json naming an unrelated process of ours (pid and start time right) is ignored."""
    import json

    from ttsha.lab.procs import start_time

    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    bystander = _sleeper()
    legacy = _sleeper(str(lab.root))
    try:
        lab.pids.write_text(json.dumps({"monitor": bystander.pid, "nginx": legacy.pid}))
        # The monitor's start time is right; nginx has none recorded, so it cannot be verified.
        lab.starts.write_text(json.dumps({"monitor": start_time(bystander.pid)}))
        assert lab.down(timeout=2) == []
        assert bystander.poll() is None and legacy.poll() is None
    finally:
        for proc in (bystander, legacy):
            proc.kill()
            proc.wait(10)


def test_down_checks_the_start_time_of_a_recorded_pid(tmp_path):
    import json

    from ttsha.lab.procs import start_time

    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    reused = _sleeper(str(lab.root))  # names the lab, but started after the pid was recorded
    try:
        lab.pids.write_text(json.dumps({"primary": reused.pid}))
        lab.starts.write_text(json.dumps({"primary": start_time(reused.pid) - 1}))
        assert lab.down(timeout=2) == []
        assert reused.poll() is None
    finally:
        reused.kill()
        reused.wait(10)


def test_down_stops_a_process_it_started(tmp_path):
    import os
    import sys

    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    pid = lab._spawn("primary", [sys.executable, "-c", "import time; time.sleep(60)", str(lab.root)])
    assert lab.down(timeout=5) == ["primary"]  # down waits until it is gone
    assert not lab_module.alive(pid)
    os.waitpid(pid, 0)


def test_stores_get_a_filesystem_of_their_own_as_root_and_down_removes_it(tmp_path):
    """What disk-full needs: each store a tmpfs of its own, mounted by up and unmounted by down only."""
    import json
    import os
    import subprocess

    from ttsha.lab import NODE_HOSTS, STORE_FS_SOURCE, LabLayout
    from ttsha.lab.core import _mount_source

    need_root("mounting needs root")
    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    layout = LabLayout(lab.root, {"primary": 1, "standby": 2}, 3, 4)
    mounts = lab._mount_stores(layout)
    try:
        assert len(mounts) == len(NODE_HOSTS)
        assert all(_mount_source(Path(m)) == STORE_FS_SOURCE for m in mounts)
        assert os.stat(mounts[0]).st_dev != os.stat(lab.root).st_dev
        (lab.root / "lab.json").write_text(json.dumps({"node_ports": layout.node_ports, "gateway_port": 3,
                                                       "ssh_port": 4, "store_mounts": list(mounts)}))
        lab.down()
        assert all(_mount_source(Path(m)) is None for m in mounts)
    finally:
        for m in mounts:
            if _mount_source(Path(m)) is not None:
                subprocess.run(["umount", "-l", m], check=False)


def test_a_drill_on_a_missing_lab_explains(tmp_path):
    from ttsha.drill import DrillOptions

    with pytest.raises(LabError, match="ttsha lab up --dir"):
        Lab(tmp_path / "none").drill_plan(DrillOptions(fault="kill"))
