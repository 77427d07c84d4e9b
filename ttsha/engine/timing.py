"""When each part of the text is said: per-character timestamps and subtitles.

A :class:`Timeline` is filled while an engine synthesizes (``Engine.stream``):
one cue per piece (a sentence or clause, as the front end cut the text),
timed by the samples actually produced, for every engine; and, for engines
that know each phone's duration (the embedded FastSpeech2 voice), one mark
per stretch of the source text that was said as a unit: a character, or a
token the normalizer rewrote ("12" said as "十二" is one mark).

Offsets count characters of the source text (the request's text as stored:
NFKC, whitespace collapsed; for SSML, its written text). Times are seconds
from the start of the audio, rounded to the millisecond, and always within
it. The timeline is stored in the result's sidecar, so a cached result gives
the same timestamps as the synthesis that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The ``timing`` entry of a sidecar has this version.
VERSION = 1


@dataclass(frozen=True)
class Mark:
    """Source characters ``[start, end)`` said from ``start_s`` to ``end_s``."""

    start: int
    end: int
    start_s: float
    end_s: float


@dataclass
class Timeline:
    """Cues (one per piece) and, when the engine knows them, marks (per character or token)."""

    text: str = ""
    cues: list[Mark] = field(default_factory=list)
    #: None: the engine does not report phone durations (see :attr:`unavailable`).
    marks: list[Mark] | None = None
    #: Why there are no marks, for the client.
    unavailable: str = ""

    def add_piece(self, span: tuple[int, int] | None, start_s: float, end_s: float,
                  syllables: list[tuple[tuple[int, int], float, float]] | None) -> None:
        """One synthesized piece: its source span, its audio, and its syllables
        (source span, start, end; seconds from the piece's start) when known."""
        if span is not None and end_s > start_s:
            self.cues.append(Mark(span[0], span[1], _ms(start_s), _ms(end_s)))
        if syllables is None or self.marks is None:
            return
        for source, begin, end in syllables:
            begin, end = _ms(min(start_s + begin, end_s)), _ms(min(start_s + end, end_s))
            last = self.marks[-1] if self.marks else None
            if last is not None and (last.start, last.end) == source:
                self.marks[-1] = Mark(last.start, last.end, last.start_s, max(last.end_s, end))
            else:
                self.marks.append(Mark(source[0], source[1], begin, max(begin, end)))

    # -- the sidecar -----------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "cues": [[m.start, m.end, m.start_s, m.end_s] for m in self.cues],
            "marks": None if self.marks is None else [[m.start, m.end, m.start_s, m.end_s] for m in self.marks],
            **({"unavailable": self.unavailable} if self.unavailable else {}),
            # The source text, when it is not the request's (SSML: the written text).
            **({"text": self.text} if self.text else {}),
        }

    @classmethod
    def from_json(cls, data: Any, text: str) -> Timeline | None:
        """The timeline a sidecar holds (None when it holds none, or one this version cannot read)."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return None
        try:
            cues = [_mark(entry) for entry in data["cues"]]
            marks = None if data["marks"] is None else [_mark(entry) for entry in data["marks"]]
        except (KeyError, TypeError, ValueError):
            return None
        source = data.get("text")
        return cls(source if isinstance(source, str) else text, cues, marks, str(data.get("unavailable", "")))

    # -- what clients see ------------------------------------------------
    def timestamps(self) -> list[dict[str, Any]] | None:
        """Per character (or rewritten token): its text, offset and length in the source, start and end."""
        if self.marks is None:
            return None
        return [{"text": self.text[m.start : m.end], "offset": m.start, "length": m.end - m.start,
                 "start": m.start_s, "end": m.end_s} for m in self.marks]

    def cue_texts(self) -> list[tuple[Mark, str]]:
        """Each cue with its text on one line."""
        return [(cue, " ".join(self.text[cue.start : cue.end].split())) for cue in self.cues]


def srt(timeline: Timeline) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank line between."""
    blocks = [f"{i}\n{_clock(cue.start_s, ',')} --> {_clock(cue.end_s, ',')}\n{text}\n"
              for i, (cue, text) in enumerate(timeline.cue_texts(), 1)]
    return "\n".join(blocks)


def vtt(timeline: Timeline) -> str:
    """WebVTT: the header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` (text escaped)."""
    blocks = ["WEBVTT\n"]
    for cue, text in timeline.cue_texts():
        blocks.append(f"{_clock(cue.start_s, '.')} --> {_clock(cue.end_s, '.')}\n{_vtt_escape(text)}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # Cue text is markup in WebVTT (and so "-->" cannot appear in it once ">" is escaped).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clock(seconds: float, comma: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{comma}{millis:03d}"


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds), 3)


def _mark(entry: Any) -> Mark:
    """A mark as stored: ``[start, end, start_s, end_s]``; TypeError/ValueError otherwise."""
    start, end, start_s, end_s = entry
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
        raise TypeError("not a number")
    return Mark(int(start), int(end), float(start_s), float(end_s))
