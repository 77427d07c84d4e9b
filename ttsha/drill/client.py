"""The drill's clients: HTTP through the gateway, the traffic loop, capacity.

The only I/O of the drill's traffic. :class:`Traffic` runs a schedule from
:mod:`.traffic` with a fixed number of client threads (bounded in count and
time); :func:`measure_capacity` finds how many new texts per second the
node behind the gateway synthesizes.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError, PeerUnreachable
from .stats import Sample
from .traffic import HOT_TEXTS, Planned, capacity_text, new_text

log = logging.getLogger(__name__)


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    resumed: int = 0  # body cut short, then completed with Range requests (as players do)


#: Range requests a client makes to complete one body cut short.
RESUMES = 2
#: An API key as ``Authorization: Bearer`` carries it (RFC 6750 token characters).
_API_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,256}=*")


def load_api_key(path: Path | None, key: str = "drill.api_key_file") -> str | None:
    """The API key the drill's clients send (None: not configured).

    The file holds one key (one of ``[nginx] api_keys_file``), and is refused
    unless only its owner can read it, as every secret of ttsha is; a key is
    never given on the command line, where ``ps`` would show it.
    """
    from ..protocol import load_secret

    data = load_secret(path, key)
    if data is None:
        return None
    try:
        token = data.decode("ascii")
    except UnicodeDecodeError:
        token = ""
    if not _API_KEY.fullmatch(token):
        raise ConfigError(f"{key}: {path} must hold one API key: 16 or more of A-Z a-z 0-9 . _ ~ + / -")
    return token


class Gateway:
    """A small HTTP client for the gateway (one connection per request: as clients do)."""

    def __init__(self, url: str, timeout: float = 30.0, api_key: str | None = None) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise PeerUnreachable(f"not a gateway URL: {url!r}")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        # Sent with every request when the gateway requires keys ([nginx] api_keys_file).
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method: str, path: str, body: dict | None = None) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
            headers = {"Content-Type": "application/json", **self._auth} if data else dict(self._auth)
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            got = {k.lower(): v for k, v in resp.getheaders()}
            try:
                return Response(resp.status, got, resp.read())
            except (http.client.IncompleteRead, OSError) as exc:
                partial = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
                return self._resume(resp.status, got, partial, exc)
        finally:
            conn.close()

    def _resume(self, status: int, headers: dict[str, str], partial: bytes, cut: Exception) -> Response:
        """Complete a body its node stopped sending mid-way, by Range from the gateway.

        A body can be cut after its headers left (the node died or was cut
        off while sending); no proxy can retry that. A player asks for the
        rest of the result by its id; with acknowledgements on, the standby
        held the file before its first byte was sent. Without an id or a
        length there is nothing to resume: the cut is re-raised.
        """
        audio_id, length = headers.get("x-audio-id"), headers.get("content-length", "")
        if status != 200 or not audio_id or not length.isdigit():
            raise cut
        body = partial
        for attempt in range(1, RESUMES + 1):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", f"/v1/audio/{audio_id}.wav", headers={"Range": f"bytes={len(body)}-", **self._auth})
                resp = conn.getresponse()
                rest = resp.read()
                if resp.status == 206:
                    body += rest
                    if len(body) == int(length):
                        log.info("drill: body of %s cut at %d bytes, completed by Range", audio_id, len(partial))
                        return Response(status, headers, body, resumed=attempt)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
        raise cut

    def synthesize(self, text: str) -> Response:
        return self.request("POST", "/v1/synthesize", {"text": text})

    def fetch(self, audio_id: str) -> Response:
        return self.request("GET", f"/v1/audio/{audio_id}.wav")


def call(gw: Gateway, kind: str, text_or_id: str) -> Sample:
    """One request; a :class:`Sample` with ``at`` = its monotonic start time."""
    started = time.monotonic()
    try:
        resp = gw.fetch(text_or_id) if kind == "fetch" else gw.synthesize(text_or_id)
    except (OSError, http.client.HTTPException) as exc:
        return Sample(started, kind, 0, time.monotonic() - started, error=str(exc) or type(exc).__name__)
    h = resp.headers
    return Sample(started, kind, resp.status, time.monotonic() - started, h.get("x-upstream", ""),
                  h.get("x-upstream-status", ""), h.get("x-cache", ""), h.get("x-audio-id", ""),
                  resumed=resp.resumed > 0)


class Traffic:
    """Runs a schedule with ``concurrency`` client threads.

    Each thread takes the next planned request, waits for its time and
    sends it: requests start on schedule while a client is free, so one
    stalled request does not hold the others back; when all clients are
    busy, requests start late and each records by how much (``lag_s``).
    Acknowledged new texts become what ``fetch`` requests download.
    """

    def __init__(self, gw: Gateway, plan: list[Planned], seed: int, concurrency: int,
                 acknowledged: list[str] | None = None) -> None:
        self.gw, self.plan, self.seed = gw, plan, seed
        self.concurrency = max(1, min(concurrency, len(plan) or 1))
        self.acknowledged = list(acknowledged or [])
        self.samples: list[Sample] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._next = 0
        self.sent = 0  # planned requests that went out (the rest: every client was busy until the end)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"drill-client-{i}", daemon=True)
                         for i in range(self.concurrency)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """No new request starts; those in flight finish (bounded by the client timeout)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for every client; True when all finished within ``timeout``."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def unsent(self) -> int:
        """Planned requests never sent: all clients were stuck on earlier ones until the traffic ended."""
        return len(self.plan) - self.sent

    @property
    def end_time(self) -> float:
        """When the last planned request is due (monotonic)."""
        return self.started_at + (self.plan[-1].at if self.plan else 0.0)

    def _take(self) -> tuple[Planned, str, str] | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self.plan):
                return None
            item = self.plan[self._next]
            self._next += 1
            kind = item.kind
            if kind == "fetch" and not self.acknowledged:
                kind = "hot"  # nothing acknowledged yet to download
            if kind == "fetch":
                return item, kind, self._rng.choice(self.acknowledged)
            if kind == "hot":
                return item, kind, self._rng.choice(HOT_TEXTS)
            return item, kind, new_text(self.seed, item.index)

    def _worker(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            item, kind, arg = job
            due = self.started_at + item.at
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            with self._lock:
                self.sent += 1
            sample = call(self.gw, kind, arg)
            sample.lag_s = max(0.0, sample.at - due)
            with self._lock:
                self.samples.append(sample)
                if kind == "new" and sample.ok and sample.audio_id:
                    self.acknowledged.append(sample.audio_id)


@dataclass(frozen=True)
class Capacity:
    """New texts per second the node behind the gateway completed, back to back."""

    rps: float
    requests: int
    failed: int
    seconds: float
    concurrency: int

    def to_dict(self) -> dict[str, float]:
        return {"rps": round(self.rps, 3), "requests": self.requests, "failed": self.failed,
                "seconds": round(self.seconds, 3), "concurrency": self.concurrency}


def measure_capacity(gw: Gateway, seed: int, concurrency: int, seconds: float = 5.0) -> Capacity:
    """Closed loop of new texts for ``seconds`` with ``concurrency`` clients (each
    starts a new request as soon as its last one ended); raises
    :class:`PeerUnreachable` when none succeeds."""
    lock = threading.Lock()
    counter = iter(range(1_000_000))
    ok = failed = 0
    ends: list[float] = []
    start = time.monotonic()
    deadline = start + seconds

    def worker() -> None:
        nonlocal ok, failed
        while time.monotonic() < deadline:
            with lock:
                i = next(counter)
            sample = call(gw, "new", capacity_text(seed, i))
            with lock:
                if sample.ok:
                    ok += 1
                    ends.append(sample.at + sample.latency_s)
                else:
                    failed += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + gw.timeout + 5)
    if not ok:
        raise PeerUnreachable(f"could not measure capacity: none of {failed} new-text requests through "
                              f"http://{gw.host}:{gw.port} succeeded")
    elapsed = max(ends) - start
    return Capacity(ok / elapsed, ok, failed, elapsed, max(1, concurrency))
