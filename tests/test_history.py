from __future__ import annotations

from ttsha import history
from ttsha.config import Config, MonitorConfig


def _config(tmp_path):
    return Config(monitor=MonitorConfig(state_file=tmp_path / "state" / "monitor.json"))


def test_events_are_appended_next_to_the_state_file_and_read_back(tmp_path):
    config = _config(tmp_path)
    assert history.entries(config) == []
    history.record(config, {"kind": "switchover", "target": "b"})
    history.record(config, {"kind": "drill", "target": "a"})
    assert history.history_file(config) == tmp_path / "state" / "failover-history.jsonl"
    found = history.entries(config)
    assert [e["kind"] for e in found] == ["switchover", "drill"] and all(isinstance(e["at"], float) for e in found)


def test_a_line_cut_short_is_skipped(tmp_path):
    config = _config(tmp_path)
    history.record(config, {"kind": "drill"})
    with open(history.history_file(config), "a") as f:
        f.write('{"kind": "swi')  # a crash mid-write
    assert [e["kind"] for e in history.entries(config)] == ["drill"]


def test_an_unwritable_history_is_logged_not_raised(tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the directory should be")
    history.record(_config(tmp_path), {"kind": "drill"})
    assert "cannot record the event" in caplog.text
