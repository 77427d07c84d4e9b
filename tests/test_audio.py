from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from ttsha.audio import FORMATS, Encoder, encode, media_type, read_wav, to_pcm16, wav_bytes


def tone(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return to_pcm16(0.3 * np.sin(2 * np.pi * 220 * t))


def decode(data: bytes, fmt: str, pcm_rate: int = 0) -> tuple[np.ndarray, int]:
    """Samples and rate of ``data``, read front to back as a player does.

    soundfile's own ``read`` trusts the length in the header, which a streamed
    FLAC leaves unknown; libsndfile itself reads such a stream to its end.
    """
    if fmt == "pcm":
        return np.frombuffer(data, "<i2"), pcm_rate
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert f.channels == 1
        block = np.empty(4096, np.int16)
        ptr = sf._ffi.cast("short *", block.ctypes.data)
        parts = []
        while (n := sf._snd.sf_readf_short(f._file, ptr, len(block))) > 0:
            parts.append(block[:n].copy())
        return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), f.samplerate


#: Encoder delay and padding a lossy stream may add (MP3: about 50-100 ms without its LAME tag).
SLACK_S = 0.15


@pytest.mark.parametrize("rate", [16000, 24000])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_every_format_decodes_to_the_audio_it_was_given(fmt, rate, stream):
    pcm = tone(1.0, rate)
    encoder = Encoder(fmt, rate, stream=stream)
    parts = [encoder.start()] + [encoder.feed(pcm) for _ in range(3)] + [encoder.finish()]
    samples, got_rate = decode(b"".join(parts), fmt, rate)
    assert got_rate == rate
    assert 3.0 <= len(samples) / rate <= 3.0 + (SLACK_S if stream and fmt == "mp3" else 0.001)
    # Speech-like level survives the codec (a silent or garbled stream would not).
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32767) ** 2)))
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.15)
    if stream:
        # A stream hands out bytes before its end: the first piece is not held back.
        assert sum(len(p) for p in parts[:2]) > 0, "nothing was ready after the first piece"


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_a_whole_file_says_its_length(fmt):
    data = encode(tone(2.0, 24000), 24000, fmt)
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == 24000 and info.duration == pytest.approx(2.0, abs=0.001)


def test_streamed_mp3_has_no_blank_placeholder_frame():
    encoder = Encoder("mp3", 24000, stream=True)
    data = encoder.start() + encoder.feed(tone(1.0, 24000)) + encoder.finish()
    assert data[:2] == b"\xff\xf3" and any(data[4:100]), "the stream starts with the empty LAME-tag frame"


def test_streamed_wav_has_an_open_ended_header():
    encoder = Encoder("wav", 16000, stream=True)
    head = encoder.start()
    assert head[:4] == b"RIFF" and head[40:44] == b"\xff\xff\xff\xff"
    assert encoder.feed(b"\x01\x00" * 10) == b"\x01\x00" * 10


def test_resampled_output_and_unsupported_codec_rates():
    pcm = tone(1.0, 16000)
    samples, rate = decode(encode(pcm, 16000, "pcm", rate=24000), "pcm", 24000)
    assert len(samples) == 24000
    # Opus takes 8/12/16/24/48 kHz only: 22.05 kHz goes out at 48 kHz.
    samples, rate = decode(encode(tone(1.0, 22050), 22050, "opus"), "opus")
    assert rate == 48000 and len(samples) == pytest.approx(48000, abs=10)


def test_one_wav_writer_and_its_reader():
    samples = np.linspace(-1, 1, 1000, dtype=np.float32)
    wav = wav_bytes(samples, 16000)
    pcm, rate = read_wav(wav)
    assert rate == 16000 and pcm == to_pcm16(samples) and wav == encode(pcm, 16000, "wav")
    read, _ = sf.read(io.BytesIO(wav), dtype="int16")
    assert read.tobytes() == pcm
    with pytest.raises(ValueError, match="not a WAV"):
        read_wav(b"OggS" + bytes(40))


def test_the_wav_path_loads_no_codec_library():
    """WAV and PCM come from our own header: ``synth -o x.wav`` and serve's store never load libsndfile
    (its import costs about 3x ours, for the same bytes)."""
    probe = ("import sys, numpy as np; from ttsha.audio import encode, wav_bytes; "
             "encode(wav_bytes(np.zeros(100, np.float32), 24000)[44:], 24000, 'pcm'); "
             "print('soundfile' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_media_types():
    assert media_type("pcm", 24000) == "audio/pcm;rate=24000"  # never audio/L16: that is big-endian
    assert media_type("opus", 24000) == "audio/ogg;codecs=opus"
    assert media_type("mp3", 24000) == "audio/mpeg"
    with pytest.raises(ValueError, match="wav, pcm, mp3, opus, flac"):
        Encoder("aac", 24000)
