"""The SSML subset of ttsha's own route, parsed safely and mapped onto an engine.

Elements::

    <speak>                                   the root, once
    <break time="500ms"/> or strength="…"     a pause (at most MAX_BREAK_S)
    <prosody rate pitch volume>               speed, pitch and loudness of what it holds (nestable)
    <say-as interpret-as="digits|telephone|date|characters" format="ymd|mdy|dmy">
    <sub alias="…">                           say the alias instead of the text
    <phoneme alphabet="pinyin" ph="hang2">    say these syllables for the text
    <s>, <p>                                  a sentence, a paragraph: a pause after

Parsing is expat's, with any DOCTYPE refused (so no entity can be declared:
no XXE, no billion laughs), at most :data:`MAX_DEPTH` levels and
:data:`MAX_ELEMENTS` elements. Anything else is a :class:`SSMLError` (400)
naming the element or attribute.

The written text (every character of text in the document) is the source
that timestamps and subtitles point into; what is said for it is the
element's reading. For an engine with ttsha's front end (the embedded
voice), readings are done here: say-as by the normalizer's readers, sub by
its alias, phoneme by pinyin marks the phone mapper reads, prosody by the
engine's speed and pitch controls and a gain. An engine that reads SSML
itself (Sambert) gets its own elements back for each piece
(:attr:`~.frontend.Piece.markup`): break, say-as, sub and phoneme (its
alphabet is called "py"); what it has no element for (prosody's rate and
pitch) is refused for it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from ..errors import InputError
from .frontend import CLAUSE_END, PLAIN, SENTENCE_END, Delivery, Piece, split_sentences
from .lexicon import parse_pinyin, pinyin_marks
from .normalize import normalize_tracked, read_digits
from .spans import Tracked

if TYPE_CHECKING:
    from .base import Engine
    from .lexicon import Lexicon

#: Deepest nesting of elements, and most elements, in one document.
MAX_DEPTH = 16
MAX_ELEMENTS = 500
#: Longest single ``<break>``.
MAX_BREAK_S = 10.0

_ATTRIBUTES: dict[str, frozenset[str]] = {
    "speak": frozenset({"version", "xmlns", "xml:lang", "xmlns:xsi", "xsi:schemaLocation"}),
    "break": frozenset({"time", "strength"}),
    "prosody": frozenset({"rate", "pitch", "volume"}),
    "say-as": frozenset({"interpret-as", "format"}),
    "sub": frozenset({"alias"}),
    "phoneme": frozenset({"alphabet", "ph"}),
    "s": frozenset(),
    "p": frozenset(),
}
#: Elements that hold only text (their reading replaces it whole).
_LEAVES = ("say-as", "sub", "phoneme")
_INTERPRET = ("digits", "telephone", "date", "characters")
_STRENGTH = {"none": 0.0, "x-weak": 0.05, "weak": 0.1, "medium": 0.2, "strong": 0.4, "x-strong": 0.8}
_RATE = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
_PITCH = {"x-low": 0.6, "low": 0.8, "medium": 1.0, "default": 1.0, "high": 1.2, "x-high": 1.4}
_VOLUME_DB = {"silent": -math.inf, "x-soft": -12.0, "soft": -6.0, "medium": 0.0, "default": 0.0,
              "loud": 4.0, "x-loud": 8.0}
#: A sentence's pause after ``</s>``, a paragraph's after ``</p>``.
_S_PAUSE, _P_PAUSE = 0.3, 0.6


class SSMLError(InputError):
    """The document is not in ttsha's SSML subset (400, naming the element or attribute)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_ssml")


@dataclass
class Segment:
    """A stretch of the written text ``[start, end)``, or a pause (``start == end``)."""

    start: int
    end: int
    style: Delivery
    #: The element holding it (say-as, sub, phoneme), with its attributes; "" for plain text.
    element: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    pause_s: float = 0.0


@dataclass
class Document:
    """A parsed document: its written text and its segments in order."""

    text: str
    segments: list[Segment]


def parse(document: str) -> Document:
    """The segments of an SSML ``document``; :class:`SSMLError` naming what is wrong."""
    return _Parser().run(document)


class _Parser:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.length = 0
        self.segments: list[Segment] = []
        #: Open elements: (name, attributes, style inside, where its text starts).
        self.stack: list[tuple[str, dict[str, str], Delivery, int]] = []
        self.elements = 0

    def run(self, document: str) -> Document:
        parser = expat.ParserCreate()
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        try:
            parser.Parse(document, True)
        except expat.ExpatError as exc:
            raise SSMLError(f"SSML is not well-formed XML: {expat.errors.messages[exc.code]} "
                            f"(line {exc.lineno}, column {exc.offset + 1})") from None
        if not self.elements:
            raise SSMLError("SSML must be one <speak> element")
        return Document("".join(self.text), self.segments)

    def _doctype(self, *args: object) -> None:
        raise SSMLError("SSML may not have a DOCTYPE (no entity declarations)")

    def _entity(self, *args: object) -> None:
        raise SSMLError("SSML may not declare entities")

    @property
    def style(self) -> Delivery:
        return self.stack[-1][2] if self.stack else PLAIN

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise SSMLError(f"SSML has more than {MAX_ELEMENTS} elements")
        if len(self.stack) >= MAX_DEPTH:
            raise SSMLError(f"<{name}>: SSML nests deeper than {MAX_DEPTH} elements")
        if name not in _ATTRIBUTES:
            raise SSMLError(f"<{name}>: unsupported element; ttsha reads {', '.join(f'<{n}>' for n in _ATTRIBUTES)}")
        if (name == "speak") != (not self.stack) or (name == "speak" and self.elements > 1):
            raise SSMLError(f"<{name}>: the document is one <speak> element holding all the others")
        if self.stack and self.stack[-1][0] in _LEAVES:
            raise SSMLError(f"<{self.stack[-1][0]}> holds text only, not <{name}>")
        unknown = sorted(set(attrs) - _ATTRIBUTES[name])
        if unknown:
            raise SSMLError(f"<{name} {unknown[0]}>: unsupported attribute")
        style = self.style
        if name == "prosody":
            style = _prosody(attrs, style)
        elif name == "break":
            self.segments.append(Segment(self.length, self.length, style, pause_s=_break(attrs)))
        elif name == "say-as":
            kind = attrs.get("interpret-as")
            if kind not in _INTERPRET:
                raise SSMLError(f"<say-as interpret-as>: must be one of {', '.join(_INTERPRET)}, got {kind!r}")
            if attrs.get("format", "ymd") not in ("ymd", "mdy", "dmy") or (
                    "format" in attrs and kind != "date"):
                raise SSMLError("<say-as format>: only dates have a format: ymd, mdy or dmy")
        elif name == "sub":
            if not attrs.get("alias", "").strip():
                raise SSMLError("<sub alias>: required, and not empty")
        elif name == "phoneme":
            if attrs.get("alphabet") not in ("pinyin", "py"):
                raise SSMLError(f"<phoneme alphabet>: must be \"pinyin\", got {attrs.get('alphabet')!r}")
            try:
                parse_pinyin(attrs.get("ph", ""))
            except ValueError as exc:
                raise SSMLError(f"<phoneme ph>: {exc}") from None
        self.stack.append((name, attrs, style, self.length))

    def _end(self, name: str) -> None:
        _, attrs, style, start = self.stack.pop()
        if name in _LEAVES:
            if self.length == start:
                raise SSMLError(f"<{name}>: holds no text")
            self.segments.append(Segment(start, self.length, style, element=name, attrs=attrs))
        elif name in ("s", "p"):
            self.segments.append(Segment(self.length, self.length, self.style,
                                         pause_s=_S_PAUSE if name == "s" else _P_PAUSE))

    def _data(self, data: str) -> None:
        if not self.stack:
            return
        if self.stack[-1][0] not in _LEAVES:
            last = self.segments[-1] if self.segments else None
            if (last is not None and not last.element and last.end == self.length and last.start < last.end
                    and last.style == self.style):
                last.end += len(data)  # expat hands text over in several calls (lines, entities)
            else:
                self.segments.append(Segment(self.length, self.length + len(data), self.style))
        self.text.append(data)
        self.length += len(data)


def _break(attrs: dict[str, str]) -> float:
    if "time" in attrs:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*", attrs["time"])
        if not match:
            raise SSMLError(f"<break time>: a duration such as \"500ms\" or \"1.5s\", got {attrs['time']!r}")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_S:
            raise SSMLError(f"<break time>: at most {MAX_BREAK_S:g} s, got {attrs['time']!r}")
        return seconds
    strength = attrs.get("strength", "medium")
    if strength not in _STRENGTH:
        raise SSMLError(f"<break strength>: one of {', '.join(_STRENGTH)}, got {strength!r}")
    return _STRENGTH[strength]


def _relative(value: str, name: str, words: dict[str, float], low: float, high: float) -> float:
    """A multiplier from a keyword, ``+10%``/``-10%`` (relative), ``80%`` or ``0.8``."""
    value = value.strip()
    if value in words:
        factor = words[value]
    else:
        match = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)(%?)", value)
        if not match:
            raise SSMLError(f"<prosody {name}>: a keyword ({', '.join(words)}), \"+10%\", \"80%\" or a number, "
                            f"got {value!r}")
        number = float(match.group(2)) / (100 if match.group(3) else 1)
        if match.group(1):
            factor = 1 + number if match.group(1) == "+" else 1 - number
        else:
            factor = number
    if not low <= factor <= high:
        raise SSMLError(f"<prosody {name}>: {value!r} is a factor of {factor:g}, outside [{low:g}, {high:g}]")
    return factor


def _prosody(attrs: dict[str, str], style: Delivery) -> Delivery:
    rate, pitch, volume = style.rate, style.pitch, style.volume
    if "rate" in attrs:
        rate *= _relative(attrs["rate"], "rate", _RATE, 0.25, 4.0)
    if "pitch" in attrs:
        pitch *= _relative(attrs["pitch"], "pitch", _PITCH, 0.5, 2.0)
    if "volume" in attrs:
        value = attrs["volume"].strip()
        match = re.fullmatch(r"([+-]\d+(?:\.\d+)?)dB", value)
        if value in _VOLUME_DB:
            volume *= 10 ** (_VOLUME_DB[value] / 20)
        elif match and -40 <= float(match.group(1)) <= 12:
            volume *= 10 ** (float(match.group(1)) / 20)
        elif re.fullmatch(r"\d+(?:\.\d+)?", value) and float(value) <= 100:
            volume *= float(value) / 100  # SSML 1.1: 0 (silent) to 100 (the loudest, the default)
        else:
            raise SSMLError(f"<prosody volume>: a keyword ({', '.join(_VOLUME_DB)}), \"-6dB\" (-40 to +12) "
                            f"or 0-100, got {value!r}")
    return replace(style, rate=rate, pitch=pitch, volume=volume)


# -- readings --------------------------------------------------------------
_DATE = re.compile(r"\s*(\d{1,4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,4})\s*[日号]?\s*")


def _date(text: str, order: str) -> str:
    match = _DATE.fullmatch(text)
    if not match:
        raise SSMLError(f"<say-as interpret-as=\"date\">: not a date: {text!r}")
    parts = dict(zip(order, match.groups(), strict=True))
    year, month, day = parts["y"], int(parts["m"]), int(parts["d"])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise SSMLError(f"<say-as interpret-as=\"date\">: no such date: {text!r}")
    return f"{year}年{month}月{day}日"  # read by the normalizer: the year digit by digit


def reading(segment: Segment, written: str) -> str:
    """What ttsha's front end says for an element's text (before normalization)."""
    kind = segment.attrs.get("interpret-as", "")
    if segment.element == "sub":
        return segment.attrs["alias"]
    if kind == "digits":
        return read_digits(written)
    if kind == "telephone":
        return read_digits(re.sub(r"[\s()\-]", "", written), yao=True).replace("+", "加")
    if kind == "date":
        return _date(written, segment.attrs.get("format", "ymd"))
    # characters: each one alone (letters spelled, digits one by one).
    return " ".join(read_digits(c) for c in written if not c.isspace())


def _markup(segment: Segment, written: str) -> str:
    """A segment in Sambert's SSML."""
    text = escape(written)
    if not segment.element:
        return text
    attrs = dict(segment.attrs)
    if segment.element == "phoneme":
        attrs["alphabet"] = "py"
        attrs["ph"] = " ".join(parse_pinyin(attrs["ph"]))
    said = " ".join(f"{k}={quoteattr(v)}" for k, v in sorted(attrs.items()))
    return f"<{segment.element} {said}>{text}</{segment.element}>"


def plan(engine: Engine, document: str, lexicon: Lexicon) -> tuple[str, list[Piece]]:
    """The written text of ``document`` and the pieces ``engine`` says for it."""
    parsed = parse(document)
    text = parsed.text
    own_front_end = not engine.reads_ssml
    pieces: list[Piece] = []
    run: list[Segment] = []

    def close(pause: float) -> None:
        if run:
            pieces.extend(_run_pieces(engine, text, run, lexicon, own_front_end))
            run.clear()
        if pause:
            if not pieces:
                pieces.append(Piece("", 0.0))
            pieces[-1].break_s += pause

    for segment in parsed.segments:
        _check_style(engine, segment.style)
        if segment.start == segment.end and not segment.element:
            close(segment.pause_s)
        else:
            if run and run[-1].style != segment.style:
                close(0.0)
            run.append(segment)
    close(0.0)
    if not any(engine.speakable.search(p.text) for p in pieces):
        raise InputError("text has nothing to say (no Chinese characters or letters)", code="nothing_to_say")
    if pieces:
        pieces[-1].pause_s = pieces[-1].break_s = 0.0  # no silence after the last word
    return text, pieces


def _check_style(engine: Engine, style: Delivery) -> None:
    low, high = engine.speed_range
    if style.rate != 1.0 and not low <= style.rate <= high:
        raise SSMLError(f"<prosody rate>: a factor of {style.rate:g} is outside engine {engine.name}'s "
                        f"[{low:g}, {high:g}]")
    if style.pitch != 1.0 and not engine.varies_pitch:
        raise SSMLError(f"<prosody pitch>: engine {engine.name} cannot change pitch")


def _run_pieces(engine: Engine, text: str, run: list[Segment], lexicon: Lexicon, own: bool) -> list[Piece]:
    """Pieces for segments said in one style without a pause between them."""
    parts: list[Tracked] = []
    for segment in run:
        written = text[segment.start : segment.end]
        tracked = Tracked.of(written, segment.start)
        if not own:
            parts.append(tracked)  # the engine reads the elements: they come back as markup
            continue
        if segment.element == "phoneme" and engine.reads_pinyin:
            parts.append(tracked.edit([(0, len(written), pinyin_marks(parse_pinyin(segment.attrs["ph"])))]))
            continue
        if segment.element and segment.element != "phoneme":
            tracked = tracked.edit([(0, len(written), reading(segment, written))])
        else:
            tracked = lexicon.replace_text_tracked(tracked)
        if engine.normalize_text:
            tracked = normalize_tracked(tracked)
        if engine.reads_pinyin and not segment.element:
            tracked = lexicon.mark_pinyin_tracked(tracked)
        parts.append(tracked)
    joined = Tracked.join(parts)
    pieces = split_sentences(joined.text, speakable=engine.speakable, max_len=engine.max_piece_chars)
    # split_sentences ends its text in silence; a run continues: the pause of its last mark stays.
    last = joined.text.rstrip()[-1:]
    if pieces and last:
        pieces[-1].pause_s = 0.3 if last in SENTENCE_END else 0.15 if last in CLAUSE_END else 0.0
    at = 0
    for piece in pieces:
        at = joined.text.find(piece.text, at)
        piece.source = joined.spans[at : at + len(piece.text)]
        piece.style = run[0].style
        at += len(piece.text)
        if not own:
            piece.markup = _piece_markup(text, run, piece)
    return pieces


def _piece_markup(text: str, run: list[Segment], piece: Piece) -> str:
    """The piece in the engine's own SSML: its stretch of each plain segment, each element it starts."""
    start = min(s[0] for s in piece.source)
    end = max(s[1] for s in piece.source)
    out = []
    for segment in run:
        if segment.element:
            if start <= segment.start < end:
                out.append(_markup(segment, text[segment.start : segment.end]))
        elif segment.start < end and segment.end > start:
            out.append(escape(text[max(start, segment.start) : min(end, segment.end)]))
    return "".join(out)
