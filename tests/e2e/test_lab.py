"""End to end on the lab: real ttsha serve nodes, a real Nginx, the monitor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ttsha.lab import NODE_HOSTS, alive

from ..monitor.conftest import need, need_root
from .conftest import EXE, running_lab

pytestmark = pytest.mark.e2e


def ttsha(*args, timeout=600):
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory) as started:
        yield started


def synthesize_id(layout, text: str) -> str:
    """Synthesize through the gateway; the result's id."""
    import urllib.request

    req = urllib.request.Request(layout.gateway_url + "/v1/synthesize?return=json",
                                 data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["id"]


#: Every fault of issue 14, whether or not this checkout implements it yet: a
#: name the CLI does not know fails its row (exit 2) instead of vanishing.
MATRIX = ("kill", "stop", "freeze", "isolate", "crash", "disk-full", "slow")


def drill(lab, fault, *args):
    report = lab.root / f"{fault}.json"
    report.unlink(missing_ok=True)
    proc = ttsha("lab", "drill", "--dir", str(lab.root), "--fault", fault, "--report", str(report), *args)
    assert report.exists(), proc.stdout + proc.stderr
    return proc, json.loads(report.read_text())


def test_synthesis_through_the_gateway(lab):
    import urllib.request

    layout = lab.layout()
    req = urllib.request.Request(layout.gateway_url + "/v1/synthesize",
                                 data=json.dumps({"text": "网关测试。"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200 and resp.read(4) == b"RIFF"
        assert resp.headers["X-Upstream"]


@pytest.mark.parametrize("fault", MATRIX)
def test_every_fault_at_80_percent_of_capacity_fails_no_request_and_stalls_none(lab, fault):
    if fault == "isolate":
        need("nft", "nftables")
        need_root("the isolate fault needs root for nftables")
    proc, report = drill(lab, fault, "--load", "0.8", "--duration", "15s")
    why = "\n".join(json.dumps(s, ensure_ascii=False) for s in report["slowest"])
    traffic = report["traffic"]
    # The load was measured, not assumed; the default mix; fresh texts (these
    # drills share one lab: a repeated text would be a cache hit).
    assert traffic["load"] == 0.8 and traffic["capacity"]["rps"] > 0
    assert traffic["rate"] >= 0.8 * traffic["capacity"]["rps"]
    assert set(report["kinds"]) == {"new", "hot", "fetch"}
    # Every planned request was sent (the rate follows the capacity measured
    # now, which a busy machine lowers: the count is relative to it).
    assert report["requests"] >= max(15, 0.9 * traffic["rate"] * traffic["duration_s"]), report["requests"]
    assert report["new_cached"] <= report["retried_by_gateway"], report["new_cached"]
    # No client request fails.
    assert report["failed"] == 0, f"{report['failures_by_kind']}\n{why}"
    assert report["rto_s"] is not None  # the standby answered: the fault was routed around
    assert report["rejoined_as"] == "backup"
    timeline = report["timeline"]
    for key in ("marked_down", "switchover", "reload_done", "first_success_on_standby", "node_restored", "rejoined"):
        assert timeline.get(key) is not None, key
    # A slow node is seen within a second or two in most runs, but some runs of this
    # drill on a loaded machine saw no failed probe for 4-5 s (issue 14, not yet
    # explained: a fake node slowed the same way fails 60 % of its probes). Such a
    # run is an expected failure with its figures below, never a pass.
    slow_detection = fault == "slow" and timeline["marked_down"] >= 3
    assert timeline["marked_down"] < 3 or slow_detection, timeline
    # Audio acknowledged before the fault was replicated: nothing lost.
    assert report["rpo_files"] == 0 and report["lost_ids"] == []
    if fault == "isolate":
        assert "ttsha_drill" not in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    # Timing (RTO, no request over max_stall, p99 after the fault): at 80 % of a
    # node's capacity on this shared 2-core machine, where the drill's clients,
    # Nginx and both nodes share the cores, kill and slow drills sometimes end
    # a few tenths over (a request synthesized twice: on the node that died,
    # then on the standby behind the queue; a slow node noticed by chance of
    # the probes landing in its stalls). Such a miss is reported as an
    # expected failure with its figures, never passed; any other miss fails.
    latency = ("slowest request", "p99 in the 5 s after the fault", "RTO")
    other = [m for m in report["missed"] if not m.startswith(latency)]
    assert other == [] and proc.returncode in (0, 5), f"{report['missed']}\n{why}"
    if slow_detection:
        pytest.xfail(f"slow node marked down {timeline['marked_down']:.2f} s after the fault (issue 14): {timeline}")
    if report["missed"]:
        pytest.xfail(f"latency objective missed (issue 14, known on this machine): {report['missed']}\n{why}")
    assert proc.returncode == 0


def test_a_drill_with_a_stall_objective_it_cannot_meet_exits_5(lab):
    """The judgement can fail: the same drill against an impossible max_stall."""
    from dataclasses import replace

    from ttsha.config import load, to_toml

    strict = lab.root / "strict.toml"
    config = load(lab.layout().config)
    strict.write_text(to_toml(replace(config, drill=replace(config.drill, max_stall=0.001))))
    report = lab.root / "strict.json"
    proc = ttsha("--config", str(strict), "failover", "--drill", "--fault", "stop", "--duration", "6s", "--rate", "3",
                 "--seed", "1234", "--report", str(report))
    assert report.exists(), proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert proc.returncode == 5, proc.stderr
    assert any(m.startswith("slowest request") for m in data["missed"]), data["missed"]
    assert data["traffic"]["seed"] == 1234 and "seed 1234" in proc.stdout


def test_a_drill_stopped_with_sigterm_gives_the_node_back(lab):
    """systemd stopping the drill unit (or a kill) must not leave the primary frozen."""
    from ..monitor.test_gateway import wait_for

    primary = lab.monitor_state()["primary"]
    pid = lab.pid(primary)

    def state() -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    proc = subprocess.Popen([str(EXE), "lab", "drill", "--dir", str(lab.root), "--fault", "freeze", "--rate", "2",
                             "--duration", "60s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: state() == "T", timeout=60, what="the drill to freeze the primary")
        # Once the monitor saw it, the drill's inject() has certainly returned.
        wait_for(lambda: lab.monitor_state()["nodes"][primary]["status"] == "down", timeout=30, what="marked down")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        frozen_after = state() == "T"
    finally:
        proc.kill()
        os.kill(pid, signal.SIGCONT)  # whatever happened, the next test gets a working lab
    assert proc.returncode == 130, err
    assert not frozen_after  # SIGCONT was sent before the drill exited
    wait_for(lambda: lab.monitor_state()["nodes"][primary]["status"] == "up", timeout=30, what="node back up")


def test_planned_switchover_and_failback_fail_no_request(lab):
    from ..monitor.test_gateway import Traffic, wait_for

    layout = lab.layout()
    config = ["--config", str(layout.config)]
    start = lab.monitor_state()["primary"]
    other = next(n for n in ("primary", "standby") if n != start)
    with Traffic(layout.gateway_port, seconds=120) as traffic:
        wait_for(lambda: len(traffic.results) >= 10, timeout=60, what="traffic")
        for target in (other, start):  # switch over, then fail back
            proc = ttsha(*config, "failover", "--to", target, "--json")
            assert proc.returncode == 0, proc.stderr
            outcome = json.loads(proc.stdout)
            assert outcome["changed"] and outcome["via"] == "monitor" and outcome["forced_past"] == []
            assert {c["name"]: c["ok"] for c in outcome["checks"]} == {
                "target healthy": True, "same model": True, "replication": True}
            n = len(traffic.results)
            wait_for(lambda n=n: len(traffic.results) >= n + 10, timeout=60, what="traffic after the switch")
            assert traffic.results[-1][2] == f"{NODE_HOSTS[target]}:{layout.node_ports[target]}"
    statuses = [status for _, status, _ in traffic.results]
    assert statuses.count(200) == len(statuses), [r for r in traffic.results if r[1] != 200]
    assert lab.monitor_state()["primary"] == start


def test_a_drill_refuses_when_the_standby_is_down(lab):
    state = lab.monitor_state()
    standby = next(n for n in ("primary", "standby") if n != state["primary"])
    pid = lab.pid(standby)
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = ttsha("lab", "drill", "--dir", str(lab.root), "--duration", "5s")
        assert proc.returncode == 6 and "no standby is healthy" in proc.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    from ..monitor.test_gateway import wait_for

    wait_for(lambda: lab.monitor_state()["nodes"][standby]["status"] == "up", timeout=30, what="standby back")


def test_audio_replicated_to_the_standby(lab):
    import time

    layout = lab.layout()
    rid = synthesize_id(layout, "复制到备机的音频。")
    stores = [layout.node_dir(name) / "audio" / rid[:2] / f"{rid}.wav" for name in ("primary", "standby")]
    deadline = time.monotonic() + 10
    while not all(p.exists() for p in stores) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in stores)
    assert stores[0].read_bytes() == stores[1].read_bytes()


def test_replication_survives_a_standby_outage(lab):
    """The standby's SSH endpoint goes away; audio produced meanwhile arrives once it is back."""
    import time

    layout = lab.layout()
    state = lab.monitor_state()
    primary = state["primary"]
    standby = next(n for n in ("primary", "standby") if n != primary)
    lab.stop_sshd(standby)
    ids = []
    try:
        for i in range(5):
            ids.append(synthesize_id(layout, f"备机停机期间的第{i}段音频。"))
        time.sleep(1.0)
        missing = [i for i in ids if not (layout.node_dir(standby) / "audio" / i[:2] / f"{i}.wav").exists()]
        assert missing == ids  # nothing can have arrived: the peer is down
    finally:
        lab.start_sshd(standby)
    deadline = time.monotonic() + 60  # the replicator backs off, at most 30 s
    def arrived():
        return all((layout.node_dir(standby) / "audio" / i[:2] / f"{i}.wav").exists() for i in ids)
    while not arrived() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert arrived()
    for i in ids:
        src = layout.node_dir(primary) / "audio" / i[:2] / f"{i}.wav"
        assert (layout.node_dir(standby) / "audio" / i[:2] / f"{i}.wav").read_bytes() == src.read_bytes()


def test_model_sync_carries_a_changed_model_file(lab):
    import os as os_

    layout = lab.layout()
    primary = lab.monitor_state()["primary"]  # earlier drills may have moved it
    standby = next(n for n in ("primary", "standby") if n != primary)
    src, dst = layout.node_dir(primary) / "models", layout.node_dir(standby) / "models"
    model = src / "speech_sambert" / "voices" / "zhitian_emo" / "model.bin"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"weights v1" * 1000)
    (src / "speech_sambert" / "configuration.json").write_text('{"version": 1}')
    once = [*("--config", str(lab.node_config(primary))), "replicate", "--once", "models"]
    assert ttsha(*once).returncode == 0
    assert (dst / "speech_sambert" / "voices" / "zhitian_emo" / "model.bin").read_bytes() == model.read_bytes()
    # Same size, new content and mtime: the quick check must notice.
    model.write_bytes(b"weights v2" * 1000)
    os_.utime(model, (model.stat().st_atime, model.stat().st_mtime + 5))
    (src / "speech_sambert" / "configuration.json").unlink()
    assert ttsha(*once).returncode == 0
    assert (dst / "speech_sambert" / "voices" / "zhitian_emo" / "model.bin").read_bytes() == b"weights v2" * 1000
    assert not (dst / "speech_sambert" / "configuration.json").exists()  # delete = true
    rsync = subprocess.run(["rsync", "-a", "-n", "-i", "--checksum", "--delete", f"{src}/", f"{dst}/"],
                           capture_output=True, text=True)
    assert rsync.returncode == 0 and rsync.stdout.strip() == ""


def test_models_flow_from_whichever_node_is_primary(lab):
    """Both nodes run the same replicator configuration; the model cache
    follows the role the monitor gives them, also after a switchover."""
    from ..monitor.test_gateway import wait_for

    layout = lab.layout()
    config = ["--config", str(layout.config)]
    old = lab.monitor_state()["primary"]
    new = next(n for n in ("primary", "standby") if n != old)
    # The standby never sends its (maybe stale) cache over the primary's.
    refused = ttsha("--config", str(lab.node_config(new)), "replicate", "--once", "models")
    assert refused.returncode == 6 and "this node is backup" in refused.stderr, refused.stderr
    added = layout.node_dir(new) / "models" / "speech_sambert" / "voices" / "zhiyan_emo" / "model.bin"
    added.parent.mkdir(parents=True, exist_ok=True)
    added.write_bytes(b"a voice installed on the standby" * 100)
    arrived = layout.node_dir(old) / "models" / added.relative_to(layout.node_dir(new) / "models")
    assert not arrived.exists()
    try:
        assert ttsha(*config, "failover", "--to", new).returncode == 0
        # The new primary's replicator notices its role within seconds and sends at once.
        wait_for(arrived.exists, timeout=30, what="models from the new primary")
        assert arrived.read_bytes() == added.read_bytes()
    finally:
        assert ttsha(*config, "failover", "--to", old).returncode == 0


def test_full_speed_cache_hits_through_a_kill_9(lab):
    """wrk at full speed on stored audio through the gateway while the primary
    is killed: no 5xx and no connection failure, because Nginx retries every
    request the dead node had not started answering. A response whose body
    was already flowing is cut (no proxy can retry it; players resume with
    Range): at most one per connection per kill, bounded here."""
    import re
    import time

    from ..monitor.test_gateway import wait_for

    wrk = need("wrk", "wrk")
    layout = lab.layout()
    rid = synthesize_id(layout, "全速读取的缓存音频。")
    primary = lab.monitor_state()["primary"]
    standby = next(n for n in ("primary", "standby") if n != primary)
    on_standby = layout.node_dir(standby) / "audio" / rid[:2] / f"{rid}.wav"
    wait_for(on_standby.exists, timeout=10, what="audio on the standby")
    load = subprocess.Popen([wrk, "-t2", "-c8", "-d6s", f"{layout.gateway_url}/v1/audio/{rid}.wav"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2.0)
        os.kill(lab.pid(primary), signal.SIGKILL)
        out = load.communicate(timeout=60)[0]
    finally:
        load.kill()
        lab.start_node(primary)
    wait_for(lambda: lab.monitor_state()["nodes"][primary]["status"] == "up", timeout=60, what="node back")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, cut, write, timeout = map(int, errors.groups()) if errors else (0, 0, 0, 0)
    assert requests >= 500, out
    assert non_2xx is None, out  # no 502/503/504 reached a client
    assert (connect, write, timeout) == (0, 0, 0), out
    # Bodies cut mid-flight: at most the one each connection had flowing from
    # the node when it died (8 connections).
    assert cut <= 8, out


def test_down_stops_only_what_up_started(tmp_path):
    need("nginx", "nginx")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    root = tmp_path / "lab"
    assert ttsha("lab", "up", "--dir", str(root)).returncode == 0
    pids = json.loads((root / "pids.json").read_text())
    assert set(pids) == {"primary", "standby", "nginx", "monitor", "sshd-primary", "sshd-standby",
                         "replicate-primary", "replicate-standby"}
    status = ttsha("lab", "status", "--dir", str(root))
    assert status.returncode == 0 and "ready" in status.stdout
    proc = ttsha("lab", "down", "--dir", str(root))
    assert proc.returncode == 0
    assert not any(alive(pid) for pid in pids.values())
    assert bystander.poll() is None
    bystander.send_signal(signal.SIGTERM)
    bystander.wait()
    assert ttsha("lab", "status", "--dir", str(root)).returncode == 0  # no pids left: an empty table


def test_drill_unit_exec_start_runs(lab):
    """ttsha-drill.service's own command line, against the lab: a drill that meets its objectives exits 0."""
    import shlex

    unit = Path(__file__).resolve().parents[2] / "systemd" / "ttsha-drill.service"
    line = next(text for text in unit.read_text().splitlines() if text.startswith("ExecStart="))
    argv = shlex.split(line.split("=", 1)[1])
    assert argv[:3] == ["/usr/bin/ttsha", "--config", "/etc/ttsha/ttsha.toml"]
    report = lab.root / "unit-report.json"
    args = [str(report) if a == "/var/lib/ttsha/drill-report.json" else a for a in argv[3:]]
    assert str(report) in args
    proc = ttsha("--config", str(lab.layout().config), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["failed"] == 0
    history = (lab.root / "failover-history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["kind"] == "drill"
