"""Host install: the sysusers/tmpfiles files, example configs, `make install-host` into a throwaway root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttsha.config import load

from . import tool

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = sorted((ROOT / "conf" / "examples").glob("*.toml"))


def test_examples_exist_for_two_nodes_and_a_gateway():
    assert {p.stem for p in EXAMPLES} >= {"node-a", "node-b", "gateway"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = load(path)
    assert cfg.source == path


def test_node_examples_name_each_other_as_peers():
    a, b = load(ROOT / "conf/examples/node-a.toml"), load(ROOT / "conf/examples/node-b.toml")
    assert a.replicate.peers == ["node-b"] and b.replicate.peers == ["node-a"]
    assert a.nodes["node-a"].url.split("//")[1].startswith(a.serve.host)
    assert b.nodes["node-b"].url.split("//")[1].startswith(b.serve.host)


def test_sysusers_creates_the_user_the_units_run_as(tmp_path):
    sysusers = tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else "root:x:0:\n")
    subprocess.run([sysusers, f"--root={tmp_path}", str(ROOT / "systemd/ttsha.sysusers")], check=True,
                   capture_output=True)
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("ttsha:"))
    assert entry.split(":")[5] == "/var/lib/ttsha"
    units = " ".join(p.read_text() for p in (ROOT / "systemd").glob("*.service"))
    assert "User=ttsha" in units


def test_tmpfiles_creates_state_and_config_dirs(tmp_path):
    sysusers, tmpfiles = tool("systemd-sysusers", "systemd"), tool("systemd-tmpfiles", "systemd")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    subprocess.run([sysusers, f"--root={tmp_path}", str(ROOT / "systemd/ttsha.sysusers")], check=True,
                   capture_output=True)
    subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(ROOT / "systemd/ttsha.tmpfiles")], check=True,
                   capture_output=True)
    uid = int(next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                   if line.startswith("ttsha:")).split(":")[2])
    for rel, mode in (("var/lib/ttsha", 0o750), ("var/lib/ttsha/audio", 0o750), ("var/lib/ttsha/models", 0o750),
                      ("var/lib/ttsha/.ssh", 0o700), ("etc/ttsha", 0o750)):
        st = (tmp_path / rel).stat()
        assert st.st_mode & 0o777 == mode, rel
        if not rel.startswith("etc"):
            assert st.st_uid == uid, rel


@pytest.mark.e2e
def test_make_install_host_into_a_throwaway_root(tmp_path):
    """Every file install-host puts down, then uninstall-host takes it away (keeping a changed config)."""
    make = tool("make", "make")
    dest = tmp_path / "root"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([make, "-C", str(ROOT), "install-host", f"DESTDIR={dest}"], check=True, env=env,
                   capture_output=True, timeout=900)
    expected = [
        "opt/ttsha/bin/python", "opt/ttsha/bin/ttsha", "usr/lib/sysusers.d/ttsha.conf", "usr/lib/tmpfiles.d/ttsha.conf",
        "etc/ttsha/ttsha.toml", "usr/share/man/man1/ttsha.1", "usr/share/man/man5/ttsha.toml.5",
        *(f"lib/systemd/system/{p.name}" for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".timer")),
    ]
    for rel in expected:
        assert (dest / rel).exists(), rel
    link = dest / "usr/bin/ttsha"
    assert link.is_symlink() and os.readlink(link) == "/opt/ttsha/bin/ttsha"
    assert (dest / "etc/ttsha/ttsha.toml").stat().st_mode & 0o777 == 0o640
    # The staged venv is a real install (not editable): it runs and finds the voice.
    staged = dest / "opt/ttsha/bin/ttsha"
    out = subprocess.run([str(staged), "voices"], check=True, capture_output=True, text=True, timeout=120).stdout
    assert "baker" in out
    proc = subprocess.run([str(dest / "opt/ttsha/bin/python"), "-c", "import ttsha; print(ttsha.__file__)"],
                          check=True, capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.startswith(str(dest / "opt/ttsha/lib"))

    (dest / "etc/ttsha/ttsha.toml").write_text("[serve]\nport = 8901\n")
    subprocess.run([make, "-C", str(ROOT), "uninstall-host", f"DESTDIR={dest}"], check=True, env=env,
                   capture_output=True, timeout=120)
    left = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink())
    assert left == ["etc/ttsha/ttsha.toml"]
