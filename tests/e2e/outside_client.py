"""A client that is not ttsha's code: the Python standard library only.

    python outside_client.py traffic URL SECONDS RATE OUT.json
        POST a new text to URL/v1/synthesize RATE times a second for SECONDS
        (each on its own thread); OUT.json lists every request: wall-clock
        start, latency, status (0: no answer, after 15 s at most) and the
        error or the X-Upstream header.

It runs wherever the test puts it (e.g. ``ip netns exec`` in a namespace that
only reaches the gateways' virtual IP), so it imports nothing from ttsha.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def _request(url: str, method: str, path: str, body: bytes | None = None,
             timeout: float = 15.0) -> tuple[int, bytes, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("X-Upstream") or ""
    finally:
        conn.close()


def traffic(url: str, seconds: float, rate: float, out: str) -> None:
    """Open loop: a new request every 1/rate s, each on its own thread, so requests
    stuck on a frozen gateway never hold back the ones sent after them."""
    results: list[dict] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = json.dumps({"text": f"外部客户端的第{i}句话。"}, ensure_ascii=False).encode()
        started, t0 = time.time(), time.monotonic()
        try:
            status, _, upstream = _request(url, "POST", "/v1/synthesize", body)
            entry = {"at": started, "latency_s": time.monotonic() - t0, "status": status, "upstream": upstream}
        except (OSError, http.client.HTTPException) as exc:
            entry = {"at": started, "latency_s": time.monotonic() - t0, "status": 0,
                     "error": f"{type(exc).__name__}: {exc}"}
        with lock:
            results.append(entry)

    workers = []
    begin = time.monotonic()
    for i in range(int(seconds * rate)):
        time.sleep(max(0.0, begin + i / rate - time.monotonic()))
        worker = threading.Thread(target=one, args=(i,))
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.join()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    if sys.argv[1] != "traffic":
        sys.exit(f"usage: {sys.argv[0]} traffic URL SECONDS RATE OUT.json")
    traffic(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
