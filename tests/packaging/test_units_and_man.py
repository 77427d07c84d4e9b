"""systemd units and man pages: verified by the real tools, kept in step with the CLI."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from ttsha import config
from ttsha.cli import cli

from . import tool

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service")) + sorted((ROOT / "systemd").glob("*.timer"))
MAN1 = ROOT / "man" / "man1" / "ttsha.1"
MAN5 = ROOT / "man" / "man5" / "ttsha.toml.5"
EXE = Path(sys.executable).with_name("ttsha")


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_man_pages_are_lint_clean(page):
    groff = tool("groff", "groff-base")
    proc = subprocess.run([groff, "-k", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _commands(cmd: click.Command, path: tuple[str, ...] = ("ttsha",)):
    if isinstance(cmd, click.Group):
        if len(path) > 1 and any(isinstance(p, click.Option) for p in cmd.params):
            yield path, cmd  # a group that runs by itself (ttsha replicate)
        for name, sub in cmd.commands.items():
            if not sub.hidden:  # internal hooks (ttsha lab start-node)
                yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


def _man_sections() -> dict[str, set[str]]:
    """Long options named in each ``.SS "ttsha ..."`` section of ttsha(1)."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in MAN1.read_text(encoding="utf-8").splitlines():
        if line.startswith(".SS") or line.startswith(".SH"):
            current = line.split('"')[1].replace("\\-", "-") if line.startswith('.SS "ttsha') else None
            if current is not None:
                sections[current] = set()
            continue
        if current is not None and line.startswith((".B", ".BI", ".BR")):
            sections[current] |= {m.replace("\\-", "-") for m in re.findall(r"(\\-\\-[a-z\\\-]+)", line)}
    return sections


def test_help_and_man_page_agree_on_options():
    sections = _man_sections()
    for path, cmd in _commands(cli):
        name = " ".join(path)
        section = next((k for k in sections if k == name or k.startswith(name + " ")), None)
        if section is None:  # grouped sections such as "ttsha lab up|status|drill|down"
            group = " ".join(path[:-1])
            section = next((k for k in sections if k.startswith(group + " ") and path[-1] in k), None)
        assert section is not None, f"ttsha(1) has no section for '{name}'"
        options = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")}
        options.discard("--help")
        missing = options - sections[section]
        assert not missing, f"ttsha(1) '{section}' lacks {sorted(missing)}"
    # And the man page invents no option: everything it lists exists somewhere.
    known = {o for _, c in _commands(cli) for p in c.params if isinstance(p, click.Option) for o in p.opts}
    for section, options in sections.items():
        assert options <= known, f"ttsha(1) '{section}' documents unknown {sorted(options - known)}"
    globals_ = {o for p in cli.params for o in p.opts if o.startswith("--")}
    text = MAN1.read_text(encoding="utf-8").replace("\\-", "-")
    assert all(o in text for o in globals_)


def test_exit_codes_documented_everywhere():
    from ttsha.errors import EXIT_CODES

    man = MAN1.read_text(encoding="utf-8").replace("\\-", "-")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code, meaning in EXIT_CODES.items():
        assert f".B {code}\n{meaning}" in man, code
        assert f"| {code} | {meaning} |" in readme, code


def test_man5_documents_every_key():
    text = MAN5.read_text(encoding="utf-8")
    for key in config.documented_keys():
        section, name = key.rsplit(".", 1)
        body = text.split(f'.SH "[{section}]"', 1)[1].split(".SH", 1)[0]
        assert f".B {name}\n" in body, key


def _verify_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with /usr/bin/ttsha pointing at this checkout's console script."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/usr/bin/ttsha", str(EXE)))
    for other in UNITS:  # timers need their service beside them
        if other != unit and not (tmp_path / other.name).exists():
            (tmp_path / other.name).write_text(other.read_text().replace("/usr/bin/ttsha", str(EXE)))
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit, tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    tool("man", "man-db")
    copy = _verify_copy(unit, tmp_path)
    env = {**os.environ, "MANPATH": str(ROOT / "man")}
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, env=env, cwd=tmp_path)
    problems = [line for line in proc.stderr.splitlines() if unit.stem in line or "ttsha" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_keepalived_starts_after_the_monitor_and_stops_before_it(tmp_path):
    """The drop-in for Debian's keepalived.service orders it after Nginx and the
    monitor (systemd stops in reverse: keepalived leaves first, the VIP moves
    while this gateway still routes), and systemd accepts it."""
    import configparser

    analyze = tool("systemd-analyze", "systemd")
    tool("keepalived", "keepalived")
    debian_unit = Path("/lib/systemd/system/keepalived.service")
    assert debian_unit.is_file(), "Debian's keepalived package ships keepalived.service"
    drop_in = ROOT / "systemd" / "keepalived.service.d" / "ttsha.conf"
    parsed = configparser.ConfigParser(strict=False)
    parsed.read_string(drop_in.read_text())
    assert {"nginx.service", "ttsha-monitor.service"} <= set(parsed["Unit"]["After"].split())
    assert "ttsha-monitor.service" in parsed["Unit"]["Wants"].split()
    (tmp_path / "keepalived.service.d").mkdir()
    (tmp_path / "keepalived.service.d" / "ttsha.conf").write_text(drop_in.read_text())
    _verify_copy(ROOT / "systemd" / "ttsha-monitor.service", tmp_path)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:", "MANPATH": str(ROOT / "man")}
    # --man=no: Debian images often drop man pages; the unit is Debian's, not ours to check.
    proc = subprocess.run([analyze, "verify", "--man=no", "keepalived.service"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "ttsha.conf" not in proc.stderr, proc.stderr


def _exec_start(unit: Path) -> list[str]:
    line = next(text for text in unit.read_text().splitlines() if text.startswith("ExecStart="))
    return shlex.split(line.split("=", 1)[1])


def _lab_config(tmp_path: Path) -> Path:
    """The shipped configuration, pointed at temp paths and free loopback ports."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (ROOT / "conf" / "ttsha.toml").read_text()
    text = text.replace("/var/lib/ttsha", str(tmp_path / "state")).replace("/etc/nginx", str(tmp_path / "nginx"))
    text = text.replace('port = 8900', f"port = {port}")
    text = text.replace('peer = ""', 'peer = "standby"')
    path = tmp_path / "ttsha.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["ttsha-serve.service", "ttsha-monitor.service", "ttsha-replicate.service"])
def test_daemon_exec_start_runs(name, tmp_path):
    """The unit's own command line starts, reports READY=1 and stops on SIGTERM."""
    argv = _exec_start(ROOT / "systemd" / name)
    assert argv[0] == "/usr/bin/ttsha" and argv[1:3] == ["--config", "/etc/ttsha/ttsha.toml"]
    cfg = _lab_config(tmp_path)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(1.0)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    proc = subprocess.Popen([str(EXE), "--config", str(cfg), *argv[3:]], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        got = ""
        while "READY=1" not in got and time.monotonic() < deadline and proc.poll() is None:
            try:
                got += sock.recv(4096).decode() + "\n"
            except TimeoutError:
                pass
        assert "READY=1" in got, proc.stderr.read() if proc.poll() is not None else got
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
        sock.close()


def test_gc_exec_start_runs(tmp_path):
    argv = _exec_start(ROOT / "systemd" / "ttsha-gc.service")
    cfg = _lab_config(tmp_path)
    proc = subprocess.run([str(EXE), "--config", str(cfg), *argv[3:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "removed: 0 results" in proc.stderr


def test_make_install_systemd_and_uninstall(tmp_path):
    make = tool("make", "make")
    dest = tmp_path / "root"
    subprocess.run([make, "-s", "install-systemd", f"DESTDIR={dest}", "PREFIX=/opt/ttsha"], cwd=ROOT, check=True)
    unit = dest / "lib/systemd/system/ttsha-serve.service"
    assert "ExecStart=/opt/ttsha/bin/ttsha --config /etc/ttsha/ttsha.toml serve" in unit.read_text()
    for rel in ("etc/ttsha/ttsha.toml", "opt/ttsha/share/man/man1/ttsha.1", "lib/systemd/system/ttsha-gc.timer",
                "lib/systemd/system/keepalived.service.d/ttsha.conf"):
        assert (dest / rel).is_file(), rel
    subprocess.run([make, "-s", "uninstall", f"DESTDIR={dest}", "PREFIX=/opt/ttsha"], cwd=ROOT, check=True)
    assert not [p for p in dest.rglob("*") if p.is_file()]


def _documented(value):
    """A default as ttsha.toml(5) documents it: state-dir paths under /var/lib/ttsha whoever builds the page."""
    return Path(str(value).replace(str(config.state_dir()), "/var/lib/ttsha")) if isinstance(value, Path) else value


def test_man5_defaults_are_toml_an_admin_can_copy():
    """Each "Default:" in ttsha.toml(5) parses as TOML, and the config reads it as the built-in default."""
    import tomli

    section, checked = None, 0
    lines = MAN5.read_text(encoding="utf-8").splitlines()
    for line, after in itertools.pairwise(lines):
        if line.startswith('.SH "['):
            section = line[len('.SH "['):-2]
        elif line.startswith(".B ") and section and "Default: \\fB" in after:
            key = line[3:]
            text = after.rsplit("Default: \\fB", 1)[1].removesuffix("\\fR.")
            text = text.replace("\\-", "-").replace("\\&", "").replace("\\\\", "\\")
            value = tomli.loads(f"v = {text}")["v"]
            if section.endswith(".NAME"):  # [nodes.NAME], [gateways.NAME]
                table = section.split(".")[0]
                got = getattr(config.parse({table: {"n": {key: value}}}), table)["n"]
                want = type(got)()
            else:
                got, want = getattr(config.parse({section: {key: value}}), section), getattr(config.Config(), section)
            assert getattr(got, key) == _documented(getattr(want, key)), (section, key, text)
            checked += 1
    assert checked == len(config.documented_keys())
