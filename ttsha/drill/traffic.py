"""What a drill asks the gateway for: texts, the mix of request kinds, the schedule.

Pure: no I/O, no clock. Everything random comes from one seed, chosen per
run and printed in the report, so a drill can be replayed (``--seed``) and
two drills never send the same "new" text: the seed is part of every new
sentence, so the second drill's new texts are new to the nodes' stores
instead of cache hits.

Three kinds of request, as clients of a TTS service send them:

* ``new``: a sentence no node has synthesized (a real synthesis);
* ``hot``: one of a few texts every drill repeats (a cache hit);
* ``fetch``: a download of audio acknowledged earlier in this drill (the
  ``X-Audio-Id`` of a ``new`` answer, or of the audio seeded before the fault).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..errors import UsageError

KINDS = ("new", "hot", "fetch")

#: At most this many requests in one drill, whatever rate and duration say.
MAX_REQUESTS = 100_000

#: Texts every drill repeats: after the first drill they are cache hits.
HOT_TEXTS = tuple(f"常用提示语第{i}条。" for i in range(1, 9))

#: A hundred common characters: a run's seed written as a short word of them
#: (digits would be read out as a long number and make every text slower).
_TAG = ("天地人和春夏秋冬东南西北山水风云花草木石金银红黄蓝绿白黑大小多少上下左右前后高低长短"
        "新旧快慢明暗早晚日月星光雨雪江河湖海林田家国心手口耳目言文字书画歌舞琴棋诗酒茶米面果鱼鸟马牛羊龙虎霞松竹梅兰桥路门窗")

#: Sentence shapes for new texts, short as prompts are; the run's tag and the request's number make them unique.
_NEW_SHAPES = (
    "演练{run}第{i}号请求。",
    "{run}演练，第{i}句新话。",
    "请稍候，{run}第{i}条。",
    "{run}演练第{i}段，系统切换中。",
)


def tag(seed: int) -> str:
    """``seed`` as a word of :data:`_TAG` characters (one per base-100 digit): distinct seeds, distinct words."""
    out = ""
    while True:
        seed, digit = divmod(seed, 100)
        out = _TAG[digit] + out
        if not seed:
            return out


def new_text(seed: int, i: int) -> str:
    """The ``i``-th new sentence of the run ``seed`` (never asked for by another run)."""
    return _NEW_SHAPES[i % len(_NEW_SHAPES)].format(run=tag(seed), i=i)


def seeded_text(seed: int, i: int) -> str:
    """Audio acknowledged before the fault and never asked for again: only replication keeps it (RPO)."""
    return f"演练{tag(seed)}前生成的第{i}段音频。"


def capacity_text(seed: int, i: int) -> str:
    """New texts for measuring capacity: shaped like the drill's (numbered past any drill request)."""
    return new_text(seed, MAX_REQUESTS + i)


def new_seed() -> int:
    """A fresh seed (six digits: short enough to read in a report, rare enough to repeat)."""
    return random.SystemRandom().randrange(100_000, 1_000_000)


@dataclass(frozen=True)
class Mix:
    """Relative weights of the request kinds (normalized when used)."""

    new: float = 0.5
    hot: float = 0.25
    fetch: float = 0.25

    def __post_init__(self) -> None:
        for kind in KINDS:
            value = getattr(self, kind)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"mix: {kind} must be a non-negative number, got {value!r}")
        if self.total <= 0:
            raise UsageError("mix: at least one of new, hot and fetch must be above 0")

    @property
    def total(self) -> float:
        return self.new + self.hot + self.fetch

    def share(self, kind: str) -> float:
        """The fraction of requests of ``kind``."""
        return getattr(self, kind) / self.total

    def describe(self) -> str:
        return ", ".join(f"{100 * self.share(k):.0f} % {k}" for k in KINDS)

    def to_dict(self) -> dict[str, float]:
        return {k: round(self.share(k), 4) for k in KINDS}

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``"new=0.5,hot=0.25,fetch=0.25"`` (kinds left out weigh 0)."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            kind, sep, raw = item.partition("=")
            kind = kind.strip()
            if not sep or kind not in KINDS:
                raise UsageError(f"mix: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}, got {item!r}")
            if kind in values:
                raise UsageError(f"mix: {kind} given twice")
            try:
                values[kind] = float(raw)
            except ValueError:
                raise UsageError(f"mix: {kind}: expected a number, got {raw.strip()!r}") from None
        return cls(**{k: values.get(k, 0.0) for k in KINDS})


@dataclass(frozen=True)
class Planned:
    """One request of the schedule."""

    index: int
    at: float  # seconds after the traffic starts
    kind: str


def schedule(rate: float, duration: float, mix: Mix, rng: random.Random) -> list[Planned]:
    """Evenly spaced requests at ``rate`` for ``duration`` seconds, kinds drawn by ``mix``.

    Open loop: a request's start time does not depend on how earlier ones
    went, so a stall shows as slow requests, not as fewer of them.
    """
    if not (rate > 0 and duration > 0):
        return []
    count = min(MAX_REQUESTS, int(rate * duration) + 1)
    weights = [getattr(mix, k) for k in KINDS]
    kinds = rng.choices(KINDS, weights=weights, k=count)
    return [Planned(i, i / rate, kind) for i, kind in enumerate(kinds) if i / rate < duration]


def rate_for_load(load: float, capacity_rps: float, mix: Mix) -> float:
    """The total request rate that puts ``load`` x capacity of new-text synthesis on the node.

    Capacity is measured in new texts per second (cache hits and downloads
    cost the node little); hot and fetch requests come on top, in the mix's
    proportions. A mix without new texts gets ``load`` x capacity in all.
    """
    share = mix.share("new")
    return load * capacity_rps / share if share > 0 else load * capacity_rps
