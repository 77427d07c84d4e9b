"""Sample-rate conversion and WAV encoding shared by ``synth`` and ``serve``."""

from __future__ import annotations

import io
import math
import struct

import numpy as np


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy) from ``rate_in`` to ``rate_out``."""
    if rate_in == rate_out:
        return np.asarray(samples, np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    out = resample_poly(np.asarray(samples, np.float64), rate_out // g, rate_in // g)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    """Little-endian signed 16-bit PCM from float samples in [-1, 1]."""
    clipped = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    return (np.round(clipped * 32767.0)).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header; ``data_bytes=None`` writes the open-ended
    length (0xFFFFFFFF) that streaming players accept."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    block = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", size)
    )


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete PCM16 WAV file in memory."""
    pcm = to_pcm16(samples)
    buf = io.BytesIO()
    buf.write(wav_header(sample_rate, len(pcm)))
    buf.write(pcm)
    return buf.getvalue()
