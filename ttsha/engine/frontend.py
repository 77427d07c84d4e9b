"""Chinese text front end: normalization, pinyin, and the voice's phone symbols.

``normalize`` (in :mod:`.normalize`) rewrites what a reader would say aloud
(numbers, money, ranges, versions, dates, times, percentages, phone numbers,
units, full-width forms) as Chinese characters.
``split_sentences`` cuts text at punctuation into pieces that are synthesized
one by one. ``PhoneMapper`` turns a piece into the symbol ids the embedded
FastSpeech2 voice was trained on: ``sil``, then initial and toned final for
each syllable with ``#0`` between syllables, then ``sil`` and ``eos``.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pypinyin import Style, lazy_pinyin

from ..errors import EngineError, InputError
from . import lexicon
from .normalize import normalize  # noqa: F401  (re-exported: callers import it from here)

log = logging.getLogger(__name__)

_HAN = re.compile(r"[\u4e00-\u9fff]")
#: What the embedded voice can say: Chinese characters, Latin letters (spelled), lexicon marks.
SPEAKABLE = re.compile("[\u4e00-\u9fffA-Za-z\U000f0000-\U000ffffd]")
#: Stretches the phone mapper reads without pypinyin.
_SPECIAL = re.compile("[\U000f0000-\U000ffffd]+|[A-Za-z]+|[\u0391-\u03a9\u03b1-\u03c9]")

# Sentence-final marks end a piece with a longer pause than clause marks.
SENTENCE_END = "。！？!?；;…"
CLAUSE_END = "，,、：:"


@dataclass(frozen=True)
class Delivery:
    """How a piece is said, from SSML's ``<prosody>``: multipliers of speed, pitch and amplitude."""

    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0


PLAIN = Delivery()


@dataclass
class Piece:
    """A stretch of text synthesized in one pass, and the pause that follows it."""

    text: str
    pause_s: float
    #: For each character of ``text``, the span of the source text it stands for (see :mod:`.spans`).
    source: tuple[tuple[int, int], ...] = ()
    style: Delivery = PLAIN
    #: For engines that read SSML themselves (Sambert): the piece as their markup.
    markup: str = ""
    #: Silence after ``pause_s`` that the speed does not shorten (SSML's ``<break time>``).
    break_s: float = 0.0


def split_sentences(
    text: str,
    clause_pause: float = 0.15,
    sentence_pause: float = 0.3,
    speakable: re.Pattern[str] = _HAN,
    max_len: int = 0,
) -> list[Piece]:
    """Cut text at punctuation; pieces with nothing ``speakable`` are dropped.

    With ``max_len``, a stretch longer than that without punctuation is cut
    further (see :func:`cut_long`), without a pause between its parts.
    """
    pieces: list[Piece] = []
    start = 0
    text += "。"
    for end, char in enumerate(text):
        if char in SENTENCE_END or char in CLAUSE_END or char == "\n":
            buf = text[start:end]
            start = end + 1
            if speakable.search(buf):
                pause = clause_pause if char in CLAUSE_END else sentence_pause
                parts = cut_long(buf.strip(), max_len) if max_len else [buf.strip()]
                parts = [part for part in parts if speakable.search(part)]
                pieces += [Piece(part, 0.0) for part in parts[:-1]]
                pieces.append(Piece(parts[-1], pause))
    if pieces:
        pieces[-1].pause_s = 0.0
    return pieces


def cut_long(text: str, max_len: int) -> list[str]:
    """``text`` in parts of at most ``max_len`` characters, of about equal length.

    A model says a bounded length in one pass (the embedded voice: 2048 mel
    frames); unpunctuated text can be any length. Each cut prefers a space
    in the second half of its part, else the last place there that does not
    split a phrase of pypinyin's dictionary (the words read differently from
    their characters). Each part is segmented on its own, so the work stays
    linear in the length of ``text``.
    """
    parts: list[str] = []
    while len(text) > max_len:
        count = -(-len(text) // max_len)
        target = -(-len(text) // count)  # equal parts: no one-character tail
        cut = text.rfind(" ", target // 2, target + 1)
        if cut <= 0:
            cut = _word_boundary(text[: target + 1], max(1, target // 2), target)
        part, text = text[:cut].strip(), text[cut:].strip()
        if part:
            parts.append(part)
    if text or not parts:
        parts.append(text)
    return parts


def _word_boundary(window: str, low: int, high: int) -> int:
    """The last end of a word within ``window[low:high]`` (``high`` when none)."""
    from pypinyin.seg.mmseg import seg

    best, at = high, 0
    for word in seg.cut(window):
        at += len(word)
        if low <= at <= high:
            best = at
        if at >= high:
            break
    return best


@dataclass
class PhoneMapper:
    """Maps Chinese text to the voice's symbol ids, using the voice's own mapper file."""

    symbol_to_id: dict[str, int]
    pinyin_to_phones: dict[str, tuple[str, str]]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: Path) -> PhoneMapper:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            symbols = {str(k): int(v) for k, v in data["symbol_to_id"].items()}
            table = {str(k): (str(v[0]), str(v[1])) for k, v in data["pinyin_dict"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise EngineError(f"cannot read phone mapper {path}: {exc}") from exc
        for required in ("sil", "#0", "eos"):
            if required not in symbols:
                raise EngineError(f"phone mapper {path} lacks the symbol {required!r}")
        return cls(symbols, table)

    def syllables(self, text: str) -> list[str]:
        """Toned pinyin syllables (``zhong1``) for ``text``.

        Chinese characters are read by pypinyin, with tone sandhi (一, 不,
        third tones); a lexicon's marks (:func:`~.lexicon.pinyin_marks`) by
        what they stand for; Latin words by :data:`~.lexicon.WORDS` or letter
        by letter (:data:`~.lexicon.LETTERS`), Greek letters by name. Anything
        else that is not punctuation or space is dropped with a warning naming it.
        """
        return [syllable for syllable, _, _ in self.aligned(text)]

    def aligned(self, text: str) -> list[tuple[str, int, int]]:
        """:meth:`syllables`, each with the stretch ``text[start:end]`` it is said for:
        a character, a spelled letter, or a word said as a whole (``iPhone``)."""
        result: list[tuple[str, int, int]] = []
        skipped: list[str] = []
        start = 0
        for match in _SPECIAL.finditer(text):
            self._chinese(text[start : match.start()], start, result, skipped)
            start = match.end()
            found = match.group(0)
            at = match.start()
            if lexicon.MARKS.match(found):
                said = [(lexicon.read_mark(c), at + i, at + i + 1) for i, c in enumerate(found)]
            elif found[0].isascii():
                lower = found.lower()
                word = lexicon.WORDS.get(lower)
                said = ([(s, at, match.end()) for s in word] if word else
                        [(s, at + i, at + i + 1) for i, c in enumerate(lower) for s in lexicon.LETTERS[c]])
            else:
                said = [(s, at, match.end()) for s in lexicon.GREEK.get(found, ())]
            self._keep(said, result, skipped)
        self._chinese(text[start:], start, result, skipped)
        if skipped:
            self.skipped.extend(skipped)
            log.warning("skipping what the voice cannot say: %s", " ".join(dict.fromkeys(skipped)))
        return result

    def _chinese(self, text: str, offset: int, result: list[tuple[str, int, int]], skipped: list[str]) -> None:
        if not text:
            return

        def keep_unknown(chunk: str) -> list[str]:
            # Punctuation and spaces are silent by nature; anything else is news.
            skipped.extend(c for c in chunk if unicodedata.category(c)[0] not in "PZC")
            return []

        said = lazy_pinyin(
            text,
            style=Style.TONE3,
            neutral_tone_with_five=True,
            tone_sandhi=True,
            # pypinyin documents a callback returning a list (here []: drop the chunk),
            # but annotates the parameter as returning str.
            errors=keep_unknown,  # type: ignore[arg-type]
        )
        # pypinyin says one syllable per character it knows: the Chinese ones.
        places = [offset + i for i, c in enumerate(text) if _HAN.match(c)]
        if len(places) != len(said):  # not expected; spread them evenly rather than guess
            places = [offset + i * len(text) // max(1, len(said)) for i in range(len(said))]
        self._keep([(s, at, at + 1) for s, at in zip(said, places, strict=True)], result, skipped)

    def _keep(self, syllables: list[tuple[str, int, int]], result: list[tuple[str, int, int]],
              skipped: list[str]) -> None:
        for syllable, at, end in syllables:
            syllable = syllable.strip()
            if not syllable:
                continue
            if not syllable[-1].isdigit():
                syllable += "5"
            base = syllable[:-1]
            if base in ("n", "m", "hm", "ng"):
                base = "en"  # 嗯 and friends
            if base not in self.pinyin_to_phones:
                skipped.append(syllable)
                continue
            result.append((base + syllable[-1], at, end))

    def phones(self, text: str) -> list[str]:
        """The symbol sequence for one piece: ``sil i f #0 i f ... sil``."""
        return self._phones(self.syllables(text))

    def _phones(self, syllables: list[str]) -> list[str]:
        out = ["sil"]
        for i, syllable in enumerate(syllables):
            initial, final = self.pinyin_to_phones[syllable[:-1]]
            if i:
                out.append("#0")
            out += [initial, final + syllable[-1]]
        out.append("sil")
        return out

    def ids(self, text: str) -> list[int]:
        """Symbol ids for one piece, ending with ``eos``; empty when nothing is sayable."""
        return self.ids_aligned(text)[0]

    def ids_aligned(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """:meth:`ids`, and for each syllable the stretch of ``text`` it is said for (see :meth:`aligned`).

        Syllable ``k``'s initial and final are ids ``3k+1`` and ``3k+2``
        (``sil``, then ``#0`` before every syllable but the first).
        """
        aligned = self.aligned(text)
        phones = self._phones([s for s, _, _ in aligned])
        if len(phones) <= 2:
            return [], []
        try:
            ids = [self.symbol_to_id[p] for p in phones] + [self.symbol_to_id["eos"]]
        except KeyError as exc:
            raise EngineError(f"the voice has no symbol {exc.args[0]!r}") from exc
        return ids, [(start, end) for _, start, end in aligned]


def require_text(text: str) -> str:
    """Strip ``text`` and refuse it when empty."""
    if text is None or not text.strip():
        raise InputError("text is empty", code="empty_text")
    return text.strip()
