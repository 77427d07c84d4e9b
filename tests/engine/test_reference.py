"""The torch port against the original .tflite networks.

``tests/fixtures/reference.npz`` holds outputs of the original files run by
TensorFlow 2.15's TFLite interpreter, with the FastSpeech2 inference dropout
patched out (``make fixtures``, dev-only). The fixtures fix the phone ids, so
this tests the networks, not the front end.

The original runs "hybrid" int8 kernels: weights are int8 and each layer
rounds its *input activations* to int8 on the fly. ttsha computes in float by
default (closer to the trained model); with ``emulate_int8`` it reproduces
that rounding. Tolerances, in log-mel units (the mels span about -4..3):

* emulated: durations within 1 frame per phone; mel mean |error| < 0.04,
  max < 0.5. The encoder and predictors then match to 1e-5; what remains
  comes from decoder convolutions whose TFLite kernel rounds differently.
* float: mel mean |error| < 0.07, max < 1.0 (the original's rounding noise).
* vocoder: waveform max |error| < 0.002 emulated (the original rounds its
  sub-band signals to int8 before the PQMF), < 0.03 in float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reference.npz"
CASES = ("short", "numbers", "long", "prosody")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES)


@pytest.fixture
def acoustic(embedded_engine):
    net = embedded_engine.acoustic
    yield net
    net.emulate_int8 = False


@pytest.fixture
def vocoder(embedded_engine):
    net = embedded_engine.vocoder
    yield net
    net.emulate_int8 = False


def run(net, reference, name, force_durations):
    ids = torch.tensor(reference[f"{name}.ids"])[None]
    speed, f0, energy = (float(v) for v in reference[f"{name}.ratios"])
    durations = torch.tensor(reference[f"{name}.durations"]) if force_durations else None
    _, mel, durs = net(ids, speed, f0, energy, durations=durations)
    return mel[0].numpy(), durs.numpy()


@pytest.mark.parametrize("name", CASES)
def test_emulated_durations_match(acoustic, reference, name):
    acoustic.emulate_int8 = True
    _, durations = run(acoustic, reference, name, force_durations=False)
    expected = reference[f"{name}.durations"]
    assert durations.shape == expected.shape
    assert np.abs(durations - expected).max() <= 1
    assert abs(int(durations.sum()) - int(expected.sum())) <= max(2, 0.03 * expected.sum())


@pytest.mark.parametrize("name", CASES)
def test_emulated_mel_matches(acoustic, reference, name):
    acoustic.emulate_int8 = True
    mel, _ = run(acoustic, reference, name, force_durations=True)
    error = np.abs(mel - reference[f"{name}.mel_after"].astype(np.float32))
    assert error.mean() < 0.04
    assert error.max() < 0.5


@pytest.mark.parametrize("name", CASES)
def test_float_mel_is_close(acoustic, reference, name):
    mel, _ = run(acoustic, reference, name, force_durations=True)
    expected = reference[f"{name}.mel_after"].astype(np.float32)
    error = np.abs(mel - expected)
    assert error.mean() < 0.07
    assert error.max() < 1.0
    # And far from a trivially wrong answer such as the mean spectrum.
    assert np.abs(expected - expected.mean(axis=0)).mean() > 5 * error.mean()


@pytest.mark.parametrize("name", CASES)
def test_bf16_keeps_lengths_and_stays_near_float32(acoustic, reference, name):
    """The default path (bf16 decoder where the CPU has it) against float32 throughout."""
    if not acoustic.bf16:
        pytest.skip("this CPU has no native bf16 kernels: the model runs in float32")
    fast_mel, fast_durations = run(acoustic, reference, name, force_durations=False)
    acoustic.use_bf16(False)
    try:
        mel, durations = run(acoustic, reference, name, force_durations=False)
    finally:
        acoustic.use_bf16(True)
    np.testing.assert_array_equal(fast_durations, durations)
    error = np.abs(fast_mel - mel)
    assert 0 < error.mean() < 0.01  # bf16 did run, and moved the mels far less than int8 rounding does
    assert error.max() < 0.25


def test_vocoder_matches(vocoder, reference):
    mel = torch.tensor(reference["vocoder.mel"].astype(np.float32))[None]
    expected = reference["vocoder.wave"].astype(np.float32)
    vocoder.emulate_int8 = True
    emulated = vocoder(mel).numpy()
    vocoder.emulate_int8 = False
    plain = vocoder(mel).numpy()
    assert emulated.shape == expected.shape == (mel.shape[1] * vocoder.hop_length,)
    assert np.abs(emulated - expected).max() < 0.002
    assert np.abs(plain - expected).max() < 0.03
    assert np.abs(expected).max() > 0.1  # the fixture holds speech, not silence
