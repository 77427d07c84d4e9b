"""Real-time audio replication: inotify, the durable queue, outages and kill -9."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ttsha.config import to_toml
from ttsha.replicate.daemon import Replicator
from ttsha.store import AudioStore, result_id

from ..monitor.conftest import need_root

EXE = Path(sys.executable).with_name("ttsha")


def put_results(store: AudioStore, start: int, count: int) -> list[str]:
    ids = []
    for i in range(start, start + count):
        rid = result_id(engine="e", model_version="v", voice="x", emotion="neutral", speed=1.0, sample_rate=16000,
                        text=f"第{i}句")
        store.put(rid, b"RIFF" + hashlib.sha256(rid.encode()).digest() * 64, {"text": f"第{i}句"})
        ids.append(rid)
    return ids


def arrived(src: Path, dst: Path, ids: list[str]) -> bool:
    for rid in ids:
        for ext in (".json", ".wav"):
            rel = Path(rid[:2]) / f"{rid}{ext}"
            if not (dst / rel).exists() or (dst / rel).read_bytes() != (src / rel).read_bytes():
                return False
    return True


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start(config):
    replicator = Replicator(config)
    thread = threading.Thread(target=replicator.run, kwargs={"install_signals": False, "models": False}, daemon=True)
    thread.start()
    return replicator, thread


def test_results_arrive_in_real_time_sidecar_first(rep_config):
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    store = AudioStore(src)
    replicator, thread = start(rep_config)
    orphans = []
    done = threading.Event()

    def check_order():
        # On the standby, audio never appears without its sidecar.
        while not done.is_set():
            for wav in dst.glob("*/*.wav"):
                if not wav.with_suffix(".json").exists():
                    orphans.append(wav.name)
            time.sleep(0.002)

    checker = threading.Thread(target=check_order)
    checker.start()
    try:
        ids = put_results(store, 0, 40)
        assert wait_for(lambda: arrived(src, dst, ids), 30)
        assert wait_for(lambda: replicator.links["standby"].queue.depth() == 0, 10)
    finally:
        done.set()
        checker.join()
        replicator.stop()
        thread.join(10)
    assert orphans == []
    lag = replicator.lag_percentiles()
    assert lag["p50"] is not None and lag["p99"] < 10
    assert not list(dst.rglob(".*.tmp"))


def test_standby_outage_loses_nothing(rep_config, sshd_running):
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    store = AudioStore(src)
    replicator, thread = start(rep_config)
    try:
        first = put_results(store, 0, 5)
        assert wait_for(lambda: arrived(src, dst, first), 30)
        sshd_running.stop()
        during = put_results(store, 100, 60)
        time.sleep(1.5)
        assert not arrived(src, dst, during)
        assert replicator.links["standby"].queue.depth() > 0
        sshd_running.start()
        assert wait_for(lambda: arrived(src, dst, during), 60), "queue did not drain after the peer returned"
    finally:
        replicator.stop()
        thread.join(10)


def test_kill_9_mid_burst_then_restart(rep_config, tmp_path):
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(to_toml(rep_config))
    store = AudioStore(src)
    cmd = [str(EXE), "--config", str(cfg), "replicate"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # watching
        ids = put_results(store, 0, 150)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        ids += put_results(store, 150, 100)  # written while no replicator runs
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: arrived(src, dst, ids), 90), "files lost across kill -9"
    finally:
        proc.terminate()
        proc.wait(10)
    remote = sorted(p.name for p in dst.rglob("*") if p.is_file())
    assert len(remote) == len(set(remote)) == 2 * len(ids)  # exactly once, no temp leftovers


def test_inotify_overflow_triggers_a_catch_up_scan(rep_config):
    """With a tiny kernel event queue a burst overflows it; the scan still finds every file."""


    need_root("lowering fs.inotify.max_queued_events needs root")
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    store = AudioStore(src)
    before = knob.read_text()
    knob.write_text("8")  # read once, when the inotify instance is created
    try:
        replicator, thread = start(rep_config)
        link = replicator.links["standby"]
        assert wait_for(lambda: not link.scanning and link.connected, 30)
    finally:
        knob.write_text(before)
    try:
        ids = put_results(store, 0, 300)
        assert wait_for(lambda: arrived(src, dst, ids), 90), "files missed after an inotify overflow"
        assert replicator.stats["overflows"] >= 1  # the path under test was taken
    finally:
        replicator.stop()
        thread.join(10)
