"""The gateway lock and the monitor's control socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ttsha.errors import PeerUnreachable
from ttsha.monitor.control import ControlServer, GatewayBusy, GatewayLock, call, monitor_running


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    path = tmp_path / "monitor.sock.lock"
    first = GatewayLock(path).acquire(purpose="ttsha monitor")
    with pytest.raises(GatewayBusy, match=f"pid {os.getpid()} ttsha monitor"):
        GatewayLock(path).acquire(timeout=0.2)
    assert monitor_running(tmp_path / "monitor.sock")
    first.release()
    assert not monitor_running(tmp_path / "monitor.sock")
    with GatewayLock(path).acquire():
        pass


def test_lock_dies_with_its_process(tmp_path):
    path = tmp_path / "x.lock"
    code = (f"from ttsha.monitor.control import GatewayLock; GatewayLock({str(path)!r}).acquire(); "
            "import os; os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], check=False)
    GatewayLock(path).acquire(timeout=1).release()  # kill -9 left no stale lock


def test_request_and_reply(tmp_path):
    seen = []

    def handle(request):
        seen.append(request)
        return {"ok": True, "echo": request.get("op")}

    server = ControlServer(tmp_path / "c.sock", handle)
    server.start()
    try:
        assert (tmp_path / "c.sock").stat().st_mode & 0o077 == 0  # owner only
        assert call(tmp_path / "c.sock", {"op": "ping"}) == {"ok": True, "echo": "ping"}
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(tmp_path / "c.sock"))
            raw.sendall(b"not json\n")
            reply = raw.makefile().readline()
        assert '"ok": false' in reply and "bad request" in reply
        assert seen == [{"op": "ping"}]
    finally:
        server.close()
    assert not (tmp_path / "c.sock").exists()
    with pytest.raises(PeerUnreachable, match="no monitor"):
        call(tmp_path / "c.sock", {"op": "ping"})
