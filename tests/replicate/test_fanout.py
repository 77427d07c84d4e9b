"""Fan-out: a node copies every result to every other node, one durable queue per peer.

Two real sshd on loopback are the two peers of node "a" (each with its own
store); a peer that is stopped, or frozen in the middle of a write, delays
only its own copies, and catches up when it is back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ttsha.config import Config, NodeConfig, ReplicateConfig, ServeConfig, StoreConfig
from ttsha.lab import descendants
from ttsha.replicate import paths
from ttsha.replicate.ack import AckClient, AckUnavailable
from ttsha.replicate.daemon import Replicator
from ttsha.replicate.durable import AckFanout, _Job
from ttsha.replicate.queue import DurableQueue
from ttsha.store import AudioStore

from ..monitor.conftest import free_port
from .conftest import Sshd
from .test_audio import arrived, put_results, wait_for

USER = os.environ.get("USER", "root") if os.geteuid() else "root"


@pytest.fixture
def peers(tmp_path):
    """Peers "b" and "c": an sshd each, both authorizing the one client key of node "a"."""
    roots = {name: tmp_path / f"sshd-{name}" for name in ("b", "c")}
    roots["b"].mkdir()
    servers = {"b": Sshd(roots["b"])}
    roots["c"].mkdir()
    for key in ("id_ed25519", "id_ed25519.pub"):  # kept by write_keys: c authorizes the same client key
        shutil.copy2(roots["b"] / key, roots["c"] / key)
    servers["c"] = Sshd(roots["c"])
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        thaw(server)
        server.stop()


def freeze(server: Sshd) -> None:
    """SIGSTOP the peer's sshd and every session: a peer hung in the middle of a write."""
    assert server.proc is not None
    for pid in [server.proc.pid, *descendants(server.proc.pid)]:
        os.kill(pid, signal.SIGSTOP)


def thaw(server: Sshd) -> None:
    if server.proc is not None and server.proc.poll() is None:
        for pid in [server.proc.pid, *descendants(server.proc.pid)]:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def fan_config(tmp_path, peers) -> Config:
    known = tmp_path / "known_hosts"
    known.write_text("".join(server.known_hosts_line() for server in peers.values()))
    nodes = {"a": NodeConfig(url="http://127.0.0.2:8900", store=tmp_path / "a-audio")}
    for name, server in peers.items():
        (tmp_path / f"{name}-audio").mkdir()
        nodes[name] = NodeConfig(url=f"http://127.0.0.{ord(name) - ord('a') + 2}:8900", ssh_host="127.0.0.1",
                                 ssh_port=server.port, ssh_user=USER, store=tmp_path / f"{name}-audio")
    return Config(
        # Where this node's serve would answer: a free port, so whatever serve runs on this
        # machine at the default address cannot answer the models job's health check.
        serve=ServeConfig(node="a", host="127.0.0.1", port=free_port()),
        nodes=nodes,
        store=StoreConfig(path=tmp_path / "a-audio"),
        # peers left empty: every node that is not this one
        replicate=ReplicateConfig(known_hosts=known, key_file=peers["b"].client_key,
                                  local_models=tmp_path / "models", remote_models=tmp_path / "unused-models",
                                  queue_file=tmp_path / "q" / "replicate.sqlite", exclude=[], ack_timeout=5.0),
    )


def start(config: Config) -> tuple[Replicator, threading.Thread]:
    replicator = Replicator(config)
    thread = threading.Thread(target=replicator.run, kwargs={"install_signals": False, "models": False}, daemon=True)
    thread.start()
    return replicator, thread


def dst(config: Config, name: str) -> Path:
    store = config.nodes[name].store
    assert store is not None
    return store


def state(config: Config) -> dict:
    return json.loads(paths.state_path(config).read_text())


def test_every_result_reaches_every_peer_and_a_stopped_peer_catches_up(fan_config, peers):
    src = fan_config.store.path
    store = AudioStore(src)
    first = put_results(store, 0, 6)  # before the replicator starts: the catch-up scan finds them
    replicator, thread = start(fan_config)
    try:
        assert sorted(replicator.links) == ["b", "c"]
        assert wait_for(lambda: all(arrived(src, dst(fan_config, n), first) for n in "bc"), 30)
        peers["c"].stop()
        assert wait_for(lambda: not replicator.links["c"].connected, 30)
        second = put_results(store, 100, 10)
        # b gets them while c is away; c's own queue keeps them.
        assert wait_for(lambda: arrived(src, dst(fan_config, "b"), second), 30)
        assert wait_for(lambda: replicator.links["c"].queue.depth() >= 20, 10)
        assert replicator.links["b"].queue.depth() == 0
        assert not arrived(src, dst(fan_config, "c"), second)
        # The state file (serve's /health shows it) is rewritten by the links' loops: each peer, and the sums.
        assert wait_for(lambda: state(fan_config)["peers"]["c"]["queue_depth"] >= 20, 10)
        state_now = state(fan_config)
        assert state_now["peers"]["b"]["connected"] and not state_now["peers"]["c"]["connected"]
        assert state_now["queue_depth"] == sum(state_now["peers"][n]["queue_depth"] for n in "bc")
        assert not state_now["connected"] and state_now["last_error"].startswith("c: ")
        peers["c"].start()  # back (same port, same host key): it catches up from its queue
        assert wait_for(lambda: arrived(src, dst(fan_config, "c"), first + second), 60)
        assert wait_for(lambda: replicator.links["c"].queue.depth() == 0, 10)
    finally:
        replicator.stop()
        thread.join(10)


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket in a temp dir (NOTIFY_SOCKET)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def pinged_within(self, seconds: float) -> bool:
        """Whether a WATCHDOG=1 arrives within ``seconds`` (older ones are read first and ignored)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if b"WATCHDOG=1" in self.sock.recv(4096):
                    return True
            except TimeoutError:
                return False
        return False


def test_a_peer_hung_mid_write_delays_only_itself_and_stops_the_watchdog(fan_config, peers, tmp_path, monkeypatch):
    from ttsha.replicate import link

    # A write that never returns (longer than any SFTP timeout the link sets).
    monkeypatch.setattr(link, "IO_TIMEOUT_S", 300.0)
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s while every link makes progress
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    src = fan_config.store.path
    store = AudioStore(src)
    replicator, thread = start(fan_config)
    try:
        assert wait_for(lambda: all(link.connected and not link.scanning for link in replicator.links.values()), 30)
        assert notify.pinged_within(10)
        freeze(peers["c"])
        ids = put_results(store, 0, 8)
        assert wait_for(lambda: arrived(src, dst(fan_config, "b"), ids), 30)  # not behind c
        # c's loop sits in a write that never returns: no beat, so no watchdog ping
        # (while b's loop goes on beating: a thread merely alive proves nothing).
        assert wait_for(lambda: replicator.stalled(time.monotonic(), 2.0) == ["c"], 30)
        b_beat = replicator.links["b"].beat
        assert wait_for(lambda: replicator.links["b"].beat > b_beat, 5)
        assert not notify.pinged_within(3.0)
        assert not arrived(src, dst(fan_config, "c"), ids)
        thaw(peers["c"])
        assert wait_for(lambda: arrived(src, dst(fan_config, "c"), ids), 60)
        assert notify.pinged_within(10)
    finally:
        thaw(peers["c"])
        replicator.stop()
        thread.join(10)


def test_a_write_to_a_hung_peer_times_out_and_the_link_reconnects(fan_config, peers, monkeypatch):
    """Rather than holding its thread (and the watchdog) until systemd restarts the whole replicator."""
    from ttsha.replicate import link

    monkeypatch.setattr(link, "IO_TIMEOUT_S", 1.0)
    src = fan_config.store.path
    store = AudioStore(src)
    replicator, thread = start(fan_config)
    try:
        assert wait_for(lambda: all(lk.connected and not lk.scanning for lk in replicator.links.values()), 30)
        freeze(peers["c"])
        ids = put_results(store, 0, 4)
        assert wait_for(lambda: arrived(src, dst(fan_config, "b"), ids), 30)
        # The hung write fails after the timeout: c's link gives up its connection and says why.
        assert wait_for(lambda: "timeout" in replicator.links["c"].stats["last_error"].lower(), 30)
        assert not arrived(src, dst(fan_config, "c"), ids)
        thaw(peers["c"])
        assert wait_for(lambda: arrived(src, dst(fan_config, "c"), ids), 60)
    finally:
        thaw(peers["c"])
        replicator.stop()
        thread.join(10)


def caught_up(client: AckClient) -> bool:
    """The replicator answers (its socket is up) and says it is connected with nothing queued."""
    try:
        status = client.status()
    except AckUnavailable:
        return False
    return bool(status.get("connected")) and status.get("queue_depth") == 0


def test_acknowledgements_wait_for_ack_peers_of_the_peers(fan_config, peers):
    src = fan_config.store.path
    store = AudioStore(src)
    config = replace(fan_config, replicate=replace(fan_config.replicate, ack_peers=2))
    replicator, thread = start(config)
    client = AckClient(paths.socket_path(config))
    try:
        assert wait_for(lambda: caught_up(client), 30)
        rid = put_results(store, 0, 1)[0]
        rels = [f"{rid[:2]}/{rid}.json", f"{rid[:2]}/{rid}.wav"]
        client.ack(rels, 5.0)
        for name in "bc":  # both hold it once answered: ack_peers = 2
            assert all((dst(config, name) / rel).read_bytes() == (src / rel).read_bytes() for rel in rels)
        peers["c"].stop()
        assert wait_for(lambda: not client.status().get("connected"), 30)
        rid = put_results(store, 1, 1)[0]
        started = time.monotonic()
        with pytest.raises(AckUnavailable, match="1 of 2 peers connected, 2 needed"):
            client.ack([f"{rid[:2]}/{rid}.json"], 5.0)
        assert time.monotonic() - started < 2.5  # refused at once, not after the deadline
        assert "c: " in client.status()["last_error"]
    finally:
        replicator.stop()
        thread.join(10)
    # ack_peers = 1: the one connected peer is enough.
    replicator, thread = start(fan_config)
    client = AckClient(paths.socket_path(fan_config))
    try:
        assert wait_for(lambda: caught_up(client), 30)
        assert client.status()["peers_connected"] == ["b"]
        rid = put_results(store, 2, 1)[0]
        client.ack([f"{rid[:2]}/{rid}.json", f"{rid[:2]}/{rid}.wav"], 5.0)
        assert (dst(fan_config, "b") / rid[:2] / f"{rid}.wav").exists()
    finally:
        replicator.stop()
        thread.join(10)


# -- the counting of answers, with senders faked at their seam (submit) -------------
class FakeSender:
    def __init__(self, connected: bool = True, error: str = "", delay: float | None = 0.0) -> None:
        self.connected, self.error, self.delay = connected, error, delay
        self.jobs: list[_Job] = []

    def submit(self, rels, *, prepare=False, notify=None):
        job = _Job(list(rels), prepare=prepare, notify=notify)
        self.jobs.append(job)
        if self.delay is not None:  # None: never answers (a hung peer)
            threading.Timer(self.delay, job.finish, (self.error, self.delay)).start()
        return job


def fanout(tmp_path, needed, **senders):
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "r.json").write_text("{}")
    return AckFanout(tmp_path, senders, needed, lambda: {"last_error": "c: down"})


def ask(fan, timeout=2.0):
    return fan.handle({"op": "ack", "paths": ["ab/r.json"], "timeout": timeout})


def test_the_answer_comes_with_the_needed_peers_not_the_slowest(tmp_path):
    hung = FakeSender(delay=None)
    fan = fanout(tmp_path, 2, b=FakeSender(), c=FakeSender(delay=0.05), d=hung)
    started = time.monotonic()
    reply = ask(fan, timeout=10.0)
    assert reply["ok"] and reply["peers"] == ["b", "c"] and time.monotonic() - started < 5
    assert len(hung.jobs) == 1  # it was asked too: its own queue brings it the file anyway


def test_too_many_failures_answer_before_the_deadline(tmp_path):
    fan = fanout(tmp_path, 2, b=FakeSender(), c=FakeSender(error="EOFError"), d=FakeSender(error="timeout"))
    started = time.monotonic()
    reply = ask(fan, timeout=10.0)
    assert not reply["ok"] and "1 of 2 peers confirmed" in reply["error"] and "c: EOFError" in reply["error"]
    assert time.monotonic() - started < 5


def test_a_hung_peer_among_too_few_times_out_and_disconnected_peers_are_not_asked(tmp_path):
    fan = fanout(tmp_path, 2, b=FakeSender(), c=FakeSender(delay=None))
    reply = ask(fan, timeout=0.3)
    assert not reply["ok"] and "1 of 2 peers confirmed within 300 ms" in reply["error"]
    away = FakeSender(connected=False)
    fan = fanout(tmp_path, 2, b=FakeSender(), c=away)
    reply = ask(fan)
    assert not reply["ok"] and "1 of 2 peers connected, 2 needed (c: down)" in reply["error"] and away.jobs == []
    assert fanout(tmp_path, 1, b=FakeSender(), c=away).handle(
        {"op": "prepare", "paths": ["ab/s.wav"]}) == {"ok": True}
    assert not ask(fanout(tmp_path, 1, b=FakeSender()), timeout=0)["ok"]  # malformed: refused as before


def test_a_queue_from_before_fan_out_moves_to_every_peer(tmp_path):
    nodes = {name: NodeConfig(url=f"http://127.0.0.{i + 2}:8900") for i, name in enumerate("abc")}
    config = Config(serve=ServeConfig(node="a"), nodes=nodes, store=StoreConfig(path=tmp_path / "audio"),
                    replicate=ReplicateConfig(queue_file=tmp_path / "replicate.sqlite"))
    legacy = DurableQueue(paths.legacy_queue_path(config))
    legacy.put_many(["ab/r.json", "ab/r.wav"], closed_at=100.0)
    legacy.close()
    replicator = Replicator(config)
    # Made, as for a --once run beside the daemon: the old queue is left alone.
    assert paths.legacy_queue_path(config).exists() and replicator.links["b"].queue.depth() == 0
    replicator.migrate_legacy_queue()  # what the daemon does as it starts
    for name in "bc":
        pending = replicator.links[name].queue.peek()
        assert [p.rel for p in pending] == ["ab/r.json", "ab/r.wav"] and pending[0].closed_at == 100.0
        assert paths.queue_path(config, name) == tmp_path / f"replicate.{name}.sqlite"
    assert not paths.legacy_queue_path(config).exists()


def test_models_go_to_every_peer_and_one_that_is_down_does_not_stop_the_others(fan_config, peers, tmp_path):
    from ttsha.errors import TTSHAError

    models = fan_config.replicate.local_models
    (models / "voice").mkdir(parents=True)
    (models / "voice" / "model.bin").write_bytes(b"weights" * 1000)
    config = replace(fan_config, replicate=replace(fan_config.replicate, models="always",
                                                   remote_models=tmp_path / "b-models"))
    (tmp_path / "b-models").mkdir()
    peers["c"].stop()
    replicator = Replicator(config)
    with pytest.raises(TTSHAError, match=r"models sync failed for c: .*\(sent to b\)"):
        replicator.send_models_once()
    assert (tmp_path / "b-models" / "voice" / "model.bin").read_bytes() == b"weights" * 1000
    assert replicator.stats["models"]["b"]["files"] == 1 and "c" not in replicator.stats["models"]
