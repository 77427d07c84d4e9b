from __future__ import annotations

import json

import pytest

from ttsha.monitor import statefile
from ttsha.monitor.statefile import MonitorState, StateFileError

DOC = {
    "updated_at": 1000.0, "mode": "active-standby", "primary": "a", "all_down": False,
    "nodes": {"a": {"status": "up", "role": "primary", "since": 900.0, "last_probe_ms": 1.5, "last_error": "",
                    "engine": "fake", "model_version": "1", "replication": {"queue_depth": 0}},
              "b": {"status": "down", "role": "down", "since": None, "last_probe_ms": None, "last_error": "refused"}},
    "nginx": {"ok": True}, "events": [{"at": 950.0, "kind": "marked_down", "node": "b", "detail": "refused"}],
}


def test_the_monitors_document_reads_typed(tmp_path):
    path = tmp_path / "monitor.json"
    path.write_text(json.dumps(DOC))
    state = statefile.load(path)
    assert state.primary == "a" and state.nginx_ok and state.mode == "active-standby"
    assert state.nodes["a"].role == "primary" and state.nodes["a"].replication == {"queue_depth": 0}
    assert state.nodes["b"].since is None and state.nodes["b"].last_error == "refused"
    assert state.events[0].kind == "marked_down" and state.event_dicts() == DOC["events"]
    assert state.raw == DOC


def test_a_missing_or_broken_file_says_why(tmp_path):
    with pytest.raises(StateFileError, match="is 'ttsha monitor' running"):
        statefile.load(tmp_path / "none.json")
    (tmp_path / "cut.json").write_text('{"nodes": {')
    with pytest.raises(StateFileError, match="cannot read"):
        statefile.load(tmp_path / "cut.json")
    assert statefile.read(tmp_path / "cut.json") is None and statefile.read(tmp_path / "none.json") is None


@pytest.mark.parametrize("doc", [[], {}, {"nodes": {"a": {}}}, {"nodes": {}, "events": [{"kind": "x"}]}])
def test_a_document_not_the_monitors_is_refused(doc):
    with pytest.raises(StateFileError):
        MonitorState.from_json(doc)
