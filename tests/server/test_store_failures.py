"""A node whose store cannot take results answers 503, reports degraded, and recovers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ttsha.store import AudioStore

from ..monitor.conftest import need_root


def _health(node) -> tuple[int, dict]:
    resp, data = node.client.request("GET", "/health", timeout=5)
    return resp.status, json.loads(data)


def _wait_status(node, status: str, timeout: float = 10.0) -> dict:
    """Poll /health until it says ``status`` (bounded); the last body."""
    deadline = time.monotonic() + timeout
    while True:
        _, health = _health(node)
        if health["status"] == status or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs of its own, unmounted after: a disk that really fills up."""
    need_root("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(root: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``root``'s filesystem."""
    filler = root / "filler"
    free = AudioStore(root).free_bytes()
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_disk_full_answers_503_degrades_and_recovers(make_node, fake_engine, tiny_fs):
    node = make_node(fake_engine, start=False)
    node.service.store = AudioStore(tiny_fs / "audio")  # min_free 0: only real ENOSPC counts
    node.service.start()
    assert _health(node)[0] == 200
    filler = _fill(tiny_fs, leave=8 * 1024)  # room for a sidecar, not for a second of audio

    resp, data = node.client.synth(text="磁盘已满")
    assert resp.status == 503, data
    body = json.loads(data)
    assert body["error"] == "store_unavailable" and "No space left" in body["message"]
    assert int(resp.getheader("Retry-After")) >= 1
    # Degraded at once, not at the next check.
    status, health = _health(node)
    assert status == 503 and health["status"] == "degraded" and "store_write" in health["reason"]
    assert _files(tiny_fs / "audio") == []  # no partial audio, no orphan sidecar, no temp file

    filler.unlink()  # space comes back: the write probe notices without any request
    health = _wait_status(node, "ready")
    assert health["status"] == "ready" and health["store"]["writable"] is True
    assert health["store"]["free_bytes"] > 512 * 1024
    resp, _ = node.client.synth(text="磁盘已满")
    assert resp.status == 200


def test_io_error_at_fsync_answers_503_until_writes_work(make_node, fake_engine, monkeypatch):
    import ttsha.server.service

    monkeypatch.setattr(ttsha.server.service, "STORE_HOLD_S", 0.0)  # probe from the first check on
    node = make_node(fake_engine)
    real_fsync = os.fsync

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)  # the failing disk: results and the write probe alike
    resp, data = node.client.synth(text="写入错误")
    assert resp.status == 503 and json.loads(data)["error"] == "store_unavailable"
    assert _health(node)[1]["status"] == "degraded"
    assert _files(node.service.store.root) == []
    health = _wait_status(node, "ready", timeout=1.5)  # probes run meanwhile, and fail
    assert health["status"] == "degraded" and health["store"]["writable"] is False
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _wait_status(node, "ready")["status"] == "ready"
    resp, _ = node.client.synth(text="写入错误")
    assert resp.status == 200


def test_below_min_free_is_degraded_before_the_disk_is_full(make_node, fake_engine):
    node = make_node(fake_engine)
    assert _health(node)[1]["store"]["min_free"] == 0
    node.service.store.min_free = 2**60  # more than any disk has
    health = _wait_status(node, "degraded")
    assert health["status"] == "degraded" and "below min_free" in health["reason"]
    node.service.store.min_free = 0
    assert _wait_status(node, "ready")["status"] == "ready"
