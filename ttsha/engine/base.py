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
from .frontend import Piece, normalize, require_text, split_sentences
from .lexicon import EMPTY, Lexicon

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

    def pieces(self, text: str, lexicon: Lexicon | None = None) -> list[Piece]:
        """Normalized pieces of ``text`` read with ``lexicon`` (default: the engine's);
        refuses text with nothing to say."""
        lexicon = lexicon or self.lexicon
        text = lexicon.replace_text(require_text(text))
        if self.normalize_text:
            text = normalize(text)
        if self.reads_pinyin:
            text = lexicon.mark_pinyin(text)
        pieces = split_sentences(text, speakable=self.speakable, max_len=self.max_piece_chars)
        if not pieces:
            raise InputError("text has nothing to say (no Chinese characters or letters)", code="nothing_to_say")
        return pieces

    def stream(
        self,
        text: str,
        voice: str | None = None,
        emotion: str | None = None,
        speed: float | None = None,
        early_start: bool = False,
        lexicon: Lexicon | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield checked samples piece by piece, pauses included.

        With ``early_start`` the first piece may come in parts, so that a
        streaming client hears audio sooner (the later pieces are ready
        before the first one has played).
        """
        voice, emotion, speed = self.resolve(voice, emotion, speed)
        rate = self.info.sample_rate
        for index, piece in enumerate(self.pieces(text, lexicon)):
            if early_start and index == 0:
                parts = self._synthesize_piece_in_parts(piece.text, voice, emotion, speed)
            else:
                parts = iter([self._synthesize_piece(piece.text, voice, emotion, speed)])
            for part in parts:
                yield check_audio(part, self.name)
            if piece.pause_s:
                yield np.zeros(int(piece.pause_s * rate / speed), np.float32)

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
