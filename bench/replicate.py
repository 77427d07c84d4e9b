"""Replication benchmark: ttsha's replicator vs rsync over the same sshd, same run.

Uses the lab's standby sshd (loopback) and keys:

* audio lag p50/p99 for a steady stream (20 results/s, each a sidecar and a WAV);
* a burst of 1000 small files: ttsha (queue drain) vs ``rsync -a -e ssh``;
* a no-change sync of a large model tree (thousands of files) vs rsync.

Targets: lag p99 < 0.5 s; burst within 2x of rsync; no-change sync within 1.5x.

    python bench/replicate.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from ttsha.config import load
from ttsha.lab import NODE_HOSTS, Lab
from ttsha.replicate.daemon import Replicator
from ttsha.replicate.link import peer_for
from ttsha.replicate.sync import sync
from ttsha.store import AudioStore, result_id


def _rsync(src: Path, dst: Path, layout, dry: bool = False) -> float:
    ssh = (f"ssh -p {layout.ssh_port} -i {layout.ssh}/id_ed25519 -o UserKnownHostsFile={layout.ssh}/known_hosts "
           "-o StrictHostKeyChecking=yes -o BatchMode=yes")
    started = time.perf_counter()
    subprocess.run(["rsync", "-a", "-e", ssh, f"{src}/", f"{NODE_HOSTS['standby']}:{dst}/"], check=True)
    return time.perf_counter() - started


def _results(store: AudioStore, start: int, count: int, size: int = 20_000) -> None:
    for i in range(start, start + count):
        rid = result_id(engine="bench", model_version="v", voice="x", emotion="neutral", speed=1.0,
                        sample_rate=24000, text=f"基准{i}")
        store.put(rid, os.urandom(size), {"text": f"基准{i}"})


def measure(rate: float = 20.0, seconds: float = 10.0, burst: int = 1000, tree_files: int = 3000,
            rounds: int = 3) -> dict:
    if shutil.which("rsync") is None:
        raise SystemExit("rsync not found: apt-get install -y rsync")
    root = Path(tempfile.mkdtemp(prefix="ttsha-bench-rep-"))
    lab = Lab(root)
    layout = lab.up(monitor=False)
    # The lab's own replicators would compete: this benchmark drives its own.
    for name in ("replicate-primary", "replicate-standby"):
        pid = lab.pid(name)
        if pid:
            os.kill(pid, 15)
    results: dict = {}
    try:
        config = load(layout.config)
        work = root / "bench"
        # 1. Steady stream: lag from the file's completion to its rename on the standby.
        store_dir = work / "stream"
        # The peer's store is its [nodes.standby] store (the lab names one), here a directory of the bench's own.
        cfg = replace(config, store=replace(config.store, path=store_dir),
                      nodes={**config.nodes, "standby": replace(config.nodes["standby"], store=work / "stream-remote")},
                      replicate=replace(config.replicate, queue_file=work / "stream.sqlite"))
        (work / "stream-remote").mkdir(parents=True)
        replicator = Replicator(cfg, store_dir)
        thread = threading.Thread(target=replicator.run, kwargs={"install_signals": False, "models": False},
                                  daemon=True)
        thread.start()
        time.sleep(1.0)
        store = AudioStore(store_dir)
        n = int(rate * seconds)
        started = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            _results(store, i, 1)
        deadline = time.monotonic() + 60
        while replicator.links["standby"].queue.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        results["stream_files"] = 2 * n
        results["lag"] = replicator.lag_percentiles()
        replicator.stop()
        thread.join(10)

        # 2. Burst of small files: the same store content, ttsha vs rsync, each to an
        # empty target, in alternating rounds (a second each: one noisy moment would
        # decide a single pair); the ratio is the median of the rounds'.
        burst_dir = work / "burst"
        _results(AudioStore(burst_dir), 0, burst // 2, size=4000)

        def ours(target: Path) -> float:
            peer = peer_for(config, "standby", str(target)).connect()
            try:
                t0 = time.perf_counter()
                sync(burst_dir, peer, concurrency=config.replicate.concurrency)
                return time.perf_counter() - t0
            finally:
                peer.close()

        times: dict[str, list[float]] = {"ttsha": [], "rsync": []}
        for r in range(rounds):
            for name in (("ttsha", "rsync") if r % 2 == 0 else ("rsync", "ttsha")):
                target = work / f"burst-{name}-{r}"
                target.mkdir()
                times[name].append(ours(target) if name == "ttsha" else _rsync(burst_dir, target, layout))
        results["burst_ttsha_s"] = statistics.median(times["ttsha"])
        results["burst_rsync_s"] = statistics.median(times["rsync"])
        results["burst_ratio"] = statistics.median(t / r for t, r in zip(times["ttsha"], times["rsync"], strict=True))
        results["burst_rounds"] = rounds
        results["burst_files"] = burst

        # 3. No-change sync of a large model tree.
        tree = work / "models"
        for i in range(tree_files):
            path = tree / f"d{i % 50:02d}" / f"f{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(2048))
        (work / "models-ttsha").mkdir()
        (work / "models-rsync").mkdir()
        peer = peer_for(config, "standby", str(work / "models-ttsha")).connect()
        try:
            sync(tree, peer)
            t0 = time.perf_counter()
            nochange = sync(tree, peer)
            results["nochange_ttsha_s"] = time.perf_counter() - t0
            assert not nochange.changes
        finally:
            peer.close()
        _rsync(tree, work / "models-rsync", layout)
        results["nochange_rsync_s"] = _rsync(tree, work / "models-rsync", layout)
        results["tree_files"] = tree_files
    finally:
        lab.down()
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(r: dict) -> list[str]:
    lag = r["lag"]
    return [
        "| metric | ttsha | rsync | ratio | target |",
        "|---|---|---|---|---|",
        f"| audio lag p50 / p99, {r['stream_files']} files at 20 results/s | {1000 * lag['p50']:.0f} / "
        f"{1000 * lag['p99']:.0f} ms | - | - | p99 < 500 ms |",
        f"| burst of {r['burst_files']} small files (median of {r['burst_rounds']} rounds) "
        f"| {r['burst_ttsha_s']:.2f} s | "
        f"{r['burst_rsync_s']:.2f} s | {r['burst_ratio']:.2f} | <= 2 |",
        f"| no-change sync, {r['tree_files']} files | {r['nochange_ttsha_s']:.2f} s | {r['nochange_rsync_s']:.2f} s | "
        f"{r['nochange_ttsha_s'] / r['nochange_rsync_s']:.2f} | <= 1.5 |",
    ]


if __name__ == "__main__":
    import json

    res = measure()
    print("\n".join(table(res)))
    print(json.dumps(res, indent=1))
