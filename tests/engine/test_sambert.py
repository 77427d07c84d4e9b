"""The Sambert engine's contract with ModelScope, against a stand-in ``modelscope``.

The real pipeline needs kantts/ttsfrd wheels and weights that are not
installable here; the stand-in records how it is called and answers with
real WAV bytes, so the loading, SSML and decoding code is exercised as is.
"""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from ttsha.engine.sambert import SambertEngine, ssml
from ttsha.errors import EngineError, InputError

STANDIN = {
    "modelscope/__init__.py": "",
    "modelscope/outputs.py": "class OutputKeys:\n    OUTPUT_WAV = 'output_wav'\n",
    "modelscope/utils/__init__.py": "",
    "modelscope/utils/constant.py": "class Tasks:\n    text_to_speech = 'text-to-speech'\n",
    "modelscope/pipelines/__init__.py": textwrap.dedent(
        """
        import io, os
        import numpy as np
        import soundfile as sf

        calls = []
        behaviour = {"mode": "ok", "rate": 16000}

        class _Pipeline:
            def __init__(self, task, model):
                self.task, self.model = task, model

            def __call__(self, input, voice=None):
                calls.append({"input": input, "voice": voice, "offline": os.environ.get("MODELSCOPE_OFFLINE")})
                if behaviour["mode"] == "raise":
                    raise RuntimeError("kantts exploded")
                if behaviour["mode"] == "garbage":
                    return {"output_wav": b"not a wav"}
                if behaviour["mode"] == "none":
                    return {}
                rate = behaviour["rate"]
                t = np.arange(int(0.5 * rate)) / rate
                buf = io.BytesIO()
                sf.write(buf, 0.5 * np.sin(2 * np.pi * 220 * t), rate, format="WAV", subtype="PCM_16")
                return {"output_wav": buf.getvalue()}

        def pipeline(task=None, model=None, **kwargs):
            calls.append({"task": task, "model": model, "kwargs": kwargs})
            if behaviour["mode"] == "load_fails":
                raise ValueError("bad model")
            return _Pipeline(task, model)
        """
    ),
    # Shaped like ModelScope's own audio wheels (only the names the engine checks).
    "kantts/__init__.py": "",
    "kantts/models/__init__.py": "",
    "ttsfrd/__init__.py": "class TtsFrontendEngine:\n    pass\n",
}
#: What PyPI's unrelated packages of the same names contain.
PLACEHOLDER = "def hello():\n    return 'hello'\n"


@pytest.fixture
def standin(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for rel, body in STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.split(".")[0] in ("modelscope", "kantts", "ttsfrd")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("MODELSCOPE_OFFLINE", raising=False)
    import modelscope.pipelines as pipelines

    yield pipelines
    for name in [m for m in sys.modules if m.split(".")[0] in ("modelscope", "kantts", "ttsfrd")]:
        del sys.modules[name]


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "speech_sambert-hifigan_tts_zh-cn_16k"
    path.mkdir()
    (path / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-to-speech"}))
    (path / "pytorch_model.bin").write_bytes(b"weights")
    return path


def test_loads_from_local_directory_offline(standin, model_dir):
    info = SambertEngine(model_dir).load()
    assert standin.calls[0]["task"] == "text-to-speech"
    assert standin.calls[0]["model"] == str(model_dir)
    assert os.environ["MODELSCOPE_OFFLINE"] == "1"
    assert info.engine == "sambert" and info.sample_rate == 16000
    assert info.default_voice == "zhitian_emo" and "zhibei_emo" in info.voices
    assert "happy" in info.emotions and len(info.model_version) == 16


def test_model_version_follows_the_files(standin, model_dir):
    first = SambertEngine(model_dir).load().model_version
    (model_dir / "pytorch_model.bin").write_bytes(b"other weights")
    assert SambertEngine(model_dir).load().model_version != first


def test_synthesis_call_and_decoding(standin, model_dir):
    engine = SambertEngine(model_dir)
    audio = engine.synthesize("今天天气很好", voice="zhiyan_emo", emotion="happy")
    call = standin.calls[-1]
    assert call["voice"] == "zhiyan_emo"
    assert call["input"] == '<speak><emotion category="happy" intensity="1.00">今天天气很好</emotion></speak>'
    assert call["offline"] == "1"
    assert audio.sample_rate == 16000
    assert audio.duration_s == pytest.approx(0.5, abs=0.01)
    assert 0.45 < np.abs(audio.samples).max() <= 0.5 + 1e-3


def test_user_text_is_escaped(standin, model_dir):
    engine = SambertEngine(model_dir)
    engine.synthesize('你好</emotion><x a="1">&世界', emotion="sad")
    sent = standin.calls[-1]["input"]
    assert "&lt;/emotion&gt;&lt;x" in sent and "&amp;" in sent
    assert sent.count("</emotion>") == 1
    assert ssml("你好&", "neutral") == "你好&amp;"


def test_resamples_to_the_reported_rate(standin, model_dir):
    standin.behaviour["rate"] = 22050
    audio = SambertEngine(model_dir).synthesize("你好")
    assert audio.sample_rate == 16000
    assert len(audio.samples) == pytest.approx(8000, abs=2)


@pytest.mark.parametrize("mode, message",
                         [("raise", "kantts exploded"), ("garbage", "undecodable"), ("none", "no WAV")])
def test_pipeline_failures_are_engine_errors(standin, model_dir, mode, message):
    engine = SambertEngine(model_dir)
    engine.load()
    standin.behaviour["mode"] = mode
    with pytest.raises(EngineError, match=message):
        engine.synthesize("你好")


def test_load_failure(standin, model_dir):
    standin.behaviour["mode"] = "load_fails"
    with pytest.raises(EngineError, match="cannot load the Sambert pipeline"):
        SambertEngine(model_dir).load()


def test_bad_requests(standin, model_dir):
    engine = SambertEngine(model_dir)
    with pytest.raises(InputError, match="unknown voice"):
        engine.synthesize("你好", voice="baker")
    with pytest.raises(InputError, match="out of range"):
        engine.synthesize("你好", speed=1.5)


def test_missing_model_directory(standin, tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        SambertEngine(tmp_path / "nope").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="configuration.json"):
        SambertEngine(tmp_path / "empty").load()


def test_missing_modelscope_names_what_to_install(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(EngineError, match="pip install 'ttsha\\[sambert\\]'"):
        SambertEngine(model_dir).load()


def test_standin_wav_is_real(standin):
    # Guard the stand-in itself: its bytes must decode as the engine expects.
    out = standin.pipeline(task="t", model="m")(input="x")
    samples, rate = sf.read(io.BytesIO(out["output_wav"]))
    assert rate == 16000 and len(samples) == 8000


@pytest.mark.parametrize("package", ["kantts", "ttsfrd"])
def test_pypi_placeholder_wheels_are_named_as_such(standin, model_dir, tmp_path, package):
    # PyPI's kantts/ttsfrd 0.1.0 import fine and hold only hello(): say so at load, not deep in the pipeline.
    fake = tmp_path / "placeholder"
    (fake / package).mkdir(parents=True)
    (fake / package / "__init__.py").write_text(PLACEHOLDER)
    sys.path.insert(0, str(fake))
    try:
        with pytest.raises(EngineError, match=f"installed {package} .*placeholder.*not the PyPI packages"):
            SambertEngine(model_dir).load()
    finally:
        sys.path.remove(str(fake))
    assert not any("task" in call for call in standin.calls)  # the pipeline was never built


def test_missing_frontend_wheel_names_what_to_install(standin, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ttsfrd", None)
    with pytest.raises(EngineError, match="ttsfrd is not installed.*ModelScope's own kantts and ttsfrd"):
        SambertEngine(model_dir).load()


def test_ssml_elements_pass_through_to_sambert(standin, model_dir):
    from ttsha.engine.ssml import SSMLError

    engine = SambertEngine(model_dir)
    document = ('<speak>银<phoneme alphabet="pinyin" ph="hang2">行</phoneme>卡号<say-as interpret-as="digits">'
                '6222</say-as>，<sub alias="世界卫生组织">WHO</sub>&amp;你<break time="200ms"/>'
                '<prosody volume="-6dB">好</prosody></speak>')
    parts = list(engine.stream(document, emotion="happy", ssml=True))
    sent = [call["input"] for call in standin.calls if "input" in call]
    assert sent == [
        '<speak><emotion category="happy" intensity="1.00">银<phoneme alphabet="py" ph="hang2">行</phoneme>卡号'
        '<say-as interpret-as="digits">6222</say-as></emotion></speak>',
        '<speak><emotion category="happy" intensity="1.00"><sub alias="世界卫生组织">WHO</sub>&amp;你'
        '</emotion></speak>',
        '<speak><emotion category="happy" intensity="1.00">好</emotion></speak>',
    ]
    # The clause's pause, then the break; the quieter piece at half the amplitude.
    assert [len(p) for p in parts[1:4:2]] == [int(0.15 * 16000), int(0.2 * 16000)]
    assert np.abs(parts[-1]).max() == pytest.approx(np.abs(parts[0]).max() * 10 ** (-6 / 20), rel=1e-3)
    for refused in ("<prosody rate='fast'>好</prosody>", "<prosody pitch='high'>好</prosody>"):
        with pytest.raises(SSMLError, match="prosody"):
            engine.pieces(f"<speak>{refused}</speak>", ssml=True)
