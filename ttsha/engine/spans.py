"""Text that remembers where each of its characters came from.

The front end rewrites text before it is said: a lexicon's replacements,
normalization ("12" -> "十二"), pinyin marks, SSML's ``<sub>``. Timestamps
and subtitles must point at what the user wrote, so every rewrite goes
through :class:`Tracked`, which keeps for each character of the current text
the span ``[start, end)`` of the source it stands for. A character that a
rule wrote stands for the whole stretch the rule read ("十" and "二" both
stand for "12"); characters no rule touched keep their own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Span = tuple[int, int]


@dataclass(frozen=True)
class Tracked:
    """``text`` and, for each of its characters, the source span it stands for."""

    text: str
    spans: tuple[Span, ...]

    @classmethod
    def of(cls, text: str, offset: int = 0) -> Tracked:
        """``text`` as its own source, its first character at ``offset``."""
        return cls(text, tuple((offset + i, offset + i + 1) for i in range(len(text))))

    @classmethod
    def join(cls, parts: Iterable[Tracked]) -> Tracked:
        parts = list(parts)
        return cls("".join(p.text for p in parts), tuple(s for p in parts for s in p.spans))

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, item: slice) -> Tracked:
        return Tracked(self.text[item], self.spans[item])

    def source(self, start: int = 0, end: int | None = None) -> Span | None:
        """The source span that characters ``start:end`` stand for together (None when empty)."""
        spans = self.spans[start:end]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def edit(self, edits: Iterable[tuple[int, int, str]]) -> Tracked:
        """Replace ``text[start:end]`` by each ``replacement``; edits are ordered and do not overlap."""
        text: list[str] = []
        spans: list[Span] = []
        done = 0
        for start, end, replacement in edits:
            if self.text[start:end] == replacement:
                continue  # unchanged: its characters keep their own spans
            text.append(self.text[done:start])
            spans.extend(self.spans[done:start])
            where = self.source(start, end) or self._around(start)
            text.append(replacement)
            spans.extend([where] * len(replacement))
            done = end
        if not text:
            return self
        text.append(self.text[done:])
        spans.extend(self.spans[done:])
        return Tracked("".join(text), tuple(spans))

    def _around(self, at: int) -> Span:
        """The source of an insertion at ``at``: the character before it (else after it)."""
        if at > 0:
            return self.spans[at - 1]
        if self.spans:
            return self.spans[0]
        return (0, 0)

    def sub(self, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> Tracked:
        """As ``pattern.sub(replace, text)`` (the same matches, so the same text)."""
        return self.edit((m.start(), m.end(), replace(m)) for m in pattern.finditer(self.text))

    def replace(self, old: str, new: str) -> Tracked:
        """As ``str.replace``."""
        if old not in self.text:
            return self
        return self.sub(re.compile(re.escape(old)), lambda m: new)

    def nfkc(self) -> Tracked:
        """NFKC, each base character with the combining marks after it mapped together."""
        if unicodedata.is_normalized("NFKC", self.text):
            return self
        whole = unicodedata.normalize("NFKC", self.text)
        clusters = [m.span() for m in _CLUSTER.finditer(self.text)]
        result = self.edit((s, e, unicodedata.normalize("NFKC", self.text[s:e])) for s, e in clusters)
        if result.text != whole:
            # Composition across clusters (rare: Hangul jamo): the whole text stands for the whole source.
            return Tracked(whole, (self.source() or (0, 0),) * len(whole))
        return result


_CLUSTER = re.compile(r".[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\u3099\u309a]*", re.S)
