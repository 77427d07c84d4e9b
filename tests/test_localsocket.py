"""The local request socket both the monitor's control and the replicator's acknowledgements use."""

from __future__ import annotations

import socket
import stat
import threading

import pytest

from ttsha.localsocket import LineServer, NoAnswer, ask


def test_request_and_answer_on_a_private_socket(tmp_path):
    server = LineServer(tmp_path / "s.sock", lambda request: {"ok": True, "echo": request}, name="t")
    server.start()
    try:
        assert stat.S_IMODE((tmp_path / "s.sock").stat().st_mode) == 0o600
        assert ask(tmp_path / "s.sock", {"op": "x", "n": 1}, timeout=2) == {"ok": True, "echo": {"op": "x", "n": 1}}
        with socket.socket(socket.AF_UNIX) as raw:  # not a JSON object: a refusal, not a dead thread
            raw.connect(str(tmp_path / "s.sock"))
            raw.sendall(b"[1, 2]\n")
            assert b"bad request" in raw.recv(4096)
    finally:
        server.close()
    assert not (tmp_path / "s.sock").exists()


def test_nothing_listening_and_too_slow_are_told_apart(tmp_path):
    with pytest.raises(NoAnswer) as absent:
        ask(tmp_path / "none.sock", {}, timeout=1)
    assert absent.value.absent
    release = threading.Event()
    slow = LineServer(tmp_path / "slow.sock", lambda request: release.wait(5) and {"ok": True}, name="slow")
    slow.start()
    try:
        with pytest.raises(NoAnswer) as late:
            ask(tmp_path / "slow.sock", {}, timeout=0.2)
        assert late.value.timed_out and not late.value.absent
    finally:
        release.set()
        slow.close()
