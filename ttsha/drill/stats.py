"""What the clients saw, in numbers: windows, percentiles, failures, RTO, the
slowest requests and why.

Pure functions of :class:`Sample` lists and event lists; times are seconds
relative to the fault (negative: before it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The "during" window: the first seconds after the fault, where failover happens.
DURING_S = 5.0
WINDOWS = ("before", "during", "after")
#: A request that started this much later than scheduled waited for a free client.
LATE_S = 0.5


@dataclass
class Sample:
    """One request as the client saw it."""

    at: float  # when it was sent, seconds relative to the fault
    kind: str  # new, hot or fetch
    status: int  # 0: no HTTP answer
    latency_s: float
    upstream: str = ""  # Nginx's X-Upstream: "addr" or "addr1, addr2" when retried
    upstream_status: str = ""  # Nginx's X-Upstream-Status, in the same order
    cache: str = ""  # the node's X-Cache: HIT or MISS
    audio_id: str = ""
    error: str = ""
    lag_s: float = 0.0  # how much later than scheduled it was sent
    resumed: bool = False  # its body was cut mid-way and completed with Range (counted, not failed)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def retried(self) -> bool:
        return "," in self.upstream

    @property
    def end(self) -> float:
        return self.at + self.latency_s

    @property
    def waited_s(self) -> float:
        """From when the request was due to its answer: what a user would have waited.

        Counting from the send alone would hide the time a request could not
        go out because every client was stuck on slower ones (coordinated omission).
        """
        return self.lag_s + self.latency_s


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def window_of(at: float, during_s: float = DURING_S) -> str:
    if at < 0:
        return "before"
    return "during" if at < during_s else "after"


def latency_table(samples: list[Sample], during_s: float = DURING_S) -> dict[str, dict[str, float]]:
    """Per window: request count and p50/p99/max latency in ms, counted from when each was due (NaN when empty)."""
    groups: dict[str, list[float]] = {name: [] for name in WINDOWS}
    for s in samples:
        groups[window_of(s.at, during_s)].append(s.waited_s)
    return {
        name: {"n": len(values), "p50": 1000 * percentile(values, 0.5), "p99": 1000 * percentile(values, 0.99),
               "max": 1000 * max(values, default=math.nan)}
        for name, values in groups.items()
    }


def failure_key(sample: Sample) -> str:
    return str(sample.status or "connection")


def failures(samples: list[Sample]) -> dict[str, int]:
    """Failed requests by status ("connection" when there was no HTTP answer)."""
    return dict(Counter(failure_key(s) for s in samples if not s.ok))


def failures_by_kind(samples: list[Sample]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        if not s.ok:
            out.setdefault(s.kind, {}).setdefault(failure_key(s), 0)
            out[s.kind][failure_key(s)] += 1
    return out


def kinds(samples: list[Sample]) -> dict[str, int]:
    return dict(Counter(s.kind for s in samples))


def first_success_on(samples: list[Sample], address: str) -> float | None:
    """When the first request after the fault answered by ``address`` (host:port) completed."""
    ends = [s.end for s in samples if s.at >= 0 and s.ok and last_upstream(s) == address]
    return min(ends, default=None)


def last_upstream(sample: Sample) -> str:
    """The node that gave the final answer (Nginx lists every node it tried)."""
    return sample.upstream.rsplit(",", 1)[-1].strip()


def rto(samples: list[Sample], first_ok_on_standby: float | None) -> float | None:
    """Seconds from the fault to the last failed request or to the first success
    on the standby, whichever is later; None when neither happened (no
    failover was seen: the drill cannot tell how long one takes)."""
    failed_after = [s.end for s in samples if s.at >= 0 and not s.ok]
    if first_ok_on_standby is None and not failed_after:
        return None
    return max([0.0, *failed_after, first_ok_on_standby or 0.0])


def new_cached(samples: list[Sample]) -> int:
    """New-text requests a node answered from its cache: the traffic was not new
    (a repeated seed), or a retried request found its own result replicated."""
    return sum(1 for s in samples if s.kind == "new" and s.ok and s.cache == "HIT")


def explain(sample: Sample, names: dict[str, str], concurrency: int | None = None) -> str:
    """Why a request took as long as it did, from what the gateway and the node told the client."""

    def name(address: str) -> str:
        return names.get(address, address or "?")

    parts = []
    if sample.status == 0:
        parts.append(f"no answer ({sample.error or 'connection failed'})")
    hops = [a.strip() for a in sample.upstream.split(",") if a.strip()]
    codes = [c.strip() for c in sample.upstream_status.split(",")] if sample.upstream_status else []
    if len(hops) > 1:
        tried = [f"{name(a)} ({codes[i]})" if i < len(codes) else name(a) for i, a in enumerate(hops)]
        parts.append("retried by the gateway: " + " then ".join(tried))
    elif hops:
        parts.append(f"answered by {name(hops[0])}")
    if sample.status and sample.status != 200:
        parts.append(f"status {sample.status}")
    if sample.cache:
        parts.append("cache hit" if sample.cache == "HIT" else "synthesized")
    if sample.resumed:
        parts.append("body cut mid-way, completed by Range from the standby")
    if sample.lag_s >= LATE_S:
        busy = f"all {concurrency} clients busy" if concurrency else "no free client"
        parts.append(f"sent {sample.lag_s:.1f} s late ({busy})")
    return "; ".join(parts) or "-"


def slowest(samples: list[Sample], names: dict[str, str], n: int = 5, concurrency: int | None = None,
            during_s: float = DURING_S) -> list[dict[str, Any]]:
    """The ``n`` slowest requests (:attr:`Sample.waited_s`), each with its window and :func:`explain`."""
    top = sorted(samples, key=lambda s: s.waited_s, reverse=True)[:n]
    return [
        {"at": round(s.at, 3), "latency_s": round(s.waited_s, 3), "sent_late_s": round(s.lag_s, 3), "kind": s.kind,
         "status": s.status,
         "window": window_of(s.at, during_s), "upstream": s.upstream, "upstream_status": s.upstream_status,
         "retried": s.retried, "why": explain(s, names, concurrency)}
        for s in top
    ]


def around_move(samples: list[Sample], moved_at: float | None) -> dict[str, int]:
    """Requests started before the virtual IP moved (in flight on, or sent to, the faulted
    gateway) and after it, with the failures of each; before all, when it never moved."""
    cut = math.inf if moved_at is None else moved_at
    before = [s for s in samples if s.at < cut]
    after = [s for s in samples if s.at >= cut]
    return {"before_move": len(before), "failed_before_move": sum(not s.ok for s in before),
            "after_move": len(after), "failed_after_move": sum(not s.ok for s in after)}


def first_answer_after(samples: list[Sample], moved_at: float | None) -> float | None:
    """When the first request started after the move was answered (None: none was)."""
    if moved_at is None:
        return None
    return min((s.end for s in samples if s.at >= moved_at and s.ok), default=None)
