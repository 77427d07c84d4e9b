"""Sample-rate conversion and audio encoding shared by ``synth`` and ``serve``.

One representation flows between them: mono signed 16-bit little-endian PCM
(what the store's WAV files hold after their header). Every output format is
made from it here, by one of two paths:

* ``wav`` and ``pcm``: our own header (:func:`wav_header`) and the samples as
  they are, byte for byte what the store holds;
* ``mp3``, ``opus`` (in Ogg) and ``flac``: libsndfile through soundfile, whose
  bundled library (1.1 and later) encodes all three. MP3 is constant bit rate,
  so a player that sees only part of a stream can still tell its length.

:class:`Encoder` takes the audio piece by piece and returns bytes as soon as
the format has them, so a streamed response and a whole file come from the
same code. A stream cannot go back to rewrite a header, so streamed FLAC says
"length unknown" in its STREAMINFO and a streamed MP3 carries no Xing/LAME
frame; both are valid streams that players accept.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AudioFormat:
    """One output format: its name in requests, its media type and how it is made."""

    name: str
    media_type: str
    #: libsndfile's (format, subtype), or None for the formats written here.
    soundfile: tuple[str, str] | None = None
    #: Sample rates the codec takes (others are resampled to ``rates[-1]``); None: any.
    rates: tuple[int, ...] | None = None


#: Every format ``serve`` and ``synth`` can write, in the order they are listed to users.
FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("wav", "audio/wav"),
        # audio/L16 is big-endian by RFC 2586; ours is little-endian, so a type
        # that says what it is (the rate is added per response).
        AudioFormat("pcm", "audio/pcm"),
        AudioFormat("mp3", "audio/mpeg", ("MP3", "MPEG_LAYER_III"),
                    (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
        AudioFormat("opus", "audio/ogg;codecs=opus", ("OGG", "OPUS"), (8000, 12000, 16000, 24000, 48000)),
        AudioFormat("flac", "audio/flac", ("FLAC", "PCM_16")),
    )
}
#: libsndfile's MP3 setting: constant bit rate, about 64 kbit/s for 16-24 kHz speech.
MP3_COMPRESSION = 0.6


def media_type(fmt: str, sample_rate: int) -> str:
    """The Content-Type of ``fmt``; raw PCM says its rate, since nothing else in it does."""
    spec = FORMATS[fmt]
    return f"{spec.media_type};rate={sample_rate}" if fmt == "pcm" else spec.media_type


def output_rate(fmt: str, sample_rate: int) -> int:
    """The rate ``fmt`` is written at for audio at ``sample_rate``."""
    rates = FORMATS[fmt].rates
    return sample_rate if rates is None or sample_rate in rates else rates[-1]


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


def from_pcm16(pcm: bytes) -> np.ndarray:
    """Float samples in [-1, 1] from little-endian signed 16-bit PCM."""
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32767.0


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
    return encode(to_pcm16(samples), sample_rate, "wav")


def read_wav(data: bytes) -> tuple[bytes, int]:
    """The PCM16 samples and rate of a mono 16-bit WAV file (as :func:`wav_header` writes)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
            if (tag, channels, bits) != (1, 1, 16):
                raise ValueError(f"not mono 16-bit PCM (format {tag}, {channels} channels, {bits} bits)")
        elif chunk == b"data":
            if rate is None:
                raise ValueError("WAV data before its fmt chunk")
            end = len(data) if size == 0xFFFFFFFF else min(len(data), body + size)
            return data[body:end - (end - body) % 2], rate
        pos = body + size + size % 2
    raise ValueError("WAV file without a data chunk")


class _StreamSink:
    """The file libsndfile writes a stream into: bytes go out as they come.

    A stream cannot be rewound, so a write behind the end (a header libsndfile
    completes on close) is dropped. MP3's first frame is a blank placeholder
    for the LAME tag written on close; it is dropped too, or players would
    trust its empty frame count.
    """

    def __init__(self, drop_placeholder: bool) -> None:
        self._out: list[bytes] = []
        self._pos = 0
        self._end = 0
        self._drop_placeholder = drop_placeholder

    def write(self, data) -> int:
        data = bytes(data)
        written = len(data)
        start, self._pos = self._pos, self._pos + len(data)
        if start < self._end:  # a rewrite of what is already sent (clipped at the end, which has not)
            data = data[self._end - start:]
            start = self._end
        if self._drop_placeholder and start == 0 and _blank_mp3_frame(data):
            self._drop_placeholder = False
        elif data:
            self._out.append(data)
        self._end = max(self._end, self._pos)
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""  # nothing written can be read back

    def take(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out


def _blank_mp3_frame(data: bytes) -> bool:
    return len(data) > 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and not any(data[4:])


class Encoder:
    """Audio in ``fmt``, fed PCM16 piece by piece; each call returns the bytes ready so far.

    ``rate`` resamples to another rate (OpenAI's PCM is always 24 kHz).
    ``stream=False`` writes a complete file (headers completed on close:
    lengths, FLAC's STREAMINFO, MP3's LAME tag); ``stream=True`` a file whose
    bytes can be sent as they come (see the module docstring).
    """

    def __init__(self, fmt: str, sample_rate: int, stream: bool = False, rate: int | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.format = FORMATS[fmt]
        self.rate_in = sample_rate
        self.rate = output_rate(fmt, rate or sample_rate)
        self.stream = stream
        self._pcm: list[bytes] = []  # wav/pcm of a whole file: the header needs the length
        self._file = None
        self._sink: _StreamSink | io.BytesIO | None = None
        if self.format.soundfile is not None:
            import soundfile as sf

            container, subtype = self.format.soundfile
            self._sink = _StreamSink(drop_placeholder=container == "MP3") if stream else io.BytesIO()
            extra = {"bitrate_mode": "CONSTANT", "compression_level": MP3_COMPRESSION} if container == "MP3" else {}
            self._file = sf.SoundFile(self._sink, "w", self.rate, 1, format=container, subtype=subtype, **extra)

    def start(self) -> bytes:
        """What can be sent before any audio (a streamed WAV's open-ended header)."""
        if self.stream and self.format.name == "wav":
            return wav_header(self.rate, None)
        return self._ready()

    def feed(self, pcm: bytes) -> bytes:
        """Encode a piece (PCM16 at the input rate); the bytes ready so far."""
        if self.rate != self.rate_in:
            pcm = to_pcm16(resample(from_pcm16(pcm), self.rate_in, self.rate))
        if self._file is not None:
            self._file.write(np.frombuffer(pcm, "<i2"))
            return self._ready()
        if self.stream:
            return pcm
        self._pcm.append(pcm)
        return b""

    def finish(self) -> bytes:
        """The rest of the file."""
        if self._file is not None:
            self._file.close()
            if isinstance(self._sink, io.BytesIO):
                return self._sink.getvalue()
            return self._ready()
        if self.stream:
            return b""
        pcm = b"".join(self._pcm)
        return (wav_header(self.rate, len(pcm)) if self.format.name == "wav" else b"") + pcm

    def _ready(self) -> bytes:
        return self._sink.take() if isinstance(self._sink, _StreamSink) else b""


def encode(pcm: bytes, sample_rate: int, fmt: str, rate: int | None = None) -> bytes:
    """A complete file in ``fmt`` from PCM16 at ``sample_rate`` (resampled to ``rate``)."""
    encoder = Encoder(fmt, sample_rate, rate=rate)
    return encoder.start() + encoder.feed(pcm) + encoder.finish()
