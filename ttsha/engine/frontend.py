"""Chinese text front end: normalization, pinyin, and the voice's phone symbols.

``normalize`` rewrites what a reader would say aloud (numbers, dates, times,
percentages, phone numbers, units, full-width forms) as Chinese characters.
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

import cn2an
from pypinyin import Style, lazy_pinyin

from ..errors import EngineError, InputError

log = logging.getLogger(__name__)

_DIGITS = "零一二三四五六七八九"
_HAN = re.compile(r"[\u4e00-\u9fff]")

# Units read after a number; longest first so "km/h" wins over "km".
_UNITS = {
    "km/h": "千米每小时",
    "m/s": "米每秒",
    "kg": "千克",
    "km": "千米",
    "cm": "厘米",
    "mm": "毫米",
    "ml": "毫升",
    "mg": "毫克",
    "GB": "吉字节",
    "MB": "兆字节",
    "KB": "千字节",
    "TB": "太字节",
    "Hz": "赫兹",
    "kHz": "千赫兹",
    "ms": "毫秒",
    "℃": "摄氏度",
    "°C": "摄氏度",
    "°": "度",
    "m": "米",
    "g": "克",
    "L": "升",
    "s": "秒",
    "h": "小时",
    "元": "元",
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))

_SYMBOLS = {"+": "加", "=": "等于", "&": "和", "@": "艾特", "~": "到", "×": "乘", "÷": "除以"}

# Sentence-final marks end a piece with a longer pause than clause marks.
_SENTENCE_END = "。！？!?；;…"
_CLAUSE_END = "，,、：:"


def _read_digits(digits: str) -> str:
    """Digit by digit, as phone numbers and years are read ("1" as 幺 in phone numbers)."""
    return "".join(_DIGITS[int(d)] for d in digits)


def _read_integer(digits: str) -> str:
    """By value up to twelve significant digits; longer strings (ids, codes) digit by digit."""
    # cn2an refuses more than 16 digits in all, leading zeros included.
    if len(digits.lstrip("0") or "0") <= 12 and len(digits) <= 16:
        return cn2an.an2cn(digits)
    return _read_digits(digits)


def _read_number(number: str) -> str:
    """A decimal number by value: 1205.5 -> 一千二百零五点五."""
    negative = number.startswith("-")
    number = number.lstrip("-+")
    if "." in number:
        whole, frac = number.split(".", 1)
        text = _read_integer(whole or "0") + "点" + _read_digits(frac)
    else:
        text = _read_integer(number)
    return ("负" if negative else "") + text


def _phone(match: re.Match[str]) -> str:
    return _read_digits(re.sub(r"\D", "", match.group(0))).replace("一", "幺")


def _date(match: re.Match[str]) -> str:
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    text = ""
    if year:
        text += _read_digits(year) + "年"
    if month:
        text += _read_number(month) + "月"
    if day:
        text += _read_number(day) + ("日" if match.group("sfx") in ("日", "", None) else "号")
    return text


def _time(match: re.Match[str]) -> str:
    hour, minute, second = match.group(1), match.group(2), match.group(3)
    text = _read_number(hour) + "点"
    if minute and int(minute):
        text += ("零" if minute.startswith("0") else "") + _read_number(str(int(minute))) + "分"
    if second and int(second):
        text += _read_number(str(int(second))) + "秒"
    return text


def _percent(match: re.Match[str]) -> str:
    return "百分之" + _read_number(match.group(1))


def _fraction(match: re.Match[str]) -> str:
    return _read_number(match.group(2)) + "分之" + _read_number(match.group(1))


def _number_with_unit(match: re.Match[str]) -> str:
    return _read_number(match.group(1)) + _UNITS[match.group(2)]


# A number starts where a digit run starts: without the look-behind, a pattern
# that fails after a run of n digits is retried from each of its n positions,
# O(n^2) in one regex call that holds the GIL (2000 digits: about 0.4 s).
# Every number pattern below starts at a run's first digit (or its sign), so
# each digit is scanned a bounded number of times and normalize is linear.
_NUMBER = r"-?(?<!\d)\d+(?:\.\d+)?"
_PERCENT = re.compile(rf"({_NUMBER})\s*%")
_WITH_UNIT = re.compile(rf"({_NUMBER})\s*({_UNIT_RE})(?![A-Za-z])")


def normalize(text: str) -> str:
    """Rewrite ``text`` as it would be read aloud, in Chinese characters.

    Linear in the length of ``text`` (hostile input cannot make it slow).
    """
    text = unicodedata.normalize("NFKC", text)
    # NFKC maps full-width punctuation to ASCII; keep Chinese sentence marks.
    text = text.replace("\r", "").replace("\t", " ")
    text = re.sub(r"(?<!\d)(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)", _phone, text)
    text = re.sub(r"(?<!\d)(0\d{2,3})-(\d{7,8})(?!\d)", _phone, text)
    text = re.sub(
        r"(?<!\d)(?P<y>\d{4})[年/.-](?P<m>\d{1,2})[月/.-](?P<d>\d{1,2})(?P<sfx>[日号]?)",
        _date,
        text,
    )
    text = re.sub(r"(?<!\d)(?P<y>\d{2,4})年(?:(?P<m>\d{1,2})月)?(?:(?P<d>\d{1,2})(?P<sfx>[日号]))?", _date, text)
    text = re.sub(r"(?<![\d年])(?P<y>)(?P<m>\d{1,2})月(?:(?P<d>\d{1,2})(?P<sfx>[日号]))?", _date, text)
    text = re.sub(r"(?<!\d)(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)", _time, text)
    text = _PERCENT.sub(_percent, text)
    text = re.sub(r"(?<![\d/])(\d+)/(\d+)(?![\d/])", _fraction, text)
    text = _WITH_UNIT.sub(_number_with_unit, text)
    text = re.sub(r"(?<![\d.])-?\d+(?:\.\d+)?", lambda m: _read_number(m.group(0)), text)
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    return text


@dataclass
class Piece:
    """A stretch of text synthesized in one pass, and the pause that follows it."""

    text: str
    pause_s: float


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
        if char in _SENTENCE_END or char in _CLAUSE_END or char == "\n":
            buf = text[start:end]
            start = end + 1
            if speakable.search(buf):
                pause = clause_pause if char in _CLAUSE_END else sentence_pause
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
        """Toned pinyin syllables (``zhong1``) for the Chinese characters of ``text``.

        Anything that is not a Chinese character is dropped, with a warning
        naming it; tone sandhi (一, 不, third tones) is applied by pypinyin.
        """
        result: list[str] = []
        skipped: list[str] = []

        def keep_unknown(chunk: str) -> list[str]:
            # Punctuation and spaces are silent by nature; anything else is news.
            skipped.extend(c for c in chunk if unicodedata.category(c)[0] not in "PZC")
            return []

        for syllable in lazy_pinyin(
            text,
            style=Style.TONE3,
            neutral_tone_with_five=True,
            tone_sandhi=True,
            # pypinyin documents a callback returning a list (here []: drop the chunk),
            # but annotates the parameter as returning str.
            errors=keep_unknown,  # type: ignore[arg-type]
        ):
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
            result.append(base + syllable[-1])
        if skipped:
            self.skipped.extend(skipped)
            log.warning("skipping what the voice cannot say: %s", " ".join(dict.fromkeys(skipped)))
        return result

    def phones(self, text: str) -> list[str]:
        """The symbol sequence for one piece: ``sil i f #0 i f ... sil``."""
        out = ["sil"]
        for i, syllable in enumerate(self.syllables(text)):
            initial, final = self.pinyin_to_phones[syllable[:-1]]
            if i:
                out.append("#0")
            out += [initial, final + syllable[-1]]
        out.append("sil")
        return out

    def ids(self, text: str) -> list[int]:
        """Symbol ids for one piece, ending with ``eos``; empty when nothing is sayable."""
        phones = self.phones(text)
        if len(phones) <= 2:
            return []
        try:
            return [self.symbol_to_id[p] for p in phones] + [self.symbol_to_id["eos"]]
        except KeyError as exc:
            raise EngineError(f"the voice has no symbol {exc.args[0]!r}") from exc


def require_text(text: str) -> str:
    """Strip ``text`` and refuse it when empty."""
    if text is None or not text.strip():
        raise InputError("text is empty", code="empty_text")
    return text.strip()
