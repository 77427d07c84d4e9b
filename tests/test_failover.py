"""Planned switchover against a real Nginx and real node processes on loopback."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ttsha import failover
from ttsha.cli import main
from ttsha.config import NodeConfig
from ttsha.errors import EXIT_REFUSED, EXIT_USAGE, Refused
from ttsha.history import entries, history_file
from ttsha.monitor.control import GatewayLock, lock_path
from ttsha.monitor.state import Decider, node_label

from .monitor.conftest import pair  # noqa: F401  (fixture)
from .monitor.test_gateway import Traffic, start_monitor, wait_for


def primary_in_upstream(config) -> str:
    text = config.nginx.upstream_file.read_text()
    return next(line.rsplit("#", 1)[1].split(":")[0].strip() for line in text.splitlines()
                if line.endswith(": primary"))


def test_switchover_through_the_monitor_fails_no_request(pair, tmp_path):  # noqa: F811
    config, nodes, gateway = pair
    monitor, thread = start_monitor(config)
    try:
        wait_for(lambda: monitor.decider.primary == "a" and monitor._applied_roles, what="initial routing")
        with Traffic(gateway.port) as traffic:
            wait_for(lambda: len(traffic.results) >= 20, what="traffic")
            plan = failover.plan(config, "b", force=True, wait=0)
            assert plan.via == "monitor" and plan.source == "a"
            # The fake nodes run no replicator: that check fails and --force passes it.
            assert [c.name for c in plan.failed] == ["replication"]
            outcome = failover.execute(config, plan)
            n = len(traffic.results)
            wait_for(lambda: len(traffic.results) >= n + 20, what="traffic after the switch")
        assert outcome.changed and outcome.via == "monitor" and outcome.verified_s is not None
        assert outcome.forced_past and "replication" in outcome.forced_past[0]
        statuses = [status for _, status, _ in traffic.results]
        assert statuses.count(200) == len(statuses), [r for r in traffic.results if r[1] != 200]
        assert traffic.results[-1][2] == f"{nodes['b'].host}:{nodes['b'].port}"
        assert monitor.decider.primary == "b" and primary_in_upstream(config) == "b"
        state = json.loads(config.monitor.state_file.read_text())
        assert any(e["kind"] == "switchover" and "manual" in e["detail"] for e in state["events"])
        history = entries(config)
        assert history[-1]["kind"] == "switchover" and history[-1]["target"] == "b"
        # Again to the same node: nothing to do.
        assert not failover.execute(config, failover.plan(config, "b", force=True, wait=0)).changed
    finally:
        monitor.stop()
        thread.join(5)


def test_switchover_without_a_monitor_uses_its_lock(pair, tmp_path):  # noqa: F811
    config, nodes, gateway = pair
    plan = failover.plan(config, "b", force=True, wait=0)
    assert plan.via == "direct" and plan.roles == {"a": "backup", "b": "primary"}
    # While another controller holds the lock, the switch waits and then gives up.
    holder = GatewayLock(lock_path(config.monitor.control_socket)).acquire(purpose="test")
    released = threading.Timer(0.5, holder.release)
    released.start()
    outcome = failover.execute(config, plan)
    assert outcome.changed and outcome.via == "direct" and primary_in_upstream(config) == "b"
    released.join()


def test_refuses_an_unhealthy_target(pair, tmp_path):  # noqa: F811
    config, nodes, gateway = pair
    nodes["b"].kill()
    plan = failover.plan(config, "b", wait=0)
    assert "target healthy" in [c.name for c in plan.failed]
    same = next(c for c in plan.checks if c.name == "same model")
    assert same.detail == "node b does not answer; nothing to compare with"  # the silent target, not the primary
    before = config.nginx.upstream_file.read_text()
    with pytest.raises(Refused, match="target healthy: node b /health: no answer"):
        failover.execute(config, plan)
    assert config.nginx.upstream_file.read_text() == before
    assert not history_file(config).exists()


def test_replication_must_be_caught_up(pair, tmp_path, monkeypatch):  # noqa: F811
    config, nodes, gateway = pair
    states = iter([
        {"queue_depth": 3, "connected": True, "age_s": 0.5, "lag_s": {"p99": 0.1}},
        {"queue_depth": 0, "connected": True, "age_s": 0.5, "lag_s": {"p99": 0.1}},
    ])
    real = failover.node_health

    def health(cfg, name, timeout=2.0):
        body = real(cfg, name, timeout)
        if body is not None and name == "a":
            body["replication"] = next(states, {"queue_depth": 0, "connected": True, "age_s": 0.5})
        return body

    monkeypatch.setattr(failover, "node_health", health)
    check = failover._replication_caught_up(config, "a", wait=5)
    assert check.ok and "queue is empty" in check.detail  # waited for the queue to drain
    states = iter([{"queue_depth": 0, "connected": False, "age_s": 0.5, "last_error": "Connection refused"}] * 99)
    check = failover._replication_caught_up(config, "a", wait=0)
    assert not check.ok and "not connected" in check.detail and "Connection refused" in check.detail
    # Results answered without the standby's acknowledgement: refused until it has caught up.
    degraded = {"queue_depth": 0, "connected": True, "age_s": 0.5,
                "ack": {"mode": "standby", "state": "degraded",
                        "reason": "no answer from the replicator within 500 ms"}}
    states = iter([degraded, degraded, {**degraded, "ack": {"mode": "standby", "state": "sync"}}])
    check = failover._replication_caught_up(config, "a", wait=0)
    assert not check.ok and "degraded" in check.detail and "500 ms" in check.detail
    check = failover._replication_caught_up(config, "a", wait=5)
    assert check.ok


def test_only_the_targets_queue_counts_among_several_peers(pair, monkeypatch):  # noqa: F811
    """With three nodes, a third one being down must not hold up a switchover to the second."""
    config, nodes, gateway = pair
    real = failover.node_health
    peers = {"b": {"queue_depth": 0, "connected": True, "oldest_pending_s": None},
             "c": {"queue_depth": 40, "connected": False, "last_error": "c: Connection refused"}}

    def health(cfg, name, timeout=2.0):
        body = real(cfg, name, timeout)
        if body is not None and name == "a":
            body["replication"] = {"queue_depth": 40, "connected": False, "age_s": 0.3, "peers": peers}
        return body

    monkeypatch.setattr(failover, "node_health", health)
    assert failover._replication_caught_up(config, "a", wait=0, target="b").ok
    peers["b"] = {"queue_depth": 3, "connected": True, "oldest_pending_s": 30.0}
    behind = failover._replication_caught_up(config, "a", wait=0, target="b")
    assert not behind.ok and "3 files to send" in behind.detail
    assert not failover._replication_caught_up(config, "a", wait=0).ok  # no target named: every peer counts


def test_a_queue_that_keeps_moving_under_traffic_is_caught_up(pair, monkeypatch):  # noqa: F811
    """Steady traffic keeps a few files in flight; what matters is that the
    files pending when the switchover was asked for have been sent."""
    config, nodes, gateway = pair
    asked_at = time.monotonic()
    real = failover.node_health
    oldest = {"value": 30.0}  # seconds: a file stuck since before the check

    def health(cfg, name, timeout=2.0):
        body = real(cfg, name, timeout)
        if body is not None and name == "a":
            body["replication"] = {"queue_depth": 2, "connected": True, "age_s": 0.3,
                                   "oldest_pending_s": oldest["value"]}
        return body

    monkeypatch.setattr(failover, "node_health", health)
    monkeypatch.setattr(failover, "READING_MARGIN_S", 0.2)
    stuck = failover._replication_caught_up(config, "a", wait=1.0)
    assert not stuck.ok and "2 files to send, the oldest waiting 30.0 s" in stuck.detail
    oldest["value"] = 0.1  # always two fresh files in flight, each sent within a moment
    moving = failover._replication_caught_up(config, "a", wait=5)
    assert moving.ok and "every file pending when the check began" in moving.detail
    assert time.monotonic() - asked_at > 0.6  # it waited past one reading's margin, not at once
    oldest["value"] = None  # an older replicator without the field: only an empty queue counts
    assert not failover._replication_caught_up(config, "a", wait=0.6).ok


def write_config(config, tmp_path):
    nodes = "".join(f'[nodes.{n}]\nurl = "{c.url}"\npriority = {c.priority}\n' for n, c in config.nodes.items())
    ng = config.nginx
    text = (f"{nodes}[monitor]\nstate_file = \"{tmp_path}/monitor.json\"\ncontrol_socket = \"{tmp_path}/m.sock\"\n"
            f"[nginx]\nlisten = \"{ng.listen}\"\nupstream_file = \"{ng.upstream_file}\"\n"
            f"test_command = {json.dumps(list(ng.test_command))}\n"
            f"reload_command = {json.dumps(list(ng.reload_command))}\n")
    path = tmp_path / "ttsha.toml"
    path.write_text(text)
    return path


def test_cli(pair, tmp_path, capsys):  # noqa: F811
    config, nodes, gateway = pair
    path = write_config(config, tmp_path)
    assert main(["--config", str(path), "failover"]) == EXIT_USAGE
    assert main(["--config", str(path), "failover", "--to", "b", "--drill"]) == EXIT_USAGE
    assert main(["--config", str(path), "failover", "--to", "b", "--fault", "kill"]) == EXIT_USAGE
    assert main(["--config", str(path), "failover", "--to", "nope"]) == EXIT_USAGE
    capsys.readouterr()
    # Dry run: the checks and the routing it would write; nothing changes.
    before = config.nginx.upstream_file.read_text()
    # A dry run that would be refused says so and exits 6, as the switchover would.
    assert main(["--config", str(path), "failover", "--to", "b", "--dry-run", "--wait", "0s"]) == EXIT_REFUSED
    captured = capsys.readouterr()
    out = captured.out
    assert "move the primary role from node a to node b" in out and "[FAILED] replication" in out
    assert "would be refused: replication" in captured.err
    assert f"server {nodes['b'].host}:{nodes['b'].port} max_fails=1" in out
    assert config.nginx.upstream_file.read_text() == before
    # Refused without --force (no replicator), exit 6; done with it.
    assert main(["--config", str(path), "failover", "--to", "b", "--wait", "0s"]) == EXIT_REFUSED
    assert "--force" in capsys.readouterr().err
    assert main(["--config", str(path), "failover", "--to", "b", "--force", "--json",
                 "--report", str(tmp_path / "r.json")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "b" and data["changed"] and json.loads((tmp_path / "r.json").read_text()) == data
    # Back to a, in words: which node took the role, and which held it.
    assert main(["--config", str(path), "failover", "--to", "a", "--force"]) == 0
    assert "node a is now the primary (was node b), via the direct" in capsys.readouterr().err
    # A drill needs a running monitor on this host.
    assert main(["--config", str(path), "failover", "--drill", "--dry-run"]) == EXIT_REFUSED
    assert "no monitor runs" in capsys.readouterr().err


def test_events_tell_node_names_from_roles():
    """Nodes named like roles (the lab's): every switchover detail says "node"."""
    nodes = {"primary": NodeConfig(url="http://127.0.0.2:1", priority=200),
             "standby": NodeConfig(url="http://127.0.0.3:1", priority=100)}
    decider = Decider(nodes, fall=2, rise=1)
    info = {"status": "ready", "engine": "embedded", "model_version": "v1"}
    events = [e for name in nodes for e in decider.observe(name, True, 1.0, info, 1.0, "")]
    assert [e.detail for e in events if e.kind == "switchover"] == ["no node -> node primary"]
    assert decider.set_primary("standby", 2.0).detail == "node primary -> node standby (manual)"
    assert node_label(None) == "no node" and node_label("standby") == "node standby"
