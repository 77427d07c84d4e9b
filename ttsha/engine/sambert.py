"""The production engine: ModelScope Sambert-HifiGan from a local model directory.

The pipeline is built from ``[engine] model_dir`` (the model cache that
``ttsha replicate`` copies to the standby), never from the hub: the hub is
switched off before modelscope is imported. Emotion is passed through SSML,
with the user's text escaped. The pipeline answers with WAV bytes, decoded
here with soundfile.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..audio import resample
from ..errors import EngineError
from .base import Engine, EngineInfo
from .frontend import Piece

log = logging.getLogger(__name__)

#: Voices of the multi-emotion Sambert-HifiGan family.
VOICES = ("zhitian_emo", "zhiyan_emo", "zhizhe_emo", "zhibei_emo")
#: Emotion categories the *_emo voices accept in SSML.
EMOTIONS = ("neutral", "happy", "sad", "angry", "fear", "surprise", "disgust")

_MODEL_FILES = ("configuration.json",)
#: ModelScope's audio wheels, and what only the real ones have: PyPI carries
#: unrelated placeholder packages under both names (a ``hello()`` function),
#: which import fine and then fail deep inside the pipeline.
_FRONTEND_PACKAGES = {"ttsfrd": "TtsFrontendEngine", "kantts": "models"}
_WHEELS_HINT = ("install ModelScope's own kantts and ttsfrd wheels (see docs/deploy.md, "
                "'The Sambert model'), not the PyPI packages of the same names")


def _has_submodule(package: str, name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # a plain module, not a package
        return False


def frontend_problem() -> str | None:
    """Why the kantts/ttsfrd wheels Sambert needs are missing or placeholders; None when they look real."""
    import importlib

    for name, member in _FRONTEND_PACKAGES.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            return f"{name} is not installed; {_WHEELS_HINT}"
        except Exception as exc:  # a broken wheel fails on import in many ways
            return f"{name} does not import ({exc}); {_WHEELS_HINT}"
        if not hasattr(module, member) and not _has_submodule(name, member):
            return (f"the installed {name} has no {member!r}: it is a placeholder package, not ModelScope's; "
                    f"{_WHEELS_HINT}")
    return None


def ssml(text: str, emotion: str, intensity: float = 1.0, markup: str = "") -> str:
    """Wrap text in the SSML the Sambert front end reads; the text is XML-escaped.

    ``markup`` is a piece already in Sambert's SSML (from ttsha's SSML route,
    :mod:`.ssml`): it goes in as it is, in place of the text.
    """
    body = markup or escape(text)
    if emotion == "neutral":
        return f"<speak>{body}</speak>" if markup else body
    return f'<speak><emotion category="{emotion}" intensity="{intensity:.2f}">{body}</emotion></speak>'


def model_fingerprint(model_dir: Path) -> str:
    """A short hash of the model directory's file names, sizes and mtimes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"{path.relative_to(model_dir)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


class SambertEngine(Engine):
    """ModelScope's text-to-speech pipeline, loaded offline from ``model_dir``."""

    name = "sambert"
    # The pipeline has no rate control; stretching its output would be a
    # different product, so other speeds are refused with a clear reason.
    speed_range = (1.0, 1.0)
    # The Sambert front end (ttsfrd) normalizes text itself and reads Latin letters.
    normalize_text = False
    # It reads SSML itself: ttsha's SSML route passes its elements through.
    reads_ssml = True
    speakable = re.compile(r"[\u4e00-\u9fffA-Za-z0-9]")

    def __init__(self, model_dir: Path, voices: tuple[str, ...] = VOICES, default_voice: str = "zhitian_emo"):
        super().__init__()
        self.model_dir = Path(model_dir)
        self.voices = voices
        self.default_voice = default_voice
        # The pipeline keeps per-call state in its front end: one call at a time.
        self._lock = threading.Lock()

    def _load(self) -> EngineInfo:
        if not self.model_dir.is_dir():
            raise EngineError(
                f"Sambert model directory {self.model_dir} does not exist; copy the model there "
                "(e.g. 'ttsha replicate --once models' from the primary) or set [engine] model_dir"
            )
        missing = [name for name in _MODEL_FILES if not (self.model_dir / name).exists()]
        if missing:
            raise EngineError(f"{self.model_dir} is not a ModelScope model directory (missing {', '.join(missing)})")
        # Offline: never reach for the hub, whatever the environment says.
        os.environ["MODELSCOPE_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError as exc:
            raise EngineError(
                f"engine 'sambert' needs modelscope and its TTS extras ({exc}); "
                "install them with: pip install 'ttsha[sambert]' and ModelScope's kantts/ttsfrd wheels "
                "(docs/deploy.md), or use engine = \"embedded\""
            ) from exc
        problem = frontend_problem()
        if problem:
            raise EngineError(f"engine 'sambert': {problem}")
        try:
            self._pipeline = pipeline(task=Tasks.text_to_speech, model=str(self.model_dir))
        except Exception as exc:  # modelscope raises many kinds
            raise EngineError(f"cannot load the Sambert pipeline from {self.model_dir}: {exc}") from exc
        if self.default_voice not in self.voices:
            raise EngineError(f"default voice {self.default_voice!r} is not among {self.voices}")
        return EngineInfo(
            engine=self.name,
            model_id=self.model_dir.name,
            model_version=model_fingerprint(self.model_dir),
            sample_rate=self._probe_rate(),
            voices=self.voices,
            emotions=EMOTIONS,
            default_voice=self.default_voice,
        )

    def _probe_rate(self) -> int:
        """The model's output rate, from its configuration (16 kHz for the *_16k models)."""
        import json

        try:
            config = json.loads((self.model_dir / "configuration.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 16000
        rate = config.get("model", {}).get("sample_rate") or config.get("sample_rate")
        if isinstance(rate, int) and rate > 0:
            return rate
        return 48000 if "48k" in self.model_dir.name else 16000

    def _piece_parts(self, piece: Piece, voice: str, emotion: str, speed: float, early: bool,
                     syllables: list[tuple[tuple[int, int], float, float]] | None) -> Iterator[np.ndarray]:
        yield self._say(ssml(piece.text, emotion, markup=piece.markup), voice)

    def _synthesize_piece(self, text: str, voice: str, emotion: str, speed: float) -> np.ndarray:
        return self._say(ssml(text, emotion), voice)

    def _say(self, document: str, voice: str) -> np.ndarray:
        import soundfile as sf
        from modelscope.outputs import OutputKeys

        with self._lock:
            try:
                out = self._pipeline(input=document, voice=voice)
            except Exception as exc:
                raise EngineError(f"Sambert synthesis failed: {exc}") from exc
        wav = out.get(OutputKeys.OUTPUT_WAV) if isinstance(out, dict) else None
        if not isinstance(wav, (bytes, bytearray)) or not wav:
            raise EngineError("Sambert pipeline returned no WAV bytes")
        try:
            samples, rate = sf.read(io.BytesIO(bytes(wav)), dtype="float32", always_2d=True)
        except Exception as exc:
            raise EngineError(f"Sambert pipeline returned undecodable audio: {exc}") from exc
        samples = samples.mean(axis=1)
        if rate != self.info.sample_rate:
            samples = resample(samples, rate, self.info.sample_rate)
        return samples
