"""CLI messages print user and config text literally (issue 16, item 9)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ttsha.cli import main
from ttsha.errors import Refused

EXE = Path(sys.executable).with_name("ttsha")


def test_brackets_in_an_error_message_survive(monkeypatch, capsys):
    import ttsha.cli.config_cmd as config_cmd

    def refuse(*args, **kwargs):
        raise Refused("no [replicate] section; set [engine] model_dir or [/x]")

    monkeypatch.setattr(config_cmd, "to_toml", refuse)
    assert main(["config", "show"]) == 6
    assert "no [replicate] section; set [engine] model_dir or [/x]" in capsys.readouterr().err


def test_synth_with_a_markup_voice_is_a_clean_error(tmp_path):
    """The issue's crash: `ttsha synth 你好 --voice '[/x]'` raised a MarkupError (exit 1, traceback)."""
    proc = subprocess.run([str(EXE), "synth", "你好", "--voice", "[/x]", "-o", str(tmp_path / "x.wav")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "unknown voice '[/x]'" in proc.stderr


def test_status_prints_node_text_literally(tmp_path, capsys):
    state = tmp_path / "monitor.json"
    now = time.time()
    state.write_text(json.dumps({
        "updated_at": now, "mode": "active-standby", "primary": "a",
        "nodes": {"a": {"status": "up", "role": "primary", "since": now, "last_probe_ms": 1.0,
                        "last_error": "HTTP 503 [bold]degraded[/bold] [/x]"}},
        "events": [{"at": now, "kind": "probe_failed", "node": "a", "detail": "[engine] gone [/]"}],
    }))
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[monitor]\nstate_file = "{state}"\n')
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "[bold]degraded[/bold] [/x]" in out and "[engine] gone [/]" in out
