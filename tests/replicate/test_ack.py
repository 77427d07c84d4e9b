"""ack = "standby": serve answers a new result once the peer holds it, within a deadline, degrading honestly.

The gate's logic is tested directly with a fake replicator client (its designed
seam); everything else runs for real: the replicator's socket and SFTP path,
a real sshd on loopback, a serve node on a real socket.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from dataclasses import replace

import pytest

from ttsha.lab import descendants
from ttsha.replicate import ack, paths
from ttsha.replicate.ack import DEGRADED, SYNC, AckClient, AckGate, AckUnavailable
from ttsha.store import AudioStore

from ..server.conftest import SERVE, FakeEngine, Node
from .test_audio import put_results, start, wait_for

TIMEOUT = 0.3


class FakeReplicator:
    """The replicator as the gate sees it (AckClient's two calls)."""

    def __init__(self) -> None:
        self.status_reply: dict | Exception = {"ok": True, "connected": True, "queue_depth": 0}
        self.ack_error: Exception | None = None
        self.acks: list[list[str]] = []
        self.release: threading.Event | None = None
        self.called = threading.Event()

    def ack(self, paths, timeout):
        self.acks.append(paths)
        self.called.set()
        if self.release is not None:
            assert self.release.wait(10)
        if self.ack_error is not None:
            raise self.ack_error
        return 0.001

    def status(self, timeout=2.0):
        if isinstance(self.status_reply, Exception):
            raise self.status_reply
        return self.status_reply


def gate_with(fake, **kw):
    alerts = []
    gate = AckGate("standby", TIMEOUT, fake, alert=lambda *a: alerts.append(a), **kw)
    return gate, alerts


# -- the gate ---------------------------------------------------------------------
def test_the_gate_waits_only_once_the_replicator_has_caught_up():
    fake = FakeReplicator()
    gate, alerts = gate_with(fake)
    assert gate.state == DEGRADED and gate.confirm("a", ["a.json"]) == "async" and fake.acks == []
    fake.status_reply = {"ok": True, "connected": True, "queue_depth": 3}
    gate.poll()
    assert gate.state == DEGRADED  # connected, but still sending older files
    fake.status_reply = {"ok": True, "connected": True, "queue_depth": 0}
    gate.poll()
    assert gate.state == SYNC and alerts == []  # start-up is not news
    assert gate.confirm("b", ["b.json", "b.wav"]) == "confirmed" and fake.acks == [["b.json", "b.wav"]]
    assert gate.describe()["confirmed"] == 1


def test_a_failed_acknowledgement_degrades_alerts_and_recovers_by_itself():
    fake = FakeReplicator()
    gate, alerts = gate_with(fake)
    gate.poll()
    fake.ack_error = AckUnavailable("no answer from the replicator within 300 ms")
    assert gate.confirm("a", ["a.json"]) == "failed"
    state = gate.describe()
    assert state["state"] == DEGRADED and "300 ms" in state["reason"] and state["failed"] == 1
    assert [a[0] for a in alerts] == ["replication_degraded"] and alerts[0][2] == "critical"
    # Degraded: answered at once, the replicator's queue carries the result.
    assert gate.confirm("b", ["b.json"]) == "async" and len(fake.acks) == 1
    fake.status_reply = {"ok": True, "connected": True, "queue_depth": 2}
    gate.poll()
    assert gate.state == DEGRADED
    fake.status_reply = {"ok": True, "connected": True, "queue_depth": 0}
    gate.poll()
    assert gate.state == SYNC and [a[0] for a in alerts] == ["replication_degraded", "replication_recovered"]


def test_a_lost_link_or_replicator_degrades_before_a_request_finds_out():
    fake = FakeReplicator()
    gate, alerts = gate_with(fake)
    gate.poll()
    fake.status_reply = {"ok": True, "connected": False, "queue_depth": 0, "last_error": "EOFError"}
    gate.poll()
    assert gate.state == DEGRADED and "EOFError" in gate.reason
    fake.status_reply = {"ok": True, "connected": True, "queue_depth": 0}
    gate.poll()
    fake.status_reply = AckUnavailable("the replicator is not running")
    gate.poll()
    assert gate.state == DEGRADED and "not running" in gate.reason
    assert [a[0] for a in alerts] == ["replication_degraded", "replication_recovered", "replication_degraded"]


def test_a_replicator_that_never_catches_up_after_start_is_alerted():
    now = [0.0]
    fake = FakeReplicator()
    fake.status_reply = AckUnavailable("the replicator is not running")
    gate, alerts = gate_with(fake, clock=lambda: now[0])
    gate.poll()
    assert alerts == []
    now[0] = ack.STARTUP_GRACE_S + 1
    gate.poll()
    gate.poll()
    assert len(alerts) == 1 and "since start-up" in alerts[0][1]


def test_identical_requests_share_one_acknowledgement():
    fake = FakeReplicator()
    gate, _ = gate_with(fake)
    gate.poll()
    fake.release = threading.Event()
    results = []
    threads = [threading.Thread(target=lambda: results.append(gate.confirm("same", ["x.json"]))) for _ in range(3)]
    for t in threads:
        t.start()
    assert fake.called.wait(5)
    fake.release.set()
    for t in threads:
        t.join(5)
    assert results == ["confirmed"] * 3 and len(fake.acks) == 1


def test_local_mode_never_waits():
    gate = AckGate("local", TIMEOUT, None)
    assert gate.confirm("a", ["a.json"]) == "local" and gate.describe() == {"mode": "local", "state": "local",
                                                                            "since": gate.since}
    gate.poll()  # nothing to ask


def test_mode_follows_the_peer(rep_config):
    assert ack.mode(rep_config) == "standby"
    assert ack.mode(replace(rep_config, replicate=replace(rep_config.replicate, ack="local"))) == "local"
    assert ack.mode(replace(rep_config, replicate=replace(rep_config.replicate, peers=[]))) == "local"
    assert paths.socket_path(rep_config) == rep_config.replicate.queue_file.with_suffix(".sock")


# -- serve with the gate ------------------------------------------------------------
def test_a_stream_ends_only_once_the_standby_holds_the_result(tmp_path):
    fake = FakeReplicator()
    gate, _ = gate_with(fake)
    gate.poll()
    fake.release = threading.Event()
    node = Node(FakeEngine(), tmp_path / "store", SERVE, acks=gate)
    try:
        got: dict = {}

        def stream():
            conn = http.client.HTTPConnection(node.host, node.port, timeout=30)
            body = json.dumps({"text": "流式一。流式二。", "stream": True})
            conn.request("POST", "/v1/synthesize", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            got["id"] = resp.headers["X-Audio-Id"]
            got["body"] = resp.read()  # returns at the final (empty) chunk
            got["at"] = time.monotonic()

        reader = threading.Thread(target=stream)
        reader.start()
        assert fake.called.wait(10)
        reader.join(0.5)
        assert reader.is_alive() and "body" not in got  # the audio is out, the end of the stream is not
        released = time.monotonic()
        fake.release.set()
        reader.join(10)
        assert got["at"] >= released and len(got["body"]) > 44
        rid = got["id"]
        assert fake.acks == [[f"{rid[:2]}/{rid}.json", f"{rid[:2]}/{rid}.wav"]]
        # A cache hit does not wait for anything.
        resp, _ = node.client.synth(text="流式一。流式二。")
        assert resp.status == 200 and resp.headers["X-Cache"] == "HIT" and len(fake.acks) == 1
    finally:
        node.close()


def test_without_a_replicator_answers_at_once_and_says_degraded(tmp_path):
    gate = AckGate("standby", TIMEOUT, AckClient(tmp_path / "nobody.sock"))
    node = Node(FakeEngine(), tmp_path / "store", SERVE, acks=gate)
    try:
        resp, body = node.client.synth(text="没有复制进程。")
        assert resp.status == 200 and body[:4] == b"RIFF"
        resp, body = node.client.request("GET", "/health")
        health = json.loads(body)
        assert resp.status == 200 and health["status"] == "ready"  # degraded acks never fail health checks
        assert health["replication"]["ack"]["state"] == DEGRADED
        assert "not running" in health["replication"]["ack"]["reason"]
        _, body = node.client.request("GET", "/metrics")
        assert b"ttsha_replication_ack_degraded 1.0" in body
        assert b'ttsha_replication_acks_total{outcome="async"} 1.0' in body
    finally:
        node.close()


# -- the real thing: replicator, sshd, serve ------------------------------------------
@pytest.fixture
def acked(rep_config):
    """A replicator towards a real sshd and a serve node (fake engine) that waits for it."""
    config = replace(rep_config, replicate=replace(rep_config.replicate, ack_timeout=TIMEOUT))
    replicator, thread = start(config)
    alerts: list = []
    gate = AckGate("standby", TIMEOUT, AckClient(paths.socket_path(config)), alert=lambda *a: alerts.append(a))
    waits: list[float] = []
    confirm = gate.confirm

    def timed(key, paths):
        started = time.monotonic()
        try:
            return confirm(key, paths)
        finally:
            waits.append(time.monotonic() - started)

    gate.confirm = timed
    node = Node(FakeEngine(), config.store.path, SERVE, acks=gate)
    try:
        assert wait_for(lambda: gate.state == SYNC, 30), gate.describe()
        yield config, replicator, node, gate, alerts, waits
    finally:
        node.close()
        replicator.stop()
        thread.join(10)


def on_peer(config, rid: str) -> bool:
    src, dst = config.store.path, config.replicate.remote_store
    for ext in (".json", ".wav"):
        rel = f"{rid[:2]}/{rid}{ext}"
        if not (dst / rel).is_file() or (dst / rel).read_bytes() != (src / rel).read_bytes():
            return False
    return True


def health_ack(node) -> dict:
    _, body = node.client.request("GET", "/health")
    return json.loads(body)["replication"]["ack"]


def test_an_answered_result_is_already_on_the_standby(acked):
    config, replicator, node, gate, alerts, waits = acked
    ids = []
    for i in range(8):
        resp, body = node.client.synth(text=f"确认第{i}句。")
        assert resp.status == 200 and body[:4] == b"RIFF"
        ids.append(resp.headers["X-Audio-Id"])
        assert on_peer(config, ids[-1])  # at the instant the client holds the answer
    assert gate.counts["confirmed"] == 8 and health_ack(node)["state"] == SYNC
    assert not list(config.replicate.remote_store.rglob(".*.tmp"))
    # inotify queued the same files: whichever path comes second finds the
    # file on the peer; no file crosses the link twice.
    assert wait_for(lambda: replicator.links["standby"].queue.depth() == 0, 30)
    sent = replicator.links["standby"].acks.stats
    assert sent["sent"] + sent["present"] == 16 and sent["failed"] == 0
    assert sent["sent"] + replicator.links["standby"].stats["files_sent"] == 16, (sent, replicator.stats)
    # Once serve asks, the queue leaves new files to the acknowledgement path
    # (only the first result can have gone the other way).
    assert replicator.links["standby"].stats["files_sent"] <= 2, replicator.stats
    # A file written by other means still reaches the peer through the queue.
    other = put_results(AudioStore(config.store.path), 900, 1)
    assert wait_for(lambda: on_peer(config, other[0]), 30)
    _, metrics = node.client.request("GET", "/metrics")
    assert b'ttsha_replication_acks_total{outcome="confirmed"} 8.0' in metrics
    assert b"ttsha_replication_ack_degraded 0.0" in metrics
    assert alerts == []


def test_peer_outage_degrades_loses_nothing_and_clears_by_itself(acked, sshd_running):
    config, replicator, node, gate, alerts, waits = acked
    resp, _ = node.client.synth(text="停机之前。")
    assert resp.status == 200 and gate.counts["confirmed"] == 1
    sshd_running.stop()
    during = []
    for i in range(6):
        resp, _ = node.client.synth(text=f"停机期间第{i}句。")
        assert resp.status == 200
        during.append(resp.headers["X-Audio-Id"])
    state = health_ack(node)
    assert state["state"] == DEGRADED and state["failed"] + state["async"] == 6
    assert [a[0] for a in alerts] == ["replication_degraded"]
    # No request waited for the standby longer than ack_timeout.
    assert max(waits) < TIMEOUT + 0.1, waits
    sshd_running.start()
    assert wait_for(lambda: gate.state == SYNC, 90), gate.describe()
    assert all(on_peer(config, rid) for rid in during)  # caught up means: the standby holds them all
    assert [a[0] for a in alerts] == ["replication_degraded", "replication_recovered"]
    resp, _ = node.client.synth(text="恢复之后。")
    assert resp.status == 200 and on_peer(config, resp.headers["X-Audio-Id"])


def test_a_peer_that_stops_answering_costs_at_most_ack_timeout(acked, sshd_running):
    config, replicator, node, gate, alerts, waits = acked
    sessions = descendants(sshd_running.proc.pid)  # the processes serving the replicator's connection
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resp, _ = node.client.synth(text="对端冻结。")
        elapsed = time.monotonic() - started
        assert resp.status == 200 and gate.state == DEGRADED and "within 300 ms" in gate.reason
        assert waits[-1] < TIMEOUT + 0.1 and elapsed < TIMEOUT + 1.0, (waits, elapsed)
        rid = resp.headers["X-Audio-Id"]
    finally:
        for pid in sessions:
            os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: gate.state == SYNC, 60), gate.describe()
    assert on_peer(config, rid)


def test_durable_put_writes_syncs_and_renames_or_syncs_in_place(rep_config):
    from ttsha.replicate.link import peer_for

    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    first, second = put_results(AudioStore(src), 0, 2)
    peer = peer_for(rep_config, "standby", str(dst)).connect()
    try:
        lane = peer.channel()
        rels = [f"{second[:2]}/{second}.json", f"{second[:2]}/{second}.wav"]
        sent = peer.put_durable([(src, rel) for rel in rels], [lane])
        assert sent == sum((src / rel).stat().st_size for rel in rels)
        assert on_peer(rep_config, second) and not list(dst.rglob(".*.tmp"))
        assert int((dst / rels[1]).stat().st_mtime) == int((src / rels[1]).stat().st_mtime)  # the echo check's key
        # Copied already by the queue path: only synced where it is, nothing sent again.
        rels = [f"{first[:2]}/{first}.json", f"{first[:2]}/{first}.wav"]
        for rel in rels:
            peer.put(src, rel)
        assert peer.put_durable([(src, rel) for rel in rels], [lane], frozenset(rels)) == 0
        # A file believed there but gone is an error, never an acknowledgement.
        with pytest.raises(OSError):
            peer.put_durable([(src, "zz/gone.json")], [lane], frozenset({"zz/gone.json"}))
    finally:
        peer.close()


# -- files opened on the peer while the synthesis runs (prepare) -----------------------
@pytest.fixture
def sender(rep_config):
    """An AckSender on a real connection to the sshd, its thread running."""
    from ttsha.replicate.durable import AckFanout, AckSender, OnPeer, PathLocks
    from ttsha.replicate.link import peer_for

    src = rep_config.store.path
    peer = peer_for(rep_config, "standby", str(rep_config.replicate.remote_store)).connect()
    delivered: list[list[str]] = []
    s = AckSender(src, lambda: peer, PathLocks(), OnPeer(), lambda rels, since: delivered.append(rels))
    fan = AckFanout(src, {"standby": s}, 1, lambda: {"last_error": ""})
    thread = threading.Thread(target=s.run, daemon=True)
    thread.start()
    try:
        yield s, peer, delivered, fan
    finally:
        s.stop()
        thread.join(10)
        peer.close()


def result_rels(rid: str) -> list[str]:
    return [f"{rid[:2]}/{rid}.json", f"{rid[:2]}/{rid}.wav"]


def test_files_opened_ahead_are_written_synced_and_renamed_at_the_acknowledgement(rep_config, sender):
    s, peer, delivered, fan = sender
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    rid = put_results(AudioStore(src / "elsewhere"), 0, 1)[0]  # its id; written into the store below
    rels = result_rels(rid)
    assert fan.handle({"op": "prepare", "paths": rels}) == {"ok": True}  # before the files exist: no wait
    assert wait_for(lambda: s.stats["prepared"] == 1, 30), s.stats
    # Opened on the peer under tagged temp names, nothing in place yet; a
    # catch-up of this process does not take them for a dead sender's leftovers.
    temps = list(dst.rglob(".*.tmp"))
    assert len(temps) == 2 and all(f"-{os.getpid()}-ack.tmp" in t.name for t in temps), temps
    assert not on_peer(rep_config, rid)
    assert peer.stale_temps({str(t.relative_to(dst)): None for t in temps}) == []
    dead = f"{rid[:2]}/.{rid}.wav.ttsha-1-ack.tmp"  # another process's
    assert peer.stale_temps({dead: None}) == [dead]
    put_results(AudioStore(src), 0, 1)
    reply = fan.handle({"op": "ack", "paths": rels, "timeout": 10})
    assert reply["ok"], reply
    assert on_peer(rep_config, rid) and not list(dst.rglob(".*.tmp"))
    assert int((dst / rels[1]).stat().st_mtime) == int((src / rels[1]).stat().st_mtime)
    assert s.stats["prepared_used"] == 1 and s.stats["sent"] == 2 and delivered == [rels]


def test_an_acknowledgement_without_or_beside_an_opening_ahead_still_holds(rep_config, sender):
    s, peer, _, fan = sender
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    a, b = put_results(AudioStore(src), 10, 2)
    assert fan.handle({"op": "prepare", "paths": result_rels(a)}) == {"ok": True}
    assert wait_for(lambda: s.stats["prepared"] == 1, 30)
    # One batch: a was opened ahead, b was not (its files are opened now).
    reply = fan.handle({"op": "ack", "paths": result_rels(a) + result_rels(b), "timeout": 10})
    assert reply["ok"], reply
    assert on_peer(rep_config, a) and on_peer(rep_config, b) and not list(dst.rglob(".*.tmp"))
    assert s.stats["prepared_used"] == 1


def test_openings_nobody_asks_for_are_discarded(rep_config, sender, monkeypatch):
    from ttsha.replicate import durable

    s, peer, _, fan = sender
    dst = rep_config.replicate.remote_store
    rid = put_results(AudioStore(rep_config.store.path / "elsewhere"), 20, 1)[0]  # a synthesis that failed
    fan.handle({"op": "prepare", "paths": result_rels(rid)})
    assert wait_for(lambda: s.stats["prepared"] == 1, 30)
    assert len(list(dst.rglob(".*.tmp"))) == 2
    monkeypatch.setattr(durable, "PREPARED_TTL_S", 0.0)
    other = put_results(AudioStore(rep_config.store.path), 21, 1)[0]
    assert fan.handle({"op": "ack", "paths": result_rels(other), "timeout": 10})["ok"]  # a batch expires openings
    assert wait_for(lambda: not list(dst.rglob(".*.tmp")), 30), list(dst.rglob(".*.tmp"))
    assert not (dst / result_rels(rid)[1]).exists()


def test_openings_of_a_lost_connection_are_removed_on_the_next(rep_config, sender):
    s, peer, _, fan = sender
    dst = rep_config.replicate.remote_store
    rid = put_results(AudioStore(rep_config.store.path / "elsewhere"), 30, 1)[0]
    fan.handle({"op": "prepare", "paths": result_rels(rid)})
    assert wait_for(lambda: s.stats["prepared"] == 1, 30)
    s.close()  # as on a failure: the lanes and their handles are gone
    assert len(list(dst.rglob(".*.tmp"))) == 2
    s.lanes()
    assert not list(dst.rglob(".*.tmp"))


def test_a_bad_prepare_is_refused_without_waiting(sender):
    s, _, _, fan = sender
    assert not fan.handle({"op": "prepare", "paths": ["../out.wav"]})["ok"]
    assert not fan.handle({"op": "prepare", "paths": []})["ok"]


def test_the_gate_sends_hints_only_while_synchronous():
    fake = FakeReplicator()
    hinted: list = []
    fake.prepare = lambda paths, timeout=0.5: hinted.append(paths)
    fake.status_reply = {"ok": True, "connected": False, "queue_depth": 0}
    gate, _ = gate_with(fake)
    gate.start()
    try:
        gate.prepare(["ab/x.json"])  # degraded (not connected yet): no hint
        assert gate.state == DEGRADED
        fake.status_reply = {"ok": True, "connected": True, "queue_depth": 0}
        assert wait_for(lambda: gate.state == SYNC, 10)
        gate.prepare(["ab/y.json", "ab/y.wav"])
        assert wait_for(lambda: hinted == [["ab/y.json", "ab/y.wav"]], 10), hinted
    finally:
        gate.stop()


def test_a_hint_that_comes_after_its_acknowledgement_opens_nothing(rep_config, sender):
    s, _, _, fan = sender
    dst = rep_config.replicate.remote_store
    rid = put_results(AudioStore(rep_config.store.path), 40, 1)[0]
    assert fan.handle({"op": "ack", "paths": result_rels(rid), "timeout": 10})["ok"]
    assert fan.handle({"op": "prepare", "paths": result_rels(rid)}) == {"ok": True}
    other = put_results(AudioStore(rep_config.store.path), 41, 1)[0]
    assert fan.handle({"op": "ack", "paths": result_rels(other), "timeout": 10})["ok"]  # the hint was handled before
    assert s.stats["prepared"] == 0 and not list(dst.rglob(".*.tmp"))
