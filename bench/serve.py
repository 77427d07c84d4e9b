"""Serve benchmark: a real ``ttsha serve`` process on loopback, measured from outside.

* cache-hit latency p50/p99 (target p99 < 5 ms);
* ``/health`` p99 while every worker synthesizes (target < 5 ms): the
  article's service ran a full inference inside each health check;
* throughput on cache misses through HTTP vs calling the engine directly in a
  loop, alternating, same threads (server overhead target < 5 %);
* a node's throughput with 10 concurrent clients on new texts (QPS and CPU
  seconds per request) beside the engine's own in a tight loop with the same
  workers and threads (target within 15 %), for each worker x thread layout
  of the cores, and the article's figure (3.2 QPS, one node).

Every loop is bounded in count and time.

    python bench/serve.py
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TEXTS = [f"第{i}号测试句子，语音合成服务的吞吐量测量。" for i in range(1, 41)]
PAIRS = 30
#: Pause between the two sides of a pair: torch's OpenMP threads spin for a
#: while after each operation, and spinning in one process slows the other's
#: synthesis (the server's SCHED_IDLE workers most of all); not server overhead.
OMP_SETTLE_S = 0.05
MISS_TEXTS = [f"第{i}号未缓存的句子，用来比较服务与直接调用。" for i in range(1, 2 * PAIRS + 1)]
LONG = "当主节点失去响应时，网关会在两秒内把流量切换到备用节点，客户端不会看到任何失败的请求。"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(conn: http.client.HTTPConnection, text: str) -> int:
    conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _wav_size(node: ServeProcess, text: str) -> int:
    conn = node.conn()
    conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return len(resp.read())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: The article's own table: one node, its texts and hardware (not measured here).
ARTICLE_QPS = 3.2
CLIENTS = 10
#: Requests per throughput measurement: enough for the 10 clients to overlap for a while.
QPS_REQUESTS = 40
QPS_TAIL = "当主节点失去响应时网关会在两秒内把流量切换到备用节点客户端不会看到任何失败的请求"


def qps_texts(seed: int, count: int) -> list[str]:
    """``count`` new 45-character texts, unique to ``seed``; every seed's texts have the same lengths."""
    return [(f"第{seed}批{i:03d}号，" + QPS_TAIL)[:45] for i in range(count)]


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServeProcess:
    def __init__(self, workers: int, threads: int, priority: str = "idle", deadline: str = "20s") -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.port = _free_port()
        cfg = Path(self.tmp.name) / "ttsha.toml"
        cfg.write_text(
            f'[engine]\nthreads = {threads}\n[serve]\nport = {self.port}\nworkers = {workers}\nqueue_size = 64\n'
            f'worker_priority = "{priority}"\ndeadline = "{deadline}"\n'
            f'canary_interval = "1h"\n[store]\npath = "{self.tmp.name}/audio"\n'
        )
        exe = Path(sys.executable).with_name("ttsha")
        self.proc = subprocess.Popen([str(exe), "--config", str(cfg), "serve"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("serve did not become ready")

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.tmp.cleanup()


def overhead_pairs(node: ServeProcess, threads: int, pairs: int = PAIRS) -> dict:
    """The same kind of texts through HTTP and directly, alternating one by
    one (order flipped every pair) so that a noisy machine affects both alike.
    The direct loop runs in its own process too (as the server does), so both
    sides pay alike for sharing the CPU caches with another model.

    The overhead is the median of the per-pair ratios; the server's own
    synthesis time (from its /metrics) splits it into HTTP cost and the rest.
    """
    engine = subprocess.Popen([sys.executable, __file__, "--child", "direct", "0", str(threads)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8")
    assert engine.stdout.readline().strip() == "ready"

    def direct_synthesis(text: str) -> None:
        engine.stdin.write(text + "\n")
        engine.stdin.flush()
        assert engine.stdout.readline().strip() == "done"

    conn = node.conn()
    ratios, direct, http = [], 0.0, 0.0
    for i in range(pairs):
        mine, theirs = MISS_TEXTS[2 * i], MISS_TEXTS[2 * i + 1]
        if i % 2:
            mine, theirs = theirs, mine
        t0 = time.perf_counter()
        direct_synthesis(mine)
        direct_s = time.perf_counter() - t0
        time.sleep(OMP_SETTLE_S)
        t0 = time.perf_counter()
        assert _post(conn, theirs) == 200
        http_s = time.perf_counter() - t0
        time.sleep(OMP_SETTLE_S)
        ratios.append(http_s / direct_s)
        direct += direct_s
        http += http_s
    engine.stdin.close()
    engine.wait(30)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    server_s = float(re.search(r"^ttsha_synthesis_seconds_sum (\S+)", metrics, re.M).group(1))
    return {
        "pairs": pairs,
        "direct_s": direct,
        "http_s": http,
        "server_synth_s": server_s,
        "overhead": statistics.median(ratios) - 1,
        "http_layer_ms": 1000 * (http - server_s) / pairs,
    }


def node_throughput(workers: int, threads: int, seed: int, requests: int = QPS_REQUESTS) -> dict:
    """QPS of a real ``serve`` under ``CLIENTS`` concurrent clients sending new texts
    (a client process of its own), and the serve process's CPU seconds per request.

    The deadline is raised so that admission refuses nothing: this measures what
    the node can do, not when it would send requests to the other node."""
    node = ServeProcess(workers=workers, threads=threads, deadline="300s")
    try:
        cpu0 = _process_cpu(node.proc.pid)
        result = _child("qps", node.port, requests, seed)
        result["cpu_per_request"] = (_process_cpu(node.proc.pid) - cpu0) / result["requests"]
    finally:
        node.close()
    return result


def engine_throughput(workers: int, threads: int, seed: int, requests: int = QPS_REQUESTS) -> dict:
    """The same texts' syntheses with the engine called directly by ``workers`` threads in a tight loop."""
    out = subprocess.run([sys.executable, __file__, "--child", "direct-qps", str(workers), str(threads), str(seed),
                          str(requests)], check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout)


def throughput(rounds: int = 2) -> dict:
    """Node vs engine throughput for each workers x threads layout of the cores, alternating;
    the ratio per layout is the median of its rounds' node / engine QPS."""
    cores = os.cpu_count() or 2
    layouts = sorted({(w, max(1, cores // w)) for w in (1, cores)})
    runs: dict = {f"{w}x{t}": {"node": [], "engine": []} for w, t in layouts}
    seed = 0
    for r in range(rounds):
        for w, t in layouts if r % 2 == 0 else layouts[::-1]:
            for side in ("node", "engine") if r % 2 == 0 else ("engine", "node"):
                seed += 1
                measure_side = node_throughput if side == "node" else engine_throughput
                runs[f"{w}x{t}"][side].append(measure_side(w, t, seed))
    result: dict = {"clients": CLIENTS, "requests": QPS_REQUESTS, "rounds": rounds, "layouts": {}}
    for name, sides in runs.items():
        ratios = [n["qps"] / e["qps"] for n, e in zip(sides["node"], sides["engine"], strict=True)]
        result["layouts"][name] = {
            "node_qps": statistics.median(x["qps"] for x in sides["node"]),
            "engine_qps": statistics.median(x["qps"] for x in sides["engine"]),
            "node_cpu_per_request": statistics.median(x["cpu_per_request"] for x in sides["node"]),
            "engine_cpu_per_request": statistics.median(x["cpu_per_request"] for x in sides["engine"]),
            "node_latency_mean_s": statistics.median(x["latency_mean_s"] for x in sides["node"]),
            "failed": sum(x["failed"] for x in sides["node"]),
            "ratios": ratios,
            "ratio": statistics.median(ratios),
        }
    result["best"] = max(result["layouts"], key=lambda name: result["layouts"][name]["node_qps"])
    return result


def measure(hits: int = 500, health_probes: int = 300) -> dict:
    results: dict = {}
    threads = os.cpu_count() or 2
    results["throughput"] = throughput()
    # Server overhead: one worker with all cores, one client in sequence, vs a direct loop.
    node = ServeProcess(workers=1, threads=threads)
    try:
        results.update(overhead_pairs(node, threads))
    finally:
        node.close()
    # The same with workers at normal CPU priority: what SCHED_IDLE (which
    # keeps /health prompt under load) costs in throughput.
    node = ServeProcess(workers=1, threads=threads, priority="normal")
    try:
        results["normal_priority"] = overhead_pairs(node, threads)
    finally:
        node.close()

    # The default layout (2 workers, 1 torch thread each): cache hits measured
    # from a separate process that has no model loaded; then /health while
    # both workers synthesize cache misses sent by one process.
    results["workers"] = 2
    node = ServeProcess(workers=results["workers"], threads=max(1, threads // 2))
    try:
        results["wav_bytes"] = _wav_size(node, TEXTS[1])
        results.update(_child("hits", node.port, hits))
        results.update(first_chunk_ms(node.port))
        loader = subprocess.Popen([sys.executable, __file__, "--child", "load", str(node.port), "60"])
        time.sleep(2.0)
        results.update(_child("health", node.port, health_probes))
        loader.terminate()
        loader.wait(30)
    finally:
        node.close()
    results.update(floor_hits(hits, results["wav_bytes"]))
    results.update(floor_health(health_probes, busy=results["workers"]))
    return results


def first_chunk_ms(port: int, runs: int = 5) -> dict:
    """Time from sending a long paragraph with stream=1 to its first audio bytes."""
    times = []
    for i in range(runs):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = json.dumps({"text": f"第{i}次流式测试。" + LONG * 6, "stream": True}).encode()
        started = time.perf_counter()
        conn.request("POST", "/v1/synthesize", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read(44)  # the WAV header goes out before synthesis starts
        resp.read(1)
        times.append(1000 * (time.perf_counter() - started))
        resp.read()
        conn.close()
    return {"first_chunk_p50_ms": statistics.median(times), "first_chunk_max_ms": max(times),
            "paragraph_chars": len(LONG * 6)}


def _child(mode: str, port: int, count: int, *extra: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(port), str(count), *map(str, extra)], check=True,
        capture_output=True, text=True
    )
    return json.loads(out.stdout)


def floor_server(port: int, size: int) -> None:
    """Baseline: the same werkzeug threaded server with a trivial app returning
    ``size`` bytes, so the report separates the server's cost from ttsha's."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    payload = b"\0" * size
    health = json.dumps({"status": "ready", "workers_busy": 0, "queue_depth": 0}).encode()

    def app(environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ["PATH_INFO"] == "/health":
            return Response(health, mimetype="application/json")(environ, start_response)
        return Response(payload, mimetype="audio/wav")(environ, start_response)

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def _start_floor(size: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--child", "floor", str(port), str(size)],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port


def floor_hits(hits: int, size: int) -> dict:
    proc, port = _start_floor(size)
    try:
        result = _child("hits", port, hits)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"floor_p50_ms": result["hit_p50_ms"], "floor_p99_ms": result["hit_p99_ms"]}


def floor_health(probes: int, busy: int) -> dict:
    """Baseline for /health under load: the trivial werkzeug server while
    ``busy`` CPU-bound torch processes at the synthesis workers' priority
    (SCHED_IDLE) keep every core busy. What is left is the kernel's (and on a
    VM the hypervisor's) cost of waking a server next to busy cores."""
    proc, port = _start_floor(16)
    hogs = [subprocess.Popen([sys.executable, __file__, "--child", "hog", "0", "60"]) for _ in range(busy)]
    try:
        time.sleep(2.0)
        result = _child("health", port, probes)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)
        proc.terminate()
        proc.wait(10)
    return {"floor_health_p50_ms": result["health_p50_ms"], "floor_health_p99_ms": result["health_p99_ms"]}


def direct_loop(threads: int) -> None:
    """The engine called directly: one text per stdin line, "done" after each."""
    from ttsha.engine.embedded import EmbeddedEngine

    engine = EmbeddedEngine(threads=threads)
    engine.load()
    engine.synthesize("预热。")
    print("ready", flush=True)
    for line in sys.stdin:
        engine.synthesize(line.strip())
        print("done", flush=True)


def direct_qps(workers: int, threads: int, seed: int, requests: int) -> None:
    """The engine alone: ``workers`` threads share one model (as serve's workers
    do) and synthesize new texts back to back; JSON with QPS and CPU per request."""
    import queue

    from ttsha.engine.embedded import EmbeddedEngine

    engine = EmbeddedEngine(threads=threads)
    engine.load()
    engine.synthesize("预热。")
    texts: queue.SimpleQueue[str] = queue.SimpleQueue()
    for text in qps_texts(seed, requests):
        texts.put(text)

    def work() -> None:
        while True:
            try:
                text = texts.get_nowait()
            except queue.Empty:
                return
            engine.synthesize(text)

    pool = [threading.Thread(target=work) for _ in range(workers)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"qps": requests / elapsed, "cpu_per_request": cpu / requests, "requests": requests}))


def client_qps(port: int, requests: int, seed: int) -> None:
    """``CLIENTS`` threads, one keep-alive connection each, POST new texts until
    ``requests`` are done; JSON with QPS, mean latency and failures."""
    texts = iter(qps_texts(seed, requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failed = [0]

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                text = next(texts, None)
            if text is None:
                return
            t0 = time.perf_counter()
            status = _post(conn, text)
            with lock:
                latencies.append(time.perf_counter() - t0)
                failed[0] += status != 200

    clients = [threading.Thread(target=loop) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    elapsed = time.perf_counter() - t0
    print(json.dumps({"qps": (requests - failed[0]) / elapsed, "requests": requests, "failed": failed[0],
                      "latency_mean_s": statistics.mean(latencies), "seconds": elapsed}))


def hog(seconds: float) -> None:
    """One core of synthesis-like work (torch, one thread) at SCHED_IDLE, bounded in time."""
    import torch

    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    torch.set_num_threads(1)
    x = torch.randn(256, 256)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        x = torch.tanh(x @ x * 0.01)


def child(mode: str, port: int, count: int, *extra: int) -> None:
    """One child process: the baseline server, a CPU hog, the direct engine
    loop, or a client (no torch) that prints JSON results."""
    if mode == "qps":
        client_qps(port, count, *extra)
        return
    if mode == "direct-qps":
        direct_qps(port, count, *extra)
        return
    if mode == "floor":
        floor_server(port, count)
        return
    if mode == "hog":
        hog(count)
        return
    if mode == "direct":
        direct_loop(threads=count)
        return
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    deadline = time.monotonic() + 90
    if mode == "load":
        stop = time.monotonic() + count

        def loop(n: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            i = 0
            while time.monotonic() < stop and i < 500:
                _post(c, f"{LONG}{n}-{i}")
                i += 1

        workers = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(3)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(count + 120)
        return
    latencies, busy = [], []
    _post(conn, TEXTS[1]) if mode == "hits" else None
    gc.disable()  # as timeit does
    for _ in range(count):
        t0 = time.perf_counter()
        if mode == "hits":
            assert _post(conn, TEXTS[1]) == 200
        else:
            conn.request("GET", "/health")
            busy.append(json.loads(conn.getresponse().read())["workers_busy"])
        latencies.append(time.perf_counter() - t0)
        if mode == "health":
            time.sleep(0.01)
        if time.monotonic() > deadline:
            break
    gc.enable()
    prefix = "hit" if mode == "hits" else "health"
    result = {f"{prefix}_p50_ms": 1000 * _pct(latencies, 0.5), f"{prefix}_p99_ms": 1000 * _pct(latencies, 0.99)}
    if mode == "hits":
        result["hits"] = len(latencies)
    else:
        result["health_busy_mean"] = statistics.mean(busy)
    print(json.dumps(result))


def throughput_rows(t: dict) -> list[str]:
    """Markdown rows: node vs engine throughput per layout, and the article's figure."""
    rows = [
        f"| workers x torch threads | node: QPS at {t['clients']} clients, new 45-character texts | "
        "engine alone, same layout, tight loop | node / engine (target >= 0.85) | CPU s per request: node / engine |",
        "|---|---|---|---|---|",
    ]
    for name, x in t["layouts"].items():
        met = "met" if x["ratio"] >= 0.85 else "MISSED"
        best = " (best: the default)" if name == t["best"] else ""
        fails = f", {x['failed']} failed" if x["failed"] else ""
        rows.append(f"| {name}{best} | {x['node_qps']:.2f} (mean latency {x['node_latency_mean_s']:.1f} s{fails}) | "
                    f"{x['engine_qps']:.2f} | {x['ratio']:.2f} {met} (rounds: "
                    f"{', '.join(f'{v:.2f}' for v in x['ratios'])}) | "
                    f"{x['node_cpu_per_request']:.2f} / {x['engine_cpu_per_request']:.2f} |")
    rows.append(f"| the article's table: one node | {ARTICLE_QPS} QPS (its hardware and texts, not measured here) "
                "| | | |")
    return rows


def table(r: dict) -> list[str]:
    n = r["normal_priority"]
    return [*throughput_rows(r["throughput"]), "",
        "| metric | measured | target |",
        "|---|---|---|",
        f"| cache-hit latency p50 / p99 ({r['hits']} requests) "
        f"| {r['hit_p50_ms']:.2f} / {r['hit_p99_ms']:.2f} ms | p99 < 5 ms |",
        f"| baseline: same werkzeug server, trivial app, same {r['wav_bytes']} bytes | "
        f"{r['floor_p50_ms']:.2f} / {r['floor_p99_ms']:.2f} ms | ratio p50 {r['hit_p50_ms'] / r['floor_p50_ms']:.2f} |",
        f"| streaming: first audio bytes of a {r['paragraph_chars']}-character paragraph, median / max of 5 | "
        f"{r['first_chunk_p50_ms']:.0f} / {r['first_chunk_max_ms']:.0f} ms | < 200 ms |",
        f"| /health p50 / p99 with every worker synthesizing (mean busy {r['health_busy_mean']:.1f}) | "
        f"{r['health_p50_ms']:.2f} / {r['health_p99_ms']:.2f} ms | p99 < 5 ms |",
        f"| baseline: same werkzeug server, trivial app, {r['workers']} SCHED_IDLE torch processes busy | "
        f"{r['floor_health_p50_ms']:.2f} / {r['floor_health_p99_ms']:.2f} ms | "
        f"ratio p99 {r['health_p99_ms'] / r['floor_health_p99_ms']:.2f} |",
        f"| {r['pairs']} cache misses: HTTP (1 worker) vs the engine called directly, alternating | "
        f"{r['http_s']:.2f} s vs {r['direct_s']:.2f} s (median overhead {100 * r['overhead']:+.1f} %) | < 5 % |",
        f"| of which outside synthesis (HTTP, queue, store), per request | {r['http_layer_ms']:.1f} ms "
        f"(server synthesis {r['server_synth_s']:.2f} s) | |",
        f"| the same with `worker_priority = \"normal\"` | {n['http_s']:.2f} s vs {n['direct_s']:.2f} s "
        f"(median overhead {100 * n['overhead']:+.1f} %; outside synthesis {n['http_layer_ms']:.1f} ms) | |",
    ]


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--child":
        child(sys.argv[2], *(int(arg) for arg in sys.argv[3:]))
        sys.exit(0)
    if sys.argv[1:] == ["--throughput"]:
        res = throughput()
        print("\n".join(throughput_rows(res)))
        print(json.dumps(res, indent=2))
        sys.exit(0)
    res = measure()
    print("\n".join(table(res)))
    print(json.dumps(res, indent=2))
