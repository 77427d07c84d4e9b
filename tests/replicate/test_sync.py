"""Replication over a real sshd, judged by rsync itself."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from ttsha.errors import TTSHAError
from ttsha.replicate.link import peer_for
from ttsha.replicate.sync import sync
from ttsha.replicate.transport import HostKeyRefused, UnsafePath, safe_relative

from ..monitor.conftest import need

ODD_NAMES = ["plain.bin", "with space.json", "中文 名字.wav", "new\nline.txt", "sub dir/deeper/x.cfg"]


def make_tree(root: Path) -> None:
    for i, name in enumerate(ODD_NAMES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000 + i * 997))
        os.chmod(path, 0o640 if i % 2 else 0o644)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))


def rsync_differences(src: Path, dst: Path) -> list[str]:
    rsync = need("rsync", "rsync")
    out = subprocess.run([rsync, "-a", "-n", "-i", "--checksum", "--delete", f"{src}/", f"{dst}/"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def models_peer(config):
    return peer_for(config, "standby", str(config.replicate.remote_models)).connect()


def test_sync_matches_rsync_check(rep_config):
    src, dst = rep_config.replicate.local_models, rep_config.replicate.remote_models
    make_tree(src)
    peer = models_peer(rep_config)
    try:
        result = sync(src, peer, delete=True)
        assert result.files_sent == len(ODD_NAMES)
        assert rsync_differences(src, dst) == []
        assert sync(src, peer, delete=True).changes == []  # the quick check finds nothing to do
        # A changed file, a removed file, an extraneous remote file.
        (src / "plain.bin").write_bytes(b"changed")
        (src / "with space.json").unlink()
        (dst / "extra.txt").write_text("not in the source")
        dry = sync(src, peer, delete=True, dry_run=True)
        lines = sorted(change.itemize() for change in dry.changes)
        assert lines == ["*deleting   extra.txt", "*deleting   with space.json", ">f.st...... plain.bin"]
        assert (dst / "extra.txt").exists()  # the dry run changed nothing
        sync(src, peer, delete=True)
        assert rsync_differences(src, dst) == []
    finally:
        peer.close()


def test_checksum_mode_finds_same_size_same_mtime_changes(rep_config):
    src, dst = rep_config.replicate.local_models, rep_config.replicate.remote_models
    (src / "a.bin").write_bytes(b"A" * 100)
    os.utime(src / "a.bin", (1_700_000_000, 1_700_000_000))
    peer = models_peer(rep_config)
    try:
        sync(src, peer)
        (dst / "a.bin").write_bytes(b"B" * 100)
        os.utime(dst / "a.bin", (1_700_000_000, 1_700_000_000))
        assert sync(src, peer, dry_run=True).changes == []
        changes = sync(src, peer, checksum=True).changes
        assert [c.reason for c in changes] == ["checksum"]
        assert (dst / "a.bin").read_bytes() == b"A" * 100
    finally:
        peer.close()


def test_partial_files_are_never_visible(rep_config):
    src, dst = rep_config.replicate.local_models, rep_config.replicate.remote_models
    big = src / "model.bin"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    seen_sizes = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                seen_sizes.add((dst / "model.bin").stat().st_size)
            except FileNotFoundError:
                seen_sizes.add(None)

    watcher = threading.Thread(target=watch)
    watcher.start()
    peer = models_peer(rep_config)
    try:
        sync(src, peer)
    finally:
        done.set()
        watcher.join()
        peer.close()
    assert seen_sizes <= {None, big.stat().st_size}
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_symlinks_do_not_leave_the_root(rep_config, tmp_path):
    src, dst = rep_config.replicate.local_models, rep_config.replicate.remote_models
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (src / "inside.txt").write_text("ok")
    (src / "link-out").symlink_to(outside)
    (src / "link-in").symlink_to(src / "inside.txt")
    peer = models_peer(rep_config)
    try:
        sync(src, peer)
    finally:
        peer.close()
    assert (dst / "inside.txt").read_text() == "ok" and (dst / "link-in").read_text() == "ok"
    assert not (dst / "link-out").exists()


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../b", "", "a\0b", "..", "a/.."])
def test_unsafe_paths_are_refused(rel):
    with pytest.raises(UnsafePath):
        safe_relative(rel)


def test_unknown_and_changed_host_keys_are_refused(rep_config, sshd_running):
    known = rep_config.replicate.known_hosts
    known.write_text("")
    with pytest.raises(HostKeyRefused, match="trust-host"):
        models_peer(rep_config)
    # Record a different key for the same host: a changed key.
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd_running.client_key))
    known.write_text(f"[127.0.0.1]:{sshd_running.port} ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(HostKeyRefused, match="CHANGED"):
        models_peer(rep_config)


def test_key_file_permissions_are_checked(rep_config):
    os.chmod(rep_config.replicate.key_file, 0o644)
    try:
        with pytest.raises(TTSHAError, match="chmod 600"):
            models_peer(rep_config)
    finally:
        os.chmod(rep_config.replicate.key_file, 0o600)


def test_bwlimit_slows_the_transfer(rep_config):
    from dataclasses import replace

    src = rep_config.replicate.local_models
    (src / "f.bin").write_bytes(os.urandom(512 * 1024))
    slow = replace(rep_config, replicate=replace(rep_config.replicate, bwlimit=1024))  # 1 MiB/s
    peer = peer_for(slow, "standby", str(slow.replicate.remote_models)).connect()
    try:
        started = time.monotonic()
        sync(src, peer)
        assert time.monotonic() - started >= 0.4
    finally:
        peer.close()


def test_include_and_exclude(rep_config):
    src, dst = rep_config.replicate.local_models, rep_config.replicate.remote_models
    for rel in ("keep/a.bin", "keep/b.txt", "skip/c.bin", ".hidden/d.bin"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    peer = models_peer(rep_config)
    try:
        sync(src, peer, include=["*.bin"], exclude=["skip", ".*"])
    finally:
        peer.close()
    sent = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert sent == ["keep/a.bin"]


def test_trust_host_records_the_key_after_showing_it(rep_config, sshd_running, tmp_path, capsys, monkeypatch):
    import io

    from ttsha.cli import main
    from ttsha.config import to_toml

    known = rep_config.replicate.known_hosts
    known.write_text("")
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(to_toml(rep_config))
    code = main(["--config", str(cfg), "replicate", "trust-host", "127.0.0.1", "--port", str(sshd_running.port),
                 "--yes"])
    err = capsys.readouterr().err
    fingerprint = paramiko.Ed25519Key.from_private_key_file(str(sshd_running.host_key)).fingerprint
    assert code == 0 and fingerprint in err
    peer = models_peer(rep_config)  # now trusted
    peer.close()
    # Answering no at the prompt records nothing.
    known.write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code = main(["--config", str(cfg), "replicate", "trust-host", "127.0.0.1", "--port", str(sshd_running.port)])
    assert code != 0 and known.read_text() == ""
