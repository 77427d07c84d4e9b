from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from ttsha import __version__
from ttsha.cli import cli, main
from ttsha.errors import ConfigError, EngineError, InputError, PeerUnreachable, TTSHAError


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out


def test_help_lists_commands_with_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    commands = ("synth", "voices", "config", "doctor", "serve", "gc", "nginx", "monitor", "status", "replicate", "lab")
    for name in commands:
        assert name in out
    for name in commands:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and "Example" in out, name


def test_unknown_option_is_usage_error(capsys):
    code, _, err = run(capsys, "synth", "--bogus")
    assert code == 2 and "No such option" in err


def test_config_error_exit_code(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nport = -1\n")
    code, _, err = run(capsys, "--config", str(bad), "config", "check")
    assert code == 3
    assert f"{bad}: serve.port: must be at least 1" in err


def test_config_check_and_show(capsys, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[serve]\nport = 9123\n")
    code, _, err = run(capsys, "config", "check", str(good))
    assert code == 0 and "OK" in err
    code, out, _ = run(capsys, "--config", str(good), "config", "show")
    assert code == 0 and "port = 9123" in out
    # What 'show' prints is itself a valid configuration.
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    code, _, _ = run(capsys, "config", "check", str(shown))
    assert code == 0


@pytest.mark.parametrize(
    "error, code",
    [
        (TTSHAError("boom"), 1),
        (EngineError("model broken"), 1),
        (InputError("text is empty"), 2),
        (ConfigError("x.toml: serve.port"), 3),
        (PeerUnreachable("node standby did not answer"), 4),
    ],
)
def test_errors_map_to_exit_codes(capsys, error, code):
    @cli.command("raise-for-test")
    def raiser() -> None:
        raise error

    try:
        got, _, err = run(capsys, "raise-for-test")
    finally:
        cli.commands.pop("raise-for-test")
    assert got == code
    assert err.strip() == f"error: {error.message}"


def test_synth_writes_wav(capsys, tmp_path):
    out = tmp_path / "hello.wav"
    code, _, err = run(capsys, "synth", "欢迎使用语音合成服务", "-o", str(out))
    assert code == 0, err
    samples, rate = sf.read(out)
    assert rate == 24000 and 1.0 < len(samples) / rate < 4.0
    assert "RTF" in err
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"


def test_synth_resamples_and_reads_files(capsys, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("今天天气很好。", encoding="utf-8")
    out = tmp_path / "out.wav"
    code, _, err = run(capsys, "synth", "--file", str(src), "--sample-rate", "16000", "--speed", "1.5", "-o", str(out))
    assert code == 0, err
    info = sf.info(out)
    assert info.samplerate == 16000 and info.subtype == "PCM_16"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synth", "", "-o", "X"], "text is empty"),
        (["synth", "。。。", "-o", "X"], "nothing to say"),
        (["synth", "你好", "--emotion", "furious", "-o", "X"], "unsupported emotion"),
        (["synth", "你好", "--speed", "9", "-o", "X"], "out of range"),
        (["synth", "-o", "X"], "no text"),
        (["synth", "你好", "-o", "/nonexistent-dir/x.wav"], "does not exist"),
    ],
)
def test_synth_bad_input(capsys, tmp_path, argv, message):
    argv = [a.replace("X", str(tmp_path / "x.wav")) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "x.wav").exists()


def test_synth_engine_failure(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{tmp_path}"\n')
    code, _, err = run(capsys, "--config", str(cfg), "synth", "你好", "-o", str(tmp_path / "x.wav"))
    assert code == 1 and "embedded voice data not found" in err


def test_installed_entry_point_stdin_to_stdout(tmp_path):
    """The console script, text on stdin, WAV on stdout, messages on stderr."""
    exe = Path(sys.executable).with_name("ttsha")
    proc = subprocess.run(
        [str(exe), "synth", "-", "-o", "-"],
        input="你好，世界。".encode(),
        capture_output=True,
        timeout=120,
        env={**os.environ, "TTSHA_CONFIG": ""},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    samples, rate = sf.read(io.BytesIO(proc.stdout))
    assert rate == 24000 and len(samples) > rate // 2
    assert b"RTF" in proc.stderr


def test_shell_completion():
    exe = Path(sys.executable).with_name("ttsha")
    env = {**os.environ, "_TTSHA_COMPLETE": "bash_complete", "COMP_WORDS": "ttsha sy", "COMP_CWORD": "1"}
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert "synth" in proc.stdout
    env["_TTSHA_COMPLETE"] = "bash_source"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert "_TTSHA_COMPLETE=bash_complete" in proc.stdout


def test_doctor(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}/audio"\n')
    code, out, _ = run(capsys, "--config", str(cfg), "doctor")
    assert code == 0, out
    assert "embedded voice data" in out and "OK" in out
    cfg.write_text(f'[store]\npath = "{tmp_path}/audio"\n[nginx]\ntest_command = ["/nonexistent/nginx", "-t"]\n')
    code, out, _ = run(capsys, "--config", str(cfg), "doctor")
    assert code == 1 and "FAIL" in out and "apt-get install -y nginx" in out


def test_no_command_prints_usage(capsys):
    code, out, err = run(capsys)
    assert "Usage" in out + err


def test_gc_dry_run_then_delete(capsys, tmp_path):
    from ttsha.store import AudioStore, result_id

    store = AudioStore(tmp_path / "audio")
    rid = result_id(engine="e", model_version="v", voice="x", emotion="neutral", speed=1.0, sample_rate=1, text="旧")
    store.put(rid, b"RIFF", {})
    old = time.time() - 30 * 86400
    for path in (store.audio_path(rid), store.meta_path(rid)):
        os.utime(path, (old, old))
    code, out, err = run(capsys, "gc", "--store", str(store.root), "--older-than", "7d")
    assert code == 0 and f"would remove {rid}" in out and "dry run" in err
    assert store.get(rid) is not None
    code, out, err = run(capsys, "gc", "--store", str(store.root), "--older-than", "7d", "--yes")
    assert code == 0 and f"removed {rid}" in out
    assert store.get(rid) is None
    code, _, err = run(capsys, "gc", "--older-than", "soon")
    assert code == 2 and "--older-than" in err


def test_doctor_tells_a_missing_store_from_a_writable_one(tmp_path):
    from ttsha.config import parse
    from ttsha.doctor import FAIL, OK, WARN, check_store

    def status(path):
        return check_store(parse({"store": {"path": str(path)}}))

    assert status(tmp_path / "audio").status == WARN and "does not exist yet" in status(tmp_path / "audio").detail
    (tmp_path / "audio").mkdir()
    assert status(tmp_path / "audio").status == OK
    (tmp_path / "file").write_text("x")
    assert status(tmp_path / "file").status == FAIL
    assert status(tmp_path / "file" / "audio").status == FAIL
