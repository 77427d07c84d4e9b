"""End to end: the installed ``ttsha`` script as an admin would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.e2e

EXE = Path(sys.executable).with_name("ttsha")


def ttsha(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTSHA_CONFIG": ""}
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300, env=env, **kw)


def test_readme_first_command(tmp_path):
    """The README's install-and-run command ends with this synthesis."""
    proc = ttsha("synth", "欢迎使用语音合成服务。", "-o", "hello.wav", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    samples, rate = sf.read(tmp_path / "hello.wav")
    assert rate == 24000 and len(samples) > rate


def test_long_article_with_every_option(tmp_path):
    article = tmp_path / "article.txt"
    article.write_text(
        "Sambert-HifiGan语音合成服务的灾备方案。随着智能客服、有声阅读、虚拟主播等AI语音应用的普及，"
        "语音合成服务已成为许多产品链路中的关键环节。2026年1月9日21:01，模型首次加载约需30~60秒，"
        "切换后仅中间约10s内的请求出现502错误，错误率为0%。\n" * 3,
        encoding="utf-8",
    )
    out = tmp_path / "article.wav"
    proc = ttsha("synth", "--file", str(article), "--emotion", "calm", "--speed", "1.3", "--sample-rate", "16000",
                 "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    info = sf.info(out)
    assert info.samplerate == 16000
    assert 20 < info.duration < 120
    # Latin letters (Sambert-HifiGan, AI) are spelled, so nothing here is unsayable.
    assert "skipping what the voice cannot say" not in proc.stderr


def test_doctor_and_voices():
    proc = ttsha("voices", "--json")
    assert proc.returncode == 0 and '"baker"' in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ttsha", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ttsha" in proc.stdout
