"""Hostile text: does a digit attack starve ``/health``, and what does the front end cost?

* ``/health`` p50 / p99 / max, probed every 20 ms from a separate process
  (no model, its own GIL): first with the node idle, then while three
  clients POST fresh 2000-digit strings back to back (issue 14's attack,
  which stalled /health for 0.6 s and had a healthy primary switched over).
  Target: p99 < 50 ms, well under the monitor's 0.5 s read timeout.
* normalizing 2000 digits: the old number patterns (retried from every digit
  of a run, O(n^2) inside one regex call that holds the GIL) against the
  current front end, on the same input in the same run.

Every loop is bounded in count and time.

    python bench/hostile.py
"""

from __future__ import annotations

import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve import ServeProcess, _pct  # noqa: E402

DIGITS = 2000
CLIENTS = 3
ATTACK_S = 15.0
PROBE_INTERVAL_S = 0.02
IDLE_S = 5.0


def _probe(port: int, seconds: float) -> list[float]:
    """Child process: /health latencies in ms, one probe every 20 ms, a fresh connection each (as the monitor)."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) < 10_000:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
            latencies.append(1000 * (time.perf_counter() - started))
        except OSError:
            latencies.append(5000.0)  # counted as a failed probe
        finally:
            conn.close()
        time.sleep(max(0.0, PROBE_INTERVAL_S - (time.perf_counter() - started)))
    return latencies


def _probe_in_child(port: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--probe", str(port), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def _attack(port: int, seconds: float, seed: int) -> list[int]:
    """One client: fresh digit strings back to back; the statuses."""
    rng = random.Random(seed)
    statuses = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(statuses) < 500:
        text = "".join(rng.choice("0123456789") for _ in range(DIGITS))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        except OSError:
            statuses.append(0)
        finally:
            conn.close()
    return statuses


def _stats(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "max": max(latencies)}


def normalization() -> dict:
    """Seconds to normalize 2000 digits: the old patterns vs the current front end (best of 3)."""
    from ttsha.engine.frontend import _UNIT_RE, normalize

    text = "1" * DIGITS
    old_patterns = [re.compile(r"(-?\d+(?:\.\d+)?)\s*%"), re.compile(rf"(-?\d+(?:\.\d+)?)\s*({_UNIT_RE})(?![A-Za-z])")]

    def old() -> None:
        for pattern in old_patterns:
            pattern.sub(lambda m: m.group(0), text)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    return {"old_patterns_ms": 1000 * best(old), "normalize_ms": 1000 * best(lambda: normalize(text))}


def measure() -> dict:
    result = normalization()
    node = ServeProcess(workers=2, threads=1)
    try:
        idle = _probe_in_child(node.port, IDLE_S)
        result["idle"] = _stats(json.loads(idle.communicate(timeout=IDLE_S + 60)[0]))
        probe = _probe_in_child(node.port, ATTACK_S)
        statuses: list[list[int]] = [[] for _ in range(CLIENTS)]
        clients = [threading.Thread(target=lambda i=i: statuses[i].extend(_attack(node.port, ATTACK_S, i)))
                   for i in range(CLIENTS)]
        for client in clients:
            client.start()
        result["attack"] = _stats(json.loads(probe.communicate(timeout=ATTACK_S + 60)[0]))
        for client in clients:
            client.join(180)
        flat = [s for per in statuses for s in per]
        result["posts"] = {str(code): flat.count(code) for code in sorted(set(flat))}
    finally:
        node.close()
    return result


def table(r: dict) -> list[str]:
    i, a = r["idle"], r["attack"]
    posts = ", ".join(f"{n} x {code}" for code, n in r["posts"].items())
    return [
        "| metric | measured | target |",
        "|---|---|---|",
        f"| /health p50 / p99 / max, idle node ({i['n']} probes) "
        f"| {i['p50']:.2f} / {i['p99']:.2f} / {i['max']:.2f} ms | |",
        f"| /health p50 / p99 / max, {CLIENTS} clients POSTing {DIGITS}-digit strings ({a['n']} probes) | "
        f"{a['p50']:.2f} / {a['p99']:.2f} / {a['max']:.2f} ms | p99 < 50 ms |",
        f"| the attack's POSTs in {ATTACK_S:.0f} s | {posts} | no 500 |",
        f"| normalizing {DIGITS} digits: old number patterns vs the front end now | "
        f"{r['old_patterns_ms']:.1f} ms vs {r['normalize_ms']:.2f} ms | linear |",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        print(json.dumps(_probe(int(sys.argv[2]), float(sys.argv[3]))))
        sys.exit(0)
    res = measure()
    print("\n".join(table(res)))
    print(json.dumps(res, indent=2))
