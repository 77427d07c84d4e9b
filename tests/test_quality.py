"""The canary's quality check (issue 19, item 6): fingerprints, the golden file,
a node that goes degraded when its audio strays, and damaged model weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ttsha import quality
from ttsha.cli import main
from ttsha.config import ServeConfig
from ttsha.errors import ConfigError

from .server.conftest import FakeEngine, Node

RATE = 16000


def tone(freq: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_same_audio_is_close_other_audio_is_far():
    golden = quality.Golden.record("fake", "v1", "", tone(200), RATE)
    assert golden.mel.shape[1] == quality.BANDS
    same = quality.compare(golden, tone(200), RATE, 1.0)
    assert same.reason is None and same.distance_db == 0.0
    noisy = tone(200) + np.random.default_rng(0).normal(0, 1e-4, tone(200).size).astype(np.float32)
    assert quality.compare(golden, noisy, RATE, 1.0).reason is None  # numerical noise is not a fault
    other = quality.compare(golden, tone(900), RATE, 1.0)
    assert other.distance_db > 5 and "differs from the golden fingerprint" in other.reason
    shorter = quality.compare(golden, tone(200, 1.5), RATE, 1.0)
    assert shorter.reason.endswith(f"the golden has {golden.mel.shape[0]}")
    assert "sample rate" in quality.compare(golden, tone(200), 22050, 1.0).reason


def test_golden_file_round_trip_and_files_that_are_not_one(tmp_path):
    golden = quality.Golden.record("fake", "v1", "alice", tone(200), RATE)
    path = tmp_path / quality.GOLDEN_NAME
    golden.save(path)
    back = quality.Golden.load(path)
    assert (back.engine, back.model_version, back.voice, back.sample_rate) == ("fake", "v1", "alice", RATE)
    assert np.array_equal(back.mel, golden.mel)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for bad in (tmp_path / "junk.npz", tmp_path / "missing.npz"):
        with pytest.raises(ConfigError, match=str(bad.name)):
            quality.Golden.load(bad)
    np.savez(tmp_path / "pickled.npz", mel=np.array([object()], dtype=object), meta=np.zeros(3, np.uint8))
    with pytest.raises(ConfigError, match="not a golden"):  # never unpickles what replication brought
        quality.Golden.load(tmp_path / "pickled.npz")


def test_a_node_whose_canary_strays_from_the_golden_is_degraded_until_it_matches_again(tmp_path):
    engine = FakeEngine()
    node = Node(engine, tmp_path / "store", ServeConfig(canary_interval=3600), start=False)
    try:
        golden_file = tmp_path / quality.GOLDEN_NAME
        node.service.golden_path = golden_file
        node.service.start()  # no golden yet: the canary checks plausibility only
        assert node.service.readiness.status == "ready"
        assert "quality" not in node.service.readiness.canary
        fake_audio = engine.synthesize(quality.CANARY_TEXT)
        quality.Golden.record("fake", "v1", "", fake_audio.samples, fake_audio.sample_rate).save(golden_file)
        assert node.service._canary_once(blocking=True) is None
        assert node.service.readiness.canary["quality"]["distance_db"] == 0.0
        # The golden of other audio (as a model damaged in replication would say it): degraded at once.
        other = quality.Golden.record("fake", "v1", "", tone(900, fake_audio.samples.size / RATE), RATE)
        other.save(golden_file)
        reason = node.service._canary_once(blocking=True)
        assert reason and "differs from the golden fingerprint" in reason
        resp, body = node.client.request("GET", "/health")
        assert resp.status == 503 and b"degraded" in body and b"golden fingerprint" in body
        _, metrics = node.client.request("GET", "/metrics")
        distance = [line for line in metrics.decode().splitlines() if line.startswith("ttsha_canary_distance_db ")]
        assert distance and float(distance[0].split()[1]) > 1.0
        golden_file.write_bytes(b"garbage")  # an unreadable golden is a failure too, named
        assert str(golden_file) in node.service._canary_once(blocking=True)
        quality.Golden.record("fake", "v1", "", fake_audio.samples, fake_audio.sample_rate).save(golden_file)
        assert node.service._canary_once(blocking=True) is None and node.service.readiness.status == "ready"
    finally:
        node.close()


def _damage_weights(path, fraction: float = 0.02, seed: int = 7) -> None:
    """Change bytes inside the largest weight tensor only: the file still loads (bit rot, not truncation)."""
    from ttsha.engine.tflite_reader import TFLiteModel

    model = TFLiteModel(path)
    buffers = [model._model.Buffers(i) for i in range(model._model.BuffersLength())]
    largest = max(buffers, key=lambda b: b.DataLength()).DataAsNumpy().tobytes()
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(largest[:256])
    assert offset > 0
    rng = np.random.default_rng(seed)
    for i in rng.integers(offset, offset + len(largest), int(fraction * len(largest))):
        data[i] = (data[i] + int(rng.integers(1, 256))) % 256
    path.write_bytes(bytes(data))


def test_damaged_weights_pass_the_plausibility_check_but_not_the_golden(tmp_path, capsys):
    from ttsha.engine.embedded import find_asset_dir
    from ttsha.server.service import check_canary_audio

    assets = tmp_path / "assets"
    shutil.copytree(find_asset_dir(), assets)
    models = tmp_path / "models"
    models.mkdir()
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{assets}"\nthreads = 1\n[replicate]\nlocal_models = "{models}"\n')
    assert main(["--config", str(cfg), "canary", "record"]) == 0
    assert (models / quality.GOLDEN_NAME).is_file()  # beside the models: replication carries it
    assert main(["--config", str(cfg), "canary", "check"]) == 0
    assert "distance 0.00 dB" in capsys.readouterr().out
    _damage_weights(assets / "fastspeech2_quan.tflite", fraction=0.1)
    from ttsha.config import load

    _, _, samples, rate = quality._canary_audio(load(cfg))
    assert check_canary_audio(samples, rate, quality.CANARY_TEXT) is None  # it still sounds like speech
    assert main(["--config", str(cfg), "canary", "check"]) == 1  # over the default 1 dB
    assert "canary differs from the golden: audio differs" in capsys.readouterr().err
