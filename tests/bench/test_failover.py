"""The failover benchmark's pure parts and its lock."""

from __future__ import annotations

import fcntl
import math
import subprocess
import sys

import failover
import pytest

from ttsha.errors import TTSHAError

A, B = "127.0.0.2:1", "127.0.0.3:1"
NAMES = {A: "primary", B: "standby"}


def sample(due: float, sent: float, end: float, status: int = 200, upstream: str = A, error: str = "",
           kind: str = "new") -> dict:
    return {"due": due, "sent": sent, "end": end, "status": status, "upstream": upstream, "error": error,
            "kind": kind, "upstream_status": "", "cache": ""}


def test_summarize_counts_from_when_each_request_was_due():
    fault_at = 100.0
    samples = [
        sample(99.0, 99.0, 99.2),
        # Sent 2.5 s late (every client busy), answered 1 s after: 3.5 s waited, a stall.
        sample(100.5, 103.0, 104.0, upstream=f"{A}, {B}"),
        sample(101.0, 101.0, 101.3, status=502, upstream=A, error="bad gateway"),
        sample(102.0, 102.0, 102.1, status=0, upstream="", error="TimeoutError: timed out"),
        sample(102.5, 102.5, 102.6, upstream=B),
    ]
    out = failover.summarize(samples, fault_at, B, NAMES)
    assert out["requests"] == 5
    assert out["failed"] == 2
    assert out["failures"] == {"502": 1, "TimeoutError": 1}
    assert math.isclose(out["max_latency_s"], 3.5)
    assert out["over_stall"] == 1
    assert math.isclose(out["first_success_on_standby"], 2.6)  # the earliest answer by B after the fault
    assert out["retried_by_gateway"] == 1
    assert [n["status"] for n in out["notable"]] == [200, 502, 0]
    assert out["notable"][0]["nodes"] == ["primary", "standby"]


def test_summarize_without_the_standby_serving():
    out = failover.summarize([sample(99.0, 99.0, 99.1), sample(101.0, 101.0, 101.1)], 100.0, B, NAMES)
    assert out["first_success_on_standby"] is None
    assert out["failed"] == 0 and out["notable"] == []


def test_monitor_events_relative_to_the_fault():
    events = [{"at": 50.0, "kind": "node_up", "node": "a"}, {"at": 100.7, "kind": "node_down", "node": "a"},
              {"kind": "broken"}]
    assert failover.monitor_events(events, 100.0) == [
        {"at": 0.7, "kind": "node_down", "node": "a", "detail": ""}]


def test_lab_lock_waits_for_its_holder_and_uses_an_inherited_one(tmp_path):
    lock = tmp_path / "lab.lock"
    holder = subprocess.Popen(["flock", str(lock), sys.executable, "-c",
                               "import sys; print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # runs only once flock holds the lock
        # Held by another process: bounded wait, then a clear error.
        with pytest.raises(TTSHAError, match="still held"):
            with failover.lab_lock(lock, wait=0.5):
                pass
    finally:
        holder.communicate("")
    # Given the lock by `flock FILE command` (an inherited descriptor): used, not waited for.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import failover, pathlib\n"
            "with failover.lab_lock(pathlib.Path(sys.argv[2]), wait=2): print('held')")
    out = subprocess.run(["flock", str(lock), sys.executable, "-c", code, str(failover.CLIENT.parent), str(lock)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "held", out.stderr
    # Released afterwards.
    with open(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_failure_groups_name_the_reason():
    notable = [
        {"status": 502, "due": -0.5, "nodes": ["primary"], "error": "<html> <head><title>502 Bad Gateway</title>"},
        {"status": 502, "due": 0.2, "nodes": ["primary"], "error": "<html> <head><title>502 Bad Gateway</title>"},
        {"status": 503, "due": 1.0, "nodes": ["primary"], "error": '{"error": "overloaded", "message": "x'},
        {"status": 200, "due": 2.0, "nodes": ["standby"], "error": ""},
    ]
    assert failover.failure_groups(notable) == {(502, "Bad Gateway", "primary"): [-0.5, 0.2],
                                                (503, "overloaded", "primary"): [1.0]}
