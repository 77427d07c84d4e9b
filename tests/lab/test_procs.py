"""ttsha.lab.procs: tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttsha.lab import Lab, LabError, find_binary, procs


def test_missing_binary_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(procs.shutil, "which", lambda name: None)
    monkeypatch.setattr(procs.os.path, "exists", lambda path: False)
    with pytest.raises(LabError, match="apt-get install -y nginx"):
        find_binary("nginx", "nginx")


def test_refuses_a_directory_another_user_owns(tmp_path):
    import os

    if os.geteuid() == 0:
        other = tmp_path / "planted"
        other.mkdir(mode=0o755)
        os.chown(other, 65534, 65534)
    else:
        other = Path("/")  # root's
    with pytest.raises(LabError, match="belongs to uid"):
        Lab(other)


def test_refuses_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "lab"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(LabError, match="can be written by others"):
        Lab(shared)
    with pytest.raises(LabError, match="can be written by others"):
        Lab(tmp_path / "lab").down()


def test_a_symlinked_log_is_refused(tmp_path):
    import sys

    lab = Lab(tmp_path / "lab")
    lab.root.mkdir()
    target = tmp_path / "elsewhere"
    (lab.root / "primary.log").symlink_to(target)
    with pytest.raises(LabError, match="symbolic link"):
        lab._spawn("primary", [sys.executable, "-c", "pass", str(lab.root)])
    assert not target.exists()
    assert lab._pids() == {}
