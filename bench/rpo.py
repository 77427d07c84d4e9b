"""What ``[replicate] ack = "standby"`` costs: cache misses and bursts, beside ``"local"``, same run.

The lab (real ``ttsha serve`` nodes, replicators both ways, sshd on
loopback) plus a second ``serve`` on the primary host with ``ack = "local"``,
sharing the primary's store and replicator: the two differ only in whether
an answer waits for the standby. Requests alternate between them one by one
(order flipped every pair) so a noisy machine affects both alike.

* added latency on a cache miss: median and p90 of the per-pair differences
  (standby minus local, one client, :data:`PAIRS` pairs), against the mean
  synthesis time of a typical sentence (:data:`SENTENCE`: 24 characters, as
  the middle sentences of bench/engine.py); and the server's own wait for the
  acknowledgement, request by request, which synthesis jitter does not
  reach (on a loaded machine the pairs differ by more than the wait): its
  median is held to the target, under 5 % of the synthesis;
* throughput of a burst of new texts from several clients, each setting in
  alternating rounds;
* what each setting loses when the whole primary host dies (its serve,
  replicator and sshd SIGKILLed at once) the instant a client holds an
  answer: answered results the standby does not have (not asserted here;
  tests/e2e/test_rpo.py holds ``"standby"`` to none).

Every loop is bounded in count and time.

    python bench/rpo.py              # everything
    python bench/rpo.py --no-crash   # latency and bursts only
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from ttsha.config import load, to_toml
from ttsha.lab import NODE_HOSTS, Lab, descendants
from ttsha.lab.layout import node_cpus

PAIRS = 60
#: A typical sentence: 24 characters with its punctuation (bench/engine.py's
#: middle sentences have 25 to 29). Each request makes it new with its own
#: three-digit number, so both settings synthesize texts of one length.
SENTENCE = "第{n}号未缓存的句子，比较两种确认方式的延迟。"
BURST_CLIENTS = 4
BURST_TEXTS = 12  # per client
BURST_ROUNDS = 2  # per setting
CRASH_ROUNDS = 5  # per setting
HOST = NODE_HOSTS["primary"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(conn: http.client.HTTPConnection, text: str) -> None:
    conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _metric(port: int, name: str) -> float:
    _, body = _get(port, "/metrics")
    match = re.search(rf"^{name} (\S+)", body.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def _ack_median_bucket(port: int, before: dict[str, float]) -> float:
    """The histogram bucket (upper bound, seconds) holding the median acknowledgement wait since ``before``."""
    _, body = _get(port, "/metrics")
    counts = {le: float(v) - before.get(le, 0.0) for le, v in
              re.findall(r'^ttsha_replication_ack_seconds_bucket\{le="([^"]+)"\} (\S+)', body.decode(), re.M)}
    total = counts.get("+Inf", 0.0)
    return next((float(le) for le, n in counts.items() if n >= total / 2), float("inf"))


def _ack_buckets(port: int) -> dict[str, float]:
    _, body = _get(port, "/metrics")
    return {le: float(v) for le, v in
            re.findall(r'^ttsha_replication_ack_seconds_bucket\{le="([^"]+)"\} (\S+)', body.decode(), re.M)}


def _ack_state(port: int) -> str:
    try:
        status, body = _get(port, "/health")
        if status != 200:
            return ""  # still starting
        return json.loads(body).get("replication", {}).get("ack", {}).get("state", "")
    except (OSError, ValueError):
        return ""


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _burst(port: int, tag: str) -> float:
    """Results per second for BURST_CLIENTS clients sending BURST_TEXTS new texts each."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        try:
            for i in range(BURST_TEXTS):
                _post(conn, f"{tag}，第{n}位客户的第{i}个句子，测量突发吞吐量。")
        except BaseException as exc:  # re-raised below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(BURST_CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return BURST_CLIENTS * BURST_TEXTS / (time.perf_counter() - started)


def _ready(port: int) -> bool:
    try:
        return _get(port, "/health")[0] == 200
    except OSError:
        return False


def _crash_round(lab: Lab, port: int, serve_pid: int, tag: str) -> tuple[int, int]:
    """New texts to the serve on ``port``; at its first answer, the primary host dies.
    Returns (answered, missing on the standby)."""
    sshd = lab.pid("sshd-primary")
    victims = [serve_pid, lab.pid("replicate-primary"), sshd, *descendants(sshd)]
    answered: list[tuple[str, str]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        for i in range(20):
            try:
                conn.request("POST", "/v1/synthesize", body=json.dumps({"text": f"{tag}，客户{n}的第{i}句。"}).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                return  # the host is gone
            with lock:
                if resp.status == 200:
                    answered.append((resp.headers["X-Audio-Id"], hashlib.sha256(body).hexdigest()))
                    for pid in victims:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    standby = http.client.HTTPConnection(NODE_HOSTS["standby"], lab.layout().node_ports["standby"], timeout=10)
    missing = 0
    for rid, digest in answered:
        standby.request("GET", f"/v1/audio/{rid}.wav")
        resp = standby.getresponse()
        body = resp.read()
        missing += resp.status != 200 or hashlib.sha256(body).hexdigest() != digest
    standby.close()
    return len(answered), missing


def measure(pairs: int = PAIRS, crash: bool = True) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ttsha-bench-rpo-"))
    lab = Lab(root)
    layout = lab.up(monitor=False)
    local_proc = None
    results: dict = {}
    try:
        ports = {"standby": layout.node_ports["primary"], "local": _free_port(HOST)}
        config = load(lab.node_config("primary"))
        local_cfg = replace(config, serve=replace(config.serve, port=ports["local"]),
                            replicate=replace(config.replicate, ack="local"))
        path = root / "ttsha-local.toml"
        path.write_text(to_toml(local_cfg), encoding="utf-8")
        log = open(root / "local.log", "ab")
        store = layout.node_dir("primary") / "audio"
        # On the primary's CPU, as the lab pins the primary's own serve (node_cpus):
        # the two serves differ only in ack.
        local_proc = subprocess.Popen([*node_cpus("primary"), sys.executable, "-m", "ttsha", "--config", str(path),
                                       "serve", "--host", HOST,
                                       "--port", str(ports["local"]), "--store", str(store)], stdout=log, stderr=log)
        log.close()
        _wait(lambda: _ack_state(ports["local"]) == "local", 120, "the ack = local serve")
        _wait(lambda: _ack_state(ports["standby"]) == "sync", 60, "synchronous acknowledgements")

        # 1. Cache misses, one at a time, alternating.
        conns = {mode: http.client.HTTPConnection(HOST, port, timeout=120) for mode, port in ports.items()}
        for mode in ports:
            _post(conns[mode], f"预热{mode}。")
        before = {mode: (_metric(p, "ttsha_synthesis_seconds_sum"), _metric(p, "ttsha_synthesis_seconds_count"))
                  for mode, p in ports.items()}
        ack_before = (_metric(ports["standby"], "ttsha_replication_ack_seconds_sum"),
                      _metric(ports["standby"], "ttsha_replication_ack_seconds_count"))
        buckets_before = _ack_buckets(ports["standby"])
        times: dict[str, list[float]] = {"local": [], "standby": []}
        for i in range(pairs):
            for mode in (("local", "standby") if i % 2 == 0 else ("standby", "local")):
                t0 = time.perf_counter()
                _post(conns[mode], SENTENCE.format(n=100 + 2 * i + (mode == "standby")))
                times[mode].append(time.perf_counter() - t0)
        for conn in conns.values():
            conn.close()
        synth = {}
        for mode, port in ports.items():
            total = _metric(port, "ttsha_synthesis_seconds_sum") - before[mode][0]
            count = _metric(port, "ttsha_synthesis_seconds_count") - before[mode][1]
            synth[mode] = total / count
        ack_n = _metric(ports["standby"], "ttsha_replication_ack_seconds_count") - ack_before[1]
        ack_s = (_metric(ports["standby"], "ttsha_replication_ack_seconds_sum") - ack_before[0]) / ack_n
        confirmed = _metric(ports["standby"], 'ttsha_replication_acks_total{outcome="confirmed"}')
        added = sorted(s - loc for s, loc in zip(times["standby"], times["local"], strict=True))
        results.update(
            pairs=pairs,
            sentence_chars=len(SENTENCE.format(n=100)),
            miss_local_p50_ms=1000 * statistics.median(times["local"]),
            miss_standby_p50_ms=1000 * statistics.median(times["standby"]),
            miss_local_p90_ms=1000 * _p90(times["local"]),
            miss_standby_p90_ms=1000 * _p90(times["standby"]),
            added_p50_ms=1000 * statistics.median(added),
            added_p90_ms=1000 * _p90(added),
            synthesis_ms=1000 * synth["local"],
            synthesis_standby_ms=1000 * synth["standby"],
            ack_wait_ms=1000 * ack_s,
            ack_p50_le_ms=1000 * _ack_median_bucket(ports["standby"], buckets_before),
            ack_confirmed=int(confirmed),
            ack_requests=int(ack_n),
        )

        # 2. Bursts of new texts, settings in alternating rounds.
        rates: dict[str, list[float]] = {"local": [], "standby": []}
        order = ["local", "standby", "standby", "local"] * ((BURST_ROUNDS + 1) // 2)
        for r, mode in enumerate(order[:2 * BURST_ROUNDS]):
            rates[mode].append(_burst(ports[mode], f"突发{r}{mode}"))
        results.update(
            burst_results=BURST_CLIENTS * BURST_TEXTS,
            burst_clients=BURST_CLIENTS,
            burst_rounds=BURST_ROUNDS,
            burst_local_rps=statistics.median(rates["local"]),
            burst_standby_rps=statistics.median(rates["standby"]),
            still_sync=_ack_state(ports["standby"]) == "sync",
        )

        if not crash:
            return results
        # 3. The whole primary host dies at the instant a client holds an answer.
        def start_local() -> subprocess.Popen:
            log = open(root / "local.log", "ab")
            proc = subprocess.Popen([*node_cpus("primary"), sys.executable, "-m", "ttsha", "--config", str(path),
                                     "serve", "--host", HOST,
                                     "--port", str(ports["local"]), "--store", str(store)], stdout=log, stderr=log)
            log.close()
            return proc

        crashes: dict[str, list[int]] = {"local": [0, 0], "standby": [0, 0]}
        # A replicator that was just asked for acknowledgements leaves new files
        # to that path for a moment; the local rounds start from a fresh one.
        replicator = lab.pid("replicate-primary")
        os.kill(replicator, signal.SIGTERM)
        _wait(lambda: subprocess.run(["kill", "-0", str(replicator)], capture_output=True).returncode != 0
              or open(f"/proc/{replicator}/stat").read().split(") ", 1)[1][0] == "Z", 30, "the replicator to stop")
        lab.start_replicate("primary")
        for r in range(2 * CRASH_ROUNDS):
            mode = ("local", "standby")[r % 2]
            # Ready: both serves up, the replicator connected and caught up (the
            # standby-mode serve's acknowledgements are synchronous then).
            _wait(lambda: _ready(ports["local"]) and _ack_state(ports["standby"]) == "sync", 180, "the pair")
            pid = local_proc.pid if mode == "local" else lab.pid("primary")
            n, missing = _crash_round(lab, ports[mode], pid, f"崩溃{r}{mode}")
            crashes[mode][0] += n
            crashes[mode][1] += missing
            lab.start_sshd("primary")
            if mode == "local":
                local_proc.wait(10)
                local_proc = start_local()
            else:
                lab.start_node("primary")
            # After a restart the replicator has seen no acknowledgement request
            # yet: it copies the local serve's results at once, as it would with
            # ack = "local" everywhere.
            lab.start_replicate("primary")
        results.update(crash_rounds=CRASH_ROUNDS, crash_local=crashes["local"], crash_standby=crashes["standby"])
    finally:
        if local_proc is not None:
            local_proc.terminate()
            local_proc.wait(30)
        lab.down()
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(r: dict) -> list[str]:
    synth = r["synthesis_ms"]
    rows = [
        '| metric | ack = "local" | ack = "standby" | difference | target |',
        "|---|---|---|---|---|",
        f"| cache miss of a typical sentence ({r['sentence_chars']} characters; synthesis {synth:.0f} ms, mean), "
        f"one client, {r['pairs']} pairs alternating: latency p50 / p90 | {r['miss_local_p50_ms']:.1f} / "
        f"{r['miss_local_p90_ms']:.1f} ms | {r['miss_standby_p50_ms']:.1f} / {r['miss_standby_p90_ms']:.1f} ms | "
        f"{r['added_p50_ms']:+.1f} ms = **{100 * r['added_p50_ms'] / synth:.1f} %** of the synthesis (median of the "
        f"pairs); p90 {r['added_p90_ms']:+.1f} ms = {100 * r['added_p90_ms'] / synth:.1f} % | |",
        f"| wait for the standby's acknowledgement, server side, per request (synthesis jitter left out): median, "
        f"mean of {r['ack_requests']} | - | <= {r['ack_p50_le_ms']:.1f} ms, {r['ack_wait_ms']:.1f} ms | median "
        f"<= **{100 * r['ack_p50_le_ms'] / synth:.1f} %**, mean {100 * r['ack_wait_ms'] / synth:.1f} % of the "
        "synthesis | < 5 % |",
        f"| burst: {r['burst_results']} new texts from {r['burst_clients']} clients (median of "
        f"{r['burst_rounds']} rounds each) | {r['burst_local_rps']:.2f} results/s | "
        f"{r['burst_standby_rps']:.2f} results/s | {r['burst_standby_rps'] / r['burst_local_rps']:.2f}x | |",
    ]
    if "crash_rounds" not in r:
        return rows
    return [
        *rows,
        f"| whole primary host killed at a client's first answer, {r['crash_rounds']} times each: answered results "
        f"missing on the standby | {r['crash_local'][1]} of {r['crash_local'][0]} | {r['crash_standby'][1]} of "
        f"{r['crash_standby'][0]} | | 0 with \"standby\" |",
    ]


if __name__ == "__main__":
    res = measure(crash="--no-crash" not in sys.argv[1:])
    print("\n".join(table(res)))
    print(json.dumps(res, indent=1))
