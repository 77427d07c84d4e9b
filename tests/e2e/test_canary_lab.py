"""Damaged model weights in the lab: the canary makes the node degraded, and no client request
lands on it (issue 19, item 6).

A model file that replication (or a disk) corrupted still loads, and its audio
still sounds like speech; only the comparison with the golden fingerprint of
the intact model catches it. Here the primary is restarted (as after an
upgrade) onto a copy of the voice whose largest tensor was damaged, while a
client that is not ttsha's code sends new texts through the gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ttsha.lab import NODE_HOSTS, alive

from ..test_quality import _damage_weights
from .test_lab import lab, ttsha  # noqa: F401 - the module's own lab (fixture)

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).with_name("outside_client.py")


def _health(url: str) -> dict:
    """The node's /health document, whatever its status code (503 while not ready)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _wait(predicate, timeout: float, what: str, seen=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass  # the node is not listening yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {seen()}")


def test_a_node_restarted_on_damaged_weights_is_degraded_and_gets_no_request(lab, tmp_path):  # noqa: F811
    from ttsha.config import load, to_toml
    from ttsha.engine.embedded import find_asset_dir

    layout = lab.layout()
    primary = lab.monitor_state()["primary"]
    standby = next(name for name in NODE_HOSTS if name != primary)
    node_url = layout.url(primary)
    # The golden of the intact model, beside the primary's models, copied to the standby
    # with them (as docs/deploy.md says: the models follow the primary, and a
    # standby that became the primary without it would delete it).
    for step in (("canary", "record"), ("replicate", "--once", "models")):
        proc = ttsha("--config", str(lab.node_config(primary)), *step)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (layout.node_dir(standby) / "models" / "ttsha-canary.npz").is_file()
    voice = tmp_path / "voice"
    shutil.copytree(find_asset_dir(), voice)
    _damage_weights(voice / "fastspeech2_quan.tflite", fraction=0.1)
    config = load(lab.node_config(primary))
    damaged = tmp_path / "damaged.toml"
    damaged.write_text(to_toml(replace(config, engine=replace(config.engine, data_dir=voice))))

    store = layout.node_dir(primary) / "audio"
    before = len(list(store.rglob("*.wav")))
    out = tmp_path / "traffic.json"
    client = subprocess.Popen([sys.executable, str(CLIENT), "traffic", layout.gateway_url, "30", "1.5", str(out)])
    node, log = None, open(tmp_path / "serve.log", "w")
    try:
        # Some of the traffic on the intact primary first.
        _wait(lambda: len(list(store.rglob("*.wav"))) >= before + 2, 60, "the primary to synthesize")
        pid = lab.pid(primary)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # drains, as systemctl stop does
        _wait(lambda: not alive(pid), 30, "the primary to stop")
        node = subprocess.Popen([sys.executable, "-m", "ttsha", "--config", str(damaged), "serve",
                                 "--host", NODE_HOSTS[primary], "--port", str(layout.node_ports[primary]),
                                 "--store", str(store)], stdout=subprocess.DEVNULL, stderr=log)
        _wait(lambda: _health(node_url)["status"] == "degraded", 120, "the damaged node to report degraded",
              lambda: (tmp_path / "serve.log").read_text()[-3000:])
        health = _health(node_url)
        canary = health["canary"]
        assert not canary["ok"] and "golden" in canary["reason"], canary
        assert canary["quality"]["distance_db"] > canary["quality"]["limit_db"], canary
        # The monitor keeps it out: the other node is the primary, this one down.
        _wait(lambda: lab.monitor_state()["primary"] == standby, 30, "the standby to be the primary")
        assert lab.monitor_state()["nodes"][primary]["status"] == "down"
        degraded_at = time.time()
        assert client.wait(120) == 0
    finally:
        if client.poll() is None:
            client.kill()
        if node is not None and node.poll() is None:
            node.terminate()
            node.wait(30)
        log.close()
        lab.start_node(primary)  # the intact model again
    results = json.loads(out.read_text())
    assert len(results) == 45
    failed = [r for r in results if r["status"] != 200]
    assert failed == [], failed
    damaged_address = f"{NODE_HOSTS[primary]}:{layout.node_ports[primary]}"
    after = [r for r in results if r["at"] > degraded_at]
    assert after and not any(damaged_address in r["upstream"] for r in after), after
    # Intact again: the node rejoins as the backup (failback is manual).
    _wait(lambda: lab.monitor_state()["nodes"][primary]["status"] == "up", 120, "the restored node to rejoin")
    assert lab.monitor_state()["primary"] == standby
