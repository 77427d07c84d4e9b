"""The canary's quality check: its audio against a golden fingerprint.

The article asks for a speech quality monitor. The engines are deterministic
for a fixed text and voice, so the canary's sentence must sound the same on
every node serving the same model: ``ttsha canary record`` stores the
log-mel spectrogram of that sentence, synthesized on a node known to be good,
next to the model (``ttsha-canary.npz``), where replication carries it to
the other node with the model files. Each canary run compares its audio
with it: the mean absolute difference of the two log-mel spectrograms in dB
over the frames both have, floored 60 dB below the golden's loudest. Numerical noise (thread counts, bf16 kernels)
moves it by a fraction of a dB; a damaged weight file by many. Over
``[serve] canary_max_distance`` the node reports ``degraded`` and the
monitor routes around it.

A model upgrade changes the audio too: record the golden again on the node
that got the new model first (the docs' upgrade steps say so).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import ConfigError
from .fsutil import atomic_write

#: The sentence the canary synthesizes (every node, every interval).
CANARY_TEXT = "欢迎使用语音合成服务。"
#: The golden's file name in the model directory.
GOLDEN_NAME = "ttsha-canary.npz"
#: The spectrogram the fingerprint is made of.
BANDS, FRAME_S, HOP_S = 40, 0.025, 0.010
#: Energies this far below the golden's loudest are compared as equal (noise floor).
DYNAMIC_RANGE_DB = 60.0
#: Frames of the two spectrograms may differ by this fraction (a rounding of a duration).
LENGTH_TOLERANCE = 0.05


def golden_path(config: Config) -> Path:
    """``[serve] canary_golden``, else ttsha-canary.npz in the model cache replication copies."""
    return config.serve.canary_golden or Path(config.replicate.local_models) / GOLDEN_NAME


def _mel_filters(rate: int, n_fft: int, bands: int) -> np.ndarray:
    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(np.array(50.0)), mel(np.array(rate / 2.0)), bands + 2))
    freqs = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    filters = np.zeros((bands, freqs.size))
    for i in range(bands):
        low, centre, high = edges[i], edges[i + 1], edges[i + 2]
        rising = (freqs - low) / max(centre - low, 1e-9)
        falling = (high - freqs) / max(high - centre, 1e-9)
        filters[i] = np.clip(np.minimum(rising, falling), 0.0, None)
    return filters


def log_mel(samples: np.ndarray, rate: int) -> np.ndarray:
    """(frames, BANDS) log-mel energies in dB of mono float audio."""
    audio = np.asarray(samples, dtype=np.float64).reshape(-1)
    frame, hop = int(FRAME_S * rate), int(HOP_S * rate)
    if audio.size < frame:
        audio = np.pad(audio, (0, frame - audio.size))
    count = 1 + (audio.size - frame) // hop
    index = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    n_fft = 1 << (frame - 1).bit_length()
    spectrum = np.abs(np.fft.rfft(audio[index] * np.hanning(frame), n=n_fft)) ** 2
    energies = spectrum @ _mel_filters(rate, n_fft, BANDS).T
    return (10.0 * np.log10(np.maximum(energies, 1e-10))).astype(np.float32)


@dataclass(frozen=True)
class Golden:
    """The canary's reference: what the engine said for the model it was recorded with."""

    engine: str
    model_version: str
    voice: str
    text: str
    sample_rate: int
    mel: np.ndarray
    recorded_at: float

    @classmethod
    def record(cls, engine: str, model_version: str, voice: str, samples: np.ndarray, rate: int) -> Golden:
        return cls(engine, model_version, voice, CANARY_TEXT, rate, log_mel(samples, rate), time.time())

    def save(self, path: Path) -> None:
        meta = {"engine": self.engine, "model_version": self.model_version, "voice": self.voice,
                "text": self.text, "sample_rate": self.sample_rate, "recorded_at": self.recorded_at}
        buf = io.BytesIO()
        np.savez(buf, mel=self.mel, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        atomic_write(Path(path), buf.getvalue(), mode=0o644)

    @classmethod
    def load(cls, path: Path) -> Golden:
        """Read and check a golden file; :class:`ConfigError` naming it when it is not one."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                mel = np.asarray(data["mel"], dtype=np.float32)
                meta = json.loads(bytes(data["meta"]).decode())
            golden = cls(str(meta["engine"]), str(meta["model_version"]), str(meta["voice"]), str(meta["text"]),
                         int(meta["sample_rate"]), mel, float(meta["recorded_at"]))
        except OSError as exc:
            raise ConfigError(f"canary golden {path}: {exc.strerror or exc}") from None
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"canary golden {path} is not a golden fingerprint file: {exc}") from None
        if mel.ndim != 2 or mel.shape[1] != BANDS or not mel.shape[0] or not np.isfinite(mel).all():
            raise ConfigError(f"canary golden {path}: a spectrogram of shape {mel.shape}, not (frames, {BANDS})")
        if golden.text != CANARY_TEXT or not 8000 <= golden.sample_rate <= 192000:
            raise ConfigError(f"canary golden {path} was recorded for another canary sentence or rate")
        return golden


@dataclass(frozen=True)
class Comparison:
    distance_db: float
    frames: tuple[int, int]
    reason: str | None


def compare(golden: Golden, samples: np.ndarray, rate: int, limit_db: float) -> Comparison:
    """The canary's audio against ``golden``: the distance, and why it fails (None: it passes)."""
    if rate != golden.sample_rate:
        return Comparison(float("inf"), (0, golden.mel.shape[0]),
                          f"sample rate {rate} Hz, the golden's {golden.sample_rate} Hz")
    mel = log_mel(samples, rate)
    frames = (mel.shape[0], golden.mel.shape[0])
    overlap = min(frames)
    # Energies far below the golden's loudest (silence between words, empty bands)
    # are noise whatever their level: both spectrograms are floored alike.
    floor = float(golden.mel.max()) - DYNAMIC_RANGE_DB
    ours, theirs = np.maximum(mel[:overlap], floor), np.maximum(golden.mel[:overlap], floor)
    distance = float(np.mean(np.abs(ours - theirs)))
    if abs(frames[0] - frames[1]) > LENGTH_TOLERANCE * max(frames):
        return Comparison(distance, frames, f"{frames[0]} frames of audio, the golden has {frames[1]}")
    if distance > limit_db:
        return Comparison(distance, frames, f"audio differs from the golden fingerprint by {distance:.1f} dB "
                                            f"(limit {limit_db:g} dB; recorded for model {golden.model_version})")
    return Comparison(distance, frames, None)


def _canary_audio(config: Config) -> tuple[str, str, np.ndarray, int]:
    """Load this node's engine as ``serve`` would and synthesize the canary: (engine, model version, audio, rate)."""
    from .engine import create_engine

    engine = create_engine(config.engine)
    info = engine.load()
    audio = engine.synthesize(CANARY_TEXT)
    return info.engine, info.model_version, audio.samples, audio.sample_rate


def record(config: Config, path: Path | None = None) -> tuple[Golden, Path]:
    """Synthesize the canary with this node's model and store its golden fingerprint."""
    engine, version, samples, rate = _canary_audio(config)
    golden = Golden.record(engine, version, config.engine.voice, samples, rate)
    target = Path(path or golden_path(config))
    if not target.parent.is_dir():
        raise ConfigError(f"canary golden {target}: directory {target.parent} does not exist")
    golden.save(target)
    return golden, target


def check(config: Config, path: Path | None = None) -> tuple[Golden, Comparison]:
    """This node's canary now against the golden; raises when there is none to compare with."""
    golden = Golden.load(Path(path or golden_path(config)))
    engine, _version, samples, rate = _canary_audio(config)
    if engine != golden.engine:
        raise ConfigError(f"the golden was recorded for engine {golden.engine}; this node serves {engine}")
    return golden, compare(golden, samples, rate, config.serve.canary_max_distance)
