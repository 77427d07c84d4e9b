"""An outside client for the failover benchmark: the standard library, nothing of ttsha.

Run as its own process, as a user's client would be, so what it measures
owes nothing to ttsha's drill client. Two modes, JSON on stdout:

    python bench/client.py capacity --url URL --seconds 6 --concurrency 4 --seed 7
    python bench/client.py traffic --url URL --rate 8 --requests 160 --concurrency 16 \\
        --seed 7 --start-at MONOTONIC --timeout 75

``capacity``: new texts back to back (closed loop) for a while; how many per
second came back 200.

``traffic``: an open loop of exactly ``--requests`` requests, one every
``1/rate`` seconds from ``--start-at`` (a ``time.monotonic()`` value: the
clock is the same in every process of the machine, so the caller can place
a fault on it). Half are new texts (unique to the seed: real syntheses),
a quarter a few hot texts (cache hits after their first time), a quarter
downloads of audio this run was answered earlier. A request is sent when
it is due if a client thread is free, later otherwise; its time counts from
when it was due, so a stall cannot hide by delaying the requests behind it.
Each request is one connection, as a simple client does; a body cut short
counts as failed (no resuming).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from urllib.parse import urlsplit

#: Texts every run repeats: after their first time, cache hits.
HOT = ("欢迎使用语音合成服务。", "您的订单已发货，请注意查收。", "当前排队人数较多，请稍候。",
       "感谢您的来电，再见。", "系统即将进行维护。", "请在提示音后留言。")
#: Shapes of new texts; the run's tag and the request's number make each one unique.
_SHAPES = ("{tag}号客户第{i}次来电，请稍候。", "今天{tag}路段第{i}班车准点到达。", "{tag}仓库第{i}批货物已经入库。",
           "请{tag}组第{i}位同学到前台办理手续。")
_TAG = "春夏秋冬东南西北山水风云花草木石金银红黄蓝绿白黑天地日月星光江河湖海"


def tag(seed: int) -> str:
    """The seed as a short word (digits would be read out as a long number)."""
    out = ""
    while True:
        seed, digit = divmod(seed, len(_TAG))
        out = _TAG[digit] + out
        if not seed:
            return out


def new_text(seed: int, i: int) -> str:
    return _SHAPES[i % len(_SHAPES)].format(tag=tag(seed), i=i)


def kinds(seed: int, count: int) -> list[str]:
    """The kind of each request: 50 % new, 25 % hot, 25 % fetch (seeded)."""
    rng = random.Random(seed)
    return rng.choices(("new", "hot", "fetch"), weights=(2, 1, 1), k=count)


def call(host: str, port: int, timeout: float, method: str, path: str, body: bytes | None) -> dict:
    """One request on a fresh connection: status, the gateway's headers, or the error."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    out: dict = {"status": 0, "upstream": "", "upstream_status": "", "cache": "", "audio_id": "", "error": ""}
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        out.update(upstream=resp.getheader("X-Upstream", ""), upstream_status=resp.getheader("X-Upstream-Status", ""),
                   cache=resp.getheader("X-Cache", ""), audio_id=resp.getheader("X-Audio-Id", ""))
        data = resp.read()
        out["status"] = resp.status
        if resp.status != 200:
            out["error"] = data[:200].decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return out


def synthesize(host: str, port: int, timeout: float, text: str) -> dict:
    return call(host, port, timeout, "POST", "/v1/synthesize", json.dumps({"text": text}).encode())


def capacity(url: str, seconds: float, concurrency: int, seed: int, timeout: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lock = threading.Lock()
    numbers = iter(range(10**6, 2 * 10**6))  # past any traffic request of the same seed
    ends: list[float] = []
    failed = 0
    start = time.monotonic()

    def worker() -> None:
        nonlocal failed
        while time.monotonic() < start + seconds:
            with lock:
                i = next(numbers)
            answer = synthesize(host, port, timeout, new_text(seed, i))
            with lock:
                if answer["status"] == 200:
                    ends.append(time.monotonic())
                else:
                    failed += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 5)
    elapsed = (max(ends) - start) if ends else seconds
    return {"rps": len(ends) / elapsed, "ok": len(ends), "failed": failed, "seconds": elapsed,
            "concurrency": concurrency}


def traffic(url: str, rate: float, requests: int, concurrency: int, seed: int, start_at: float,
            timeout: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    plan = kinds(seed, requests)
    rng = random.Random(seed + 1)
    lock = threading.Lock()
    acknowledged: list[str] = []
    samples: list[dict] = []
    upcoming = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(upcoming, None)
                if i is None:
                    return
                kind = plan[i]
                if kind == "fetch" and not acknowledged:
                    kind = "hot"  # nothing answered yet to download
                arg = (rng.choice(acknowledged) if kind == "fetch" else rng.choice(HOT) if kind == "hot"
                       else new_text(seed, i))
            due = start_at + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            sent = time.monotonic()
            if kind == "fetch":
                answer = call(host, port, timeout, "GET", f"/v1/audio/{arg}.wav", None)
            else:
                answer = synthesize(host, port, timeout, arg)
            answer.update(i=i, kind=kind, due=due, sent=sent, end=time.monotonic())
            with lock:
                samples.append(answer)
                if kind == "new" and answer["status"] == 200 and answer["audio_id"]:
                    acknowledged.append(answer["audio_id"])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # bounded: every request ends within its timeout
    return {"seed": seed, "rate": rate, "requests": requests, "start_at": start_at,
            "samples": sorted(samples, key=lambda s: s["i"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    cap = sub.add_parser("capacity")
    run = sub.add_parser("traffic")
    for p in (cap, run):
        p.add_argument("--url", required=True)
        p.add_argument("--concurrency", type=int, default=4)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--timeout", type=float, default=75.0)
    cap.add_argument("--seconds", type=float, default=6.0)
    run.add_argument("--rate", type=float, required=True)
    run.add_argument("--requests", type=int, required=True)
    run.add_argument("--start-at", type=float, required=True, help="time.monotonic() of the first request")
    args = parser.parse_args(argv)
    if not (1 <= args.concurrency <= 256 and 0 < args.timeout <= 600):
        parser.error("--concurrency 1..256, --timeout up to 600 s")
    if args.mode == "capacity":
        result = capacity(args.url, min(args.seconds, 60.0), args.concurrency, args.seed, args.timeout)
    else:
        if not (0 < args.rate <= 1000 and 1 <= args.requests <= 10_000):
            parser.error("--rate up to 1000/s, --requests 1..10000")
        result = traffic(args.url, args.rate, args.requests, args.concurrency, args.seed, args.start_at,
                         args.timeout)
    json.dump(result, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
