"""``ttsha serve`` as a process: sd_notify, watchdog, drain on SIGTERM."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf

from ttsha.server import daemon as daemon_module

EXE = Path(sys.executable).with_name("ttsha")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def messages(sock, until, timeout=60.0):
    """Collect notifications until one contains ``until``."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout} s; got {got}")


def start_serve(tmp_path, port, extra_env=None, config=""):
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[serve]\nport = {port}\ndrain_timeout = "20s"\n[store]\npath = "{tmp_path}/audio"\n{config}')
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen([str(EXE), "--config", str(cfg), "serve"], env=env, stderr=subprocess.PIPE, text=True)


def wait_ready(port, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get(port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("serve never became ready")


def get(port, path, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_sd_notify_ready_watchdog_stopping(tmp_path, notify_socket):
    sock, path = notify_socket
    port = free_port()
    proc = start_serve(tmp_path, port, {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    try:
        messages(sock, "READY=1")
        # READY only after warm-up: the canary has already synthesized.
        status, body = get(port, "/health")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ready" and health["last_synth_ok_at"]
        pings = messages(sock, "WATCHDOG=1", timeout=5)
        assert pings[-1] == "WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in messages(sock, "STOPPING=1", timeout=10)[-1]
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_drains_a_request_in_flight(tmp_path):
    port = free_port()
    proc = start_serve(tmp_path, port)
    try:
        wait_ready(port)
        text = "当主节点失去响应时，网关会在两秒内把流量切换到备用节点，客户端不会看到任何失败的请求。" * 3
        result = {}

        def long_request():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            result["status"], result["body"] = resp.status, resp.read()

        client = threading.Thread(target=long_request)
        client.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and json.loads(get(port, "/health")[1])["workers_busy"] == 0:
            time.sleep(0.02)
        assert json.loads(get(port, "/health")[1])["workers_busy"] == 1, "the request never started"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections while draining
            get(port, "/health", timeout=2)
        client.join(60)
        assert result["status"] == 200
        samples, rate = sf.read(io.BytesIO(result["body"]))
        assert len(samples) / rate > 10
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_watchdog_withheld_when_workers_are_wedged(tmp_path, notify_socket, monkeypatch):
    from .conftest import SERVE, FakeEngine, Node

    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setattr(daemon_module, "STUCK_AFTER_S", 0.3)
    engine = FakeEngine()
    node = Node(engine, tmp_path / "store", SERVE)
    stop = threading.Event()
    fake_daemon = SimpleNamespace(service=node.service, _stop=stop)
    thread = threading.Thread(target=daemon_module.ServeDaemon._watchdog, args=(fake_daemon, 0.05), daemon=True)
    thread.start()
    try:
        assert "WATCHDOG=1" in messages(sock, "WATCHDOG=1", timeout=2)[-1]
        engine.gate.clear()
        engine.started.clear()
        threading.Thread(target=node.client.synth, kwargs={"text": "卡住"}, daemon=True).start()
        assert engine.started.wait(5)
        time.sleep(0.5)  # the job is now older than STUCK_AFTER_S
        while True:  # drain pings sent before the job got stuck
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            for _ in range(5):
                sock.recv(4096)
        engine.gate.set()
        assert "WATCHDOG=1" in messages(sock, "WATCHDOG=1", timeout=2)[-1]
    finally:
        stop.set()
        node.close()


def test_sighup_rereads_limits_without_a_restart(tmp_path):
    port = free_port()
    proc = start_serve(tmp_path, port, config="")
    cfg = tmp_path / "ttsha.toml"
    try:
        wait_ready(port)
        text = "好" * 30

        def post():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()

        cfg.write_text(cfg.read_text().replace("[serve]\n", "[serve]\nmax_chars = 20\n"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and post()[0] != 400:
            time.sleep(0.1)
        status, body = post()
        assert status == 400 and json.loads(body)["error"] == "text_too_long"
        pid_before = proc.pid
        cfg.write_text(cfg.read_text().replace("max_chars = 20", "max_chars = 100"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and post()[0] != 200:
            time.sleep(0.1)
        assert post()[0] == 200 and proc.poll() is None and proc.pid == pid_before
        # A broken file is refused and the running limits stay.
        cfg.write_text("[serve\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert post()[0] == 200 and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_sighup_applies_the_connection_limits_and_names_what_needs_a_restart(tmp_path, caplog):
    """Found in issue 16's trial: a reload logged success but kept the old
    max_connections and timeouts, and a new [serve] host went unmentioned."""
    import logging

    from ttsha.config import load

    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[serve]\nport = {free_port()}\n[store]\npath = "{tmp_path}/audio"\n')
    daemon = daemon_module.ServeDaemon(load(cfg), "127.0.0.1", 0, tmp_path / "audio")
    try:
        cfg.write_text(cfg.read_text().replace("[serve]\n", '[serve]\nmax_connections = 7\nheader_timeout = "3s"\n'
                                               'body_timeout = "4s"\nhost = "127.0.0.2"\n'))
        with caplog.at_level(logging.WARNING, logger="ttsha.server.daemon"):
            daemon._apply_reload()
        server = daemon.server
        assert (server.max_connections, server.header_timeout, server.body_timeout) == (7, 3.0, 4.0)
        assert "serve.host changed; restart" in caplog.text
    finally:
        daemon.server.server_close()


def test_sighup_rereads_the_lexicon_and_a_changed_reading_is_a_new_result(tmp_path):
    port = free_port()
    lexicon = tmp_path / "models" / "lexicon.toml"
    lexicon.parent.mkdir()
    lexicon.write_text('[pinyin]\n"曾小贤" = "zeng1 xiao3 xian2"\n', encoding="utf-8")
    proc = start_serve(tmp_path, port, config=f'[engine]\nlexicon = "{lexicon}"\n')

    def result_id():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/synthesize?return=json", body=json.dumps({"text": "曾小贤"}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200, body
        return body["id"]

    try:
        wait_ready(port, timeout=180)  # other suites may share the 2 cores
        first = result_id()
        assert result_id() == first  # same lexicon, same result
        # Written whole into place, as the replicator does; SIGHUP reads it at once.
        lexicon.with_suffix(".tmp").write_text('[pinyin]\n"曾小贤" = "ceng2 xiao3 xian2"\n', encoding="utf-8")
        lexicon.with_suffix(".tmp").rename(lexicon)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and result_id() == first:
            time.sleep(0.1)
        second = result_id()
        assert second != first
        meta = json.loads(next((tmp_path / "audio").glob(f"*/{second}.json")).read_text())
        assert meta["lexicon"] and meta["text"] == "曾小贤"
        # A bad lexicon is refused; the running one stays, and so do the ids.
        lexicon.write_text('[pinyin]\n"曾小贤" = "ceng2 xiao3"\n', encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None and result_id() == second
        # On the standby nobody sends SIGHUP: a file the replicator puts in place is read by itself.
        lexicon.with_suffix(".tmp").write_text('[pinyin]\n"曾小贤" = "zeng4 xiao3 xian2"\n', encoding="utf-8")
        lexicon.with_suffix(".tmp").rename(lexicon)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and result_id() in (first, second):
            time.sleep(0.2)
        assert result_id() not in (first, second)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "lexicon refused, keeping the running one" in err and "3 characters but 2 syllables" in err
