"""The pronunciation lexicon, and how Latin letters are said by a Chinese voice.

A lexicon is a TOML file of two tables::

    [pinyin]              # word = its syllables, tone numbers 1-5 (5: neutral)
    "重庆" = "chong2 qing4"  # TOML wants quotes around a key that is not ASCII
    GitHub = "ji1 te4 ha1 bu4"

    [text]                # word = what to say instead (then read as usual)
    ttsha = "T T S 哈"

``[text]`` entries replace words in the text as written, before
normalization, for every engine. ``[pinyin]`` entries apply to the text as
normalized, for engines that read pinyin (the embedded voice): each word is
replaced by one private-use character per syllable (:func:`pinyin_marks`),
so cutting the text into pieces never splits a syllable and the phone mapper
reads them back without a dictionary. A word with Latin letters at its edge
matches only a whole word, in any case (``github`` = ``GitHub``).

Matching is greedy, longest word first, in one pass over the text: the cost
per character is bounded by the longest word (:data:`MAX_WORD`), so it stays
linear in the length of the text.

The voice has no English phones: letters are said with the syllables
Chinese speakers use for them (:data:`LETTERS`). Acronyms are spelled (TTS,
CPU, iOS), as Chinese speakers say them; a few words that are said as words
(iPhone, Python, OK) have a reading of their own (:data:`WORDS`), since
nobody spells them; any other Latin word is spelled too, so a listener hears
something recognizable rather than silence. A lexicon can add words.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .spans import Tracked

log = logging.getLogger(__name__)

#: The longest word a lexicon may hold (characters): the bound on matching work per character.
MAX_WORD = 32
#: The longest replacement text.
MAX_TEXT = 200
#: The largest lexicon file read.
MAX_FILE_BYTES = 4 * 2**20

#: Letters as Chinese speakers say them, in syllables the voice has.
LETTERS: dict[str, tuple[str, ...]] = {
    "a": ("ei1",), "b": ("bi4",), "c": ("xi1",), "d": ("di4",), "e": ("yi4",), "f": ("ai4", "fu5"),
    "g": ("ji4",), "h": ("ei1", "chi1"), "i": ("ai4",), "j": ("zhei4",), "k": ("kei4",), "l": ("ai4", "lou5"),
    "m": ("ai4", "mu5"), "n": ("en1",), "o": ("ou1",), "p": ("pi1",), "q": ("qiu1",), "r": ("a4", "er5"),
    "s": ("ai4", "si1"), "t": ("ti4",), "u": ("you1",), "v": ("wei1",), "w": ("da2", "bu5", "liu5"),
    "x": ("ai4", "ke4", "si1"), "y": ("wai4",), "z": ("zei4",),
}
#: Greek letters as read in Chinese (阿尔法, 贝塔…).
GREEK: dict[str, tuple[str, ...]] = {
    "α": ("a1", "er3", "fa3"), "β": ("bei4", "ta3"), "γ": ("ga1", "ma3"), "δ": ("de2", "er3", "ta3"),
    "ε": ("ai4", "pu3", "xi1", "long4"), "θ": ("xi1", "ta3"), "λ": ("lan2", "mu3", "da2"), "μ": ("miu4",),
    "π": ("pai4",), "σ": ("xi1", "ge2", "ma3"), "φ": ("fei1",), "ω": ("ou1", "mi3", "jia1"),
    "Δ": ("de2", "er3", "ta3"), "Σ": ("xi1", "ge2", "ma3"), "Ω": ("ou1", "mi3", "jia1"),
}
#: Latin words said as words, as Chinese speakers say them (lower case).
WORDS: dict[str, tuple[str, ...]] = {
    "iphone": ("ai4", "feng1"), "ipad": ("ai4", "pai4"), "python": ("pai4", "sen1"), "java": ("jia1", "wa3"),
    "ok": ("ou1", "kei4"), "okay": ("ou1", "kei4"), "wifi": ("wai1", "fei1"), "email": ("yi1", "mei4", "er5"),
    "hello": ("ha1", "lou2"), "bye": ("bai4",), "byebye": ("bai4", "bai4"), "bug": ("ba1", "ge5"),
    "google": ("gu3", "ge1"), "demo": ("dei1", "mou5"), "windows": ("wen1", "dou1", "si1"),
    "linux": ("li3", "nu4", "ke4", "si1"), "nike": ("nai4", "ke4"), "pizza": ("pi1", "sa4"),
    "coffee": ("ka1", "fei1"), "cool": ("ku4",), "fans": ("fen3", "si1"), "app": ("ei1", "pi1", "pi1"),
}

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_SYLLABLE = re.compile(r"([a-zü:]+)([1-5])")
_MARK_BASE = 0xF0000
MARKS = re.compile("[\U000f0000-\U000ffffd]")
#: Spellings of the same syllable that people write.
_ALIASES = {"lue": "lve", "nue": "nve"}


@functools.cache
def syllable_inventory() -> tuple[str, ...]:
    """Every toneless pinyin syllable (``zhong``, ``lv``), from pypinyin's dictionary."""
    from pypinyin.contrib.tone_convert import to_normal
    from pypinyin.pinyin_dict import pinyin_dict

    readings: set[str] = set()
    for value in pinyin_dict.values():
        readings.update(value.split(","))
    return tuple(sorted({to_normal(r, v_to_u=False) for r in readings}))


@functools.cache
def _mark_index() -> dict[str, int]:
    return {base: i for i, base in enumerate(syllable_inventory())}


def pinyin_marks(syllables: tuple[str, ...] | list[str]) -> str:
    """Syllables (``hang2``) as private-use characters the phone mapper reads back, one each."""
    index = _mark_index()
    return "".join(chr(_MARK_BASE + index[s[:-1]] * 5 + int(s[-1]) - 1) for s in syllables)


def read_mark(char: str) -> str:
    """The syllable (``hang2``) a character of :func:`pinyin_marks` stands for."""
    code = ord(char) - _MARK_BASE
    return syllable_inventory()[code // 5] + str(code % 5 + 1)


def parse_pinyin(value: str) -> tuple[str, ...]:
    """``"chong2 qing4"`` -> ``("chong2", "qing4")``; ValueError naming the bad syllable."""
    syllables = []
    for word in value.lower().split():
        match = _SYLLABLE.fullmatch(word)
        if not match:
            if re.fullmatch(r"[a-zü:]+", word):
                raise ValueError(f"{word!r} has no tone number (1-5, 5 for the neutral tone)")
            raise ValueError(f"{word!r} is not a syllable with a tone number, such as \"hang2\"")
        base = match.group(1).replace("ü", "v").replace("u:", "v")
        base = _ALIASES.get(base, base)
        if base not in _mark_index():
            raise ValueError(f"{word!r} is not a pinyin syllable")
        syllables.append(base + match.group(2))
    if not syllables:
        raise ValueError("no syllables")
    return tuple(syllables)


def _is_latin(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


class _Matcher:
    """Greedy longest-word matching in one pass (words at most :data:`MAX_WORD` long)."""

    def __init__(self, words: Mapping[str, object]) -> None:
        self.words = {w.translate(_ASCII_LOWER): value for w, value in words.items()}
        self.lengths: dict[str, list[int]] = {}
        for word in self.words:
            self.lengths.setdefault(word[0], []).append(len(word))
        for lengths in self.lengths.values():
            lengths.sort(reverse=True)

    def sub(self, text: str, replace: Callable[[Any], str]) -> str:
        return self.sub_tracked(Tracked.of(text), replace).text

    def sub_tracked(self, text: Tracked, replace: Callable[[Any], str]) -> Tracked:
        """Each word replaced by ``replace(value)``, the replacement pointing at the word's source."""
        if not self.words:
            return text
        return text.edit(self._edits(text.text, replace))

    def _edits(self, text: str, replace: Callable[[Any], str]) -> Iterator[tuple[int, int, str]]:
        low = text.translate(_ASCII_LOWER)
        i = 0
        while i < len(low):
            for length in self.lengths.get(low[i], ()):
                word = low[i : i + length]
                if len(word) == length and word in self.words and self._whole(low, i, i + length):
                    yield i, i + length, replace(self.words[word])
                    i += length
                    break
            else:
                i += 1

    @staticmethod
    def _whole(low: str, start: int, end: int) -> bool:
        """A word with a Latin letter at an edge matches only where no letter continues it."""
        if _is_latin(low[start]) and start > 0 and _is_latin(low[start - 1]):
            return False
        return not (_is_latin(low[end - 1]) and end < len(low) and _is_latin(low[end]))


@dataclass(frozen=True)
class Lexicon:
    """A loaded lexicon: readings by word, replacements by word, and its fingerprint."""

    pinyin: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    text: Mapping[str, str] = field(default_factory=dict)
    #: The file it came from (None: no lexicon configured).
    source: Path | None = None
    #: (mtime_ns, size, inode) of the file when read; None when it did not exist.
    stamp: tuple[int, int, int] | None = None
    _text_matcher: _Matcher = field(init=False, repr=False, compare=False)
    _pinyin_matcher: _Matcher = field(init=False, repr=False, compare=False)
    _fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: every request's id includes it.
        canonical = json.dumps([sorted(self.pinyin.items()), sorted(self.text.items())], ensure_ascii=False)
        fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        object.__setattr__(self, "_fingerprint", fingerprint if self.pinyin or self.text else "")
        object.__setattr__(self, "_text_matcher", _Matcher(self.text))
        object.__setattr__(self, "_pinyin_matcher", _Matcher(self.pinyin))

    @property
    def fingerprint(self) -> str:
        """A hash of the entries ("" for none): part of every result id, so a changed reading is a new result."""
        return self._fingerprint

    def replace_text(self, text: str) -> str:
        """``text`` with the words of ``[text]`` replaced."""
        return self._text_matcher.sub(text, str)

    def replace_text_tracked(self, text: Tracked) -> Tracked:
        """:meth:`replace_text`, keeping where each character came from."""
        return self._text_matcher.sub_tracked(text, str)

    def mark_pinyin(self, text: str) -> str:
        """Normalized ``text`` with the words of ``[pinyin]`` replaced by :func:`pinyin_marks`."""
        return self._pinyin_matcher.sub(text, pinyin_marks)

    def mark_pinyin_tracked(self, text: Tracked) -> Tracked:
        """:meth:`mark_pinyin`, keeping where each character came from."""
        return self._pinyin_matcher.sub_tracked(text, pinyin_marks)

    def changed_on_disk(self) -> bool:
        """Whether the file now differs from the one read (replaced, edited, created or removed)."""
        return self.source is not None and stamp_of(self.source) != self.stamp


EMPTY = Lexicon()


def stamp_of(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of ``path``; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _word(word: str, where: str, latin_or_han: bool) -> str:
    key = unicodedata.normalize("NFKC", word)
    if not key.strip() or key != key.strip():
        raise ConfigError(f"{where}: a word cannot be empty or start or end with a space")
    if len(key) > MAX_WORD:
        raise ConfigError(f"{where}: a word has at most {MAX_WORD} characters")
    if any(unicodedata.category(c)[0] == "C" for c in key):
        raise ConfigError(f"{where}: a word cannot contain control characters")
    if latin_or_han and not all(_is_han(c) or _is_latin(c) for c in key):
        raise ConfigError(f"{where}: a [pinyin] word is Chinese characters and Latin letters only (digits and "
                          "symbols are read by the normalizer first: put such words under [text])")
    return key


def parse(data: object, where: str) -> Lexicon:
    """A lexicon from parsed TOML; ConfigError naming ``where`` and the entry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected tables [pinyin] and [text]")
    unknown = sorted(set(data) - {"pinyin", "text"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown table; a lexicon has [pinyin] and [text]")
    pinyin: dict[str, tuple[str, ...]] = {}
    text: dict[str, str] = {}
    for table in ("pinyin", "text"):
        entries = data.get(table, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{where}: {table}: expected a table of word = \"...\"")
        for word, value in entries.items():
            at = f"{where}: {table}.{word}"
            key = _word(word, at, latin_or_han=table == "pinyin")
            if not isinstance(value, str):
                raise ConfigError(f"{at}: expected a string, got {type(value).__name__}")
            if key in pinyin or key in text:
                raise ConfigError(f"{at}: the word is listed twice")
            if table == "text":
                if len(value) > MAX_TEXT or any(unicodedata.category(c) == "Cc" for c in value):
                    raise ConfigError(f"{at}: replacement text has at most {MAX_TEXT} characters, no control "
                                      "characters")
                text[key] = value
                continue
            try:
                syllables = parse_pinyin(value)
            except ValueError as exc:
                raise ConfigError(f"{at}: bad pinyin {value!r}: {exc}") from None
            if all(_is_han(c) for c in key) and len(syllables) != len(key):
                raise ConfigError(f"{at}: {len(key)} characters but {len(syllables)} syllables in {value!r}")
            pinyin[key] = syllables
    return Lexicon(pinyin, text)


def load(path: Path | None) -> Lexicon:
    """The lexicon at ``path`` (``EMPTY`` for None).

    A file that does not exist (yet: the replicator may not have copied it)
    is an empty lexicon, with a warning; a file that exists must be valid.
    """
    if path is None:
        return EMPTY
    import tomllib

    stamp = stamp_of(path)
    if stamp is None:
        log.warning("lexicon %s does not exist; no pronunciations until it does", path)
        return Lexicon(source=path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the lexicon: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: a lexicon is at most {MAX_FILE_BYTES // 2**20} MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML lexicon: {exc}") from None
    lexicon = parse(data, str(path))
    return Lexicon(lexicon.pinyin, lexicon.text, source=path, stamp=stamp)
