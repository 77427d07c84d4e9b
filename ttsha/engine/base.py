"""The engine interface shared by ``synth``, ``serve`` and the health canary.

An engine is loaded once, then turns text into float32 PCM. Long text is cut
at punctuation and synthesized piece by piece, so callers can stream; every
piece is checked (no NaN/Inf) and clipped to [-1, 1] before it is handed on.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import EngineError, InputError
from .frontend import Piece, require_text, split_sentences
from .lexicon import EMPTY, Lexicon
from .normalize import normalize_tracked
from .spans import Tracked
from .timing import Timeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """What is loaded: reported by ``ttsha voices``, ``/health`` and ``/v1/voices``."""

    engine: str
    model_id: str
    model_version: str
    sample_rate: int
    voices: tuple[str, ...]
    emotions: tuple[str, ...]
    default_voice: str


@dataclass(frozen=True)
class Plan:
    """What an engine will say: the source text and its pieces (see :meth:`Engine.plan`)."""

    text: str
    pieces: list[Piece]


def _span(source: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    if not source:
        return None
    return min(s[0] for s in source), max(s[1] for s in source)


@dataclass(frozen=True)
class Audio:
    """Synthesized speech: mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def check_audio(samples: np.ndarray, where: str) -> np.ndarray:
    """Refuse NaN/Inf (a broken model must fail, not hiss) and clip to [-1, 1]."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(samples)):
        raise EngineError(f"{where}: the model produced NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


class Engine(abc.ABC):
    """Base class: subclasses load a model and synthesize one piece of text."""

    name: str = "?"
    #: Accepted ``speed`` values (1.0 normal, 2.0 twice as fast).
    speed_range: tuple[float, float] = (0.5, 2.0)
    #: Engines without a text normalizer of their own get ttsha's.
    normalize_text: bool = True
    #: Characters that make a piece worth synthesizing.
    speakable = re.compile(r"[\u4e00-\u9fff]")
    #: Longest piece (characters) said in one pass; longer unpunctuated text is cut.
    max_piece_chars: int = 100
    #: Whether the engine reads a lexicon's [pinyin] entries (ttsha's phone mapper does).
    reads_pinyin: bool = False
    #: Whether the engine knows when each syllable is said (per-character timestamps).
    times_phones: bool = False
    #: Whether the engine reads SSML itself (then pieces carry it as ``markup``; see :mod:`.ssml`).
    reads_ssml: bool = False
    #: Whether SSML's ``<prosody pitch>`` can be honoured.
    varies_pitch: bool = False

    def __init__(self) -> None:
        self._info: EngineInfo | None = None
        self._load_lock = threading.Lock()
        #: The pronunciation lexicon; replaced whole on reload, so a request reads one lexicon throughout.
        self.lexicon: Lexicon = EMPTY

    # -- lifecycle -------------------------------------------------------
    def load(self) -> EngineInfo:
        """Load the model once (thread-safe); later calls return the same info."""
        with self._load_lock:
            if self._info is None:
                self._info = self._load()
                log.info(
                    "engine loaded engine=%s model=%s version=%s",
                    self._info.engine,
                    self._info.model_id,
                    self._info.model_version,
                )
        return self._info

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineError(f"engine {self.name} is not loaded")
        return self._info

    @abc.abstractmethod
    def _load(self) -> EngineInfo:
        """Load weights; raise EngineError naming what is missing."""

    def _synthesize_piece_in_parts(self, text: str, voice: str, emotion: str, speed: float) -> Iterator[np.ndarray]:
        """One piece as consecutive parts, the first as early as possible.

        Engines that can start early override this; by default: one part.
        """
        yield self._synthesize_piece(text, voice, emotion, speed)

    @abc.abstractmethod
    def _synthesize_piece(self, text: str, voice: str, emotion: str, speed: float) -> np.ndarray:
        """Samples for one piece of normalized text, at ``info.sample_rate``."""

    # -- requests --------------------------------------------------------
    def resolve(self, voice: str | None, emotion: str | None, speed: float | None) -> tuple[str, str, float]:
        """Validate request parameters against what is loaded, filling defaults."""
        info = self.load()
        voice = voice or info.default_voice
        if voice not in info.voices:
            raise InputError(
                f"unknown voice {voice!r} for engine {info.engine}; choose from {', '.join(info.voices)}",
                code="unknown_voice",
            )
        emotion = emotion or "neutral"
        if emotion not in info.emotions:
            raise InputError(
                f"unsupported emotion {emotion!r}; choose from {', '.join(info.emotions)}",
                code="unknown_emotion",
            )
        if speed is None:
            speed = 1.0
        try:
            speed = float(speed)
        except (TypeError, ValueError):
            raise InputError(f"speed must be a number, got {speed!r}", code="bad_speed") from None
        low, high = self.speed_range
        if not (low <= speed <= high):
            raise InputError(f"speed {speed} is out of range [{low}, {high}] for engine {info.engine}",
                             code="bad_speed")
        return voice, emotion, speed

    def pieces(self, text: str, lexicon: Lexicon | None = None, ssml: bool = False) -> list[Piece]:
        """Normalized pieces of ``text`` read with ``lexicon`` (default: the engine's);
        refuses text with nothing to say."""
        return self.plan(text, lexicon, ssml).pieces

    def plan(self, text: str, lexicon: Lexicon | None = None, ssml: bool = False) -> Plan:
        """What will be said for ``text`` (an SSML document with ``ssml``): its pieces,
        each character pointing at the source (for SSML: its written text)."""
        lexicon = lexicon or self.lexicon
        if ssml:
            from . import ssml as markup

            written, pieces = markup.plan(self, require_text(text), lexicon)
            return Plan(written, pieces)
        stripped = require_text(text)
        tracked = lexicon.replace_text_tracked(Tracked.of(stripped, offset=len(text) - len(text.lstrip())))
        if self.normalize_text:
            tracked = normalize_tracked(tracked)
        if self.reads_pinyin:
            tracked = lexicon.mark_pinyin_tracked(tracked)
        pieces = split_sentences(tracked.text, speakable=self.speakable, max_len=self.max_piece_chars)
        if not pieces:
            raise InputError("text has nothing to say (no Chinese characters or letters)", code="nothing_to_say")
        at = 0
        for piece in pieces:  # pieces are stripped stretches of the text, in order
            at = tracked.text.find(piece.text, at)
            piece.source = tracked.spans[at : at + len(piece.text)]
            at += len(piece.text)
        return Plan(text, pieces)

    def _piece_parts(self, piece: Piece, voice: str, emotion: str, speed: float, early: bool,
                     syllables: list[tuple[tuple[int, int], float, float]] | None) -> Iterator[np.ndarray]:
        """One piece's samples, in parts when ``early``.

        Engines that know their phones' durations (:attr:`times_phones`) append
        to ``syllables`` (when given) each syllable's stretch ``(start, end)`` of
        ``piece.text`` and its start and end, in seconds from the piece's start.
        """
        if early:
            return self._synthesize_piece_in_parts(piece.text, voice, emotion, speed)
        return iter([self._synthesize_piece(piece.text, voice, emotion, speed)])

    def stream(
        self,
        text: str,
        voice: str | None = None,
        emotion: str | None = None,
        speed: float | None = None,
        early_start: bool = False,
        lexicon: Lexicon | None = None,
        timeline: Timeline | None = None,
        ssml: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield checked samples piece by piece, pauses included.

        With ``early_start`` the first piece may come in parts, so that a
        streaming client hears audio sooner (the later pieces are ready
        before the first one has played). A ``timeline`` is filled with
        when each piece (and, where the engine knows, each character) is said.
        """
        voice, emotion, speed = self.resolve(voice, emotion, speed)
        rate = self.info.sample_rate
        plan = self.plan(text, lexicon, ssml)
        low, high = self.speed_range
        if timeline is not None:
            timeline.text = plan.text
            timeline.marks = [] if self.times_phones else None
            timeline.unavailable = "" if self.times_phones else (
                f"engine {self.name} does not report when each character is said")
        position = 0
        for index, piece in enumerate(plan.pieces):
            start = position
            syllables: list[tuple[tuple[int, int], float, float]] | None = [] if timeline is not None else None
            # SSML's prosody: its rate within what the engine can do, its volume as a gain.
            pace = min(high, max(low, speed * piece.style.rate))
            parts = self._piece_parts(piece, voice, emotion, pace, early_start and index == 0,
                                      syllables) if piece.text else iter(())
            for part in parts:
                samples = check_audio(part, self.name)
                if piece.style.volume != 1.0:
                    samples = np.clip(samples * np.float32(piece.style.volume), -1.0, 1.0)
                position += samples.size
                yield samples
            if timeline is not None:
                timeline.add_piece(_span(piece.source), start / rate, position / rate,
                                   [(span, begin, end) for (a, b), begin, end in syllables or ()
                                    if (span := _span(piece.source[a:b]))] if self.times_phones else None)
            if piece.pause_s or piece.break_s:
                pause = np.zeros(int((piece.pause_s / pace + piece.break_s) * rate), np.float32)
                position += pause.size
                yield pause

    def synthesize(
        self,
        text: str,
        voice: str | None = None,
        emotion: str | None = None,
        speed: float | None = None,
    ) -> Audio:
        """The whole text as one :class:`Audio`."""
        parts = list(self.stream(text, voice, emotion, speed))
        return Audio(np.concatenate(parts) if parts else np.zeros(0, np.float32), self.info.sample_rate)
