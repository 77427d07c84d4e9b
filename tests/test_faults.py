"""Fault injection on real processes, locally and over a real sshd; isolate with real nftables."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ttsha.config import Config, NodeConfig, ReplicateConfig
from ttsha.errors import Refused, TTSHAError
from ttsha.faults import FAULTS, NFT_TABLE, NODE_FAULTS, Fault, nft_ruleset
from ttsha.nodeproc import FILLER, ttsha_command

from .monitor.conftest import free_port, need, need_root

#: Stands in for ``ttsha serve`` / ``ttsha replicate``: a console script named
#: ``ttsha`` whose ``serve`` listens on --host/--port, as the real one does.
STAND_IN = """\
import socket, sys, time
args = sys.argv[1:]
if "serve" in args:
    s = socket.socket()
    s.bind((args[args.index("--host") + 1], int(args[args.index("--port") + 1])))
    s.listen(8)
print("ready", flush=True)
time.sleep(120)
"""


def wait_state(pid: int, states: str, timeout: float = 5.0) -> bool:
    """Whether the process reaches one of ``states`` (letters as in /proc/PID/stat) in time."""
    deadline = time.monotonic() + timeout
    while state_of(pid) not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return state_of(pid) in states


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class Processes:
    """Stand-in ttsha processes started by a test, always cleaned up."""

    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "bin" / "ttsha"
        self.script.parent.mkdir(exist_ok=True)
        self.script.write_text(STAND_IN)
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, cwd: Path | None = None, argv: list[str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv or [sys.executable, str(self.script), *args], stdout=subprocess.PIPE, text=True,
                                cwd=cwd)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(18)  # SIGCONT
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.close()


@pytest.fixture
def node_port():
    return free_port("127.0.0.2")


@pytest.fixture
def victim(procs, node_port, tmp_path):
    """A process that owns the node's port and whose argv is exactly a ttsha serve command."""
    return procs.start("--config", str(tmp_path / "node.toml"), "serve", "--host", "127.0.0.2",
                       "--port", str(node_port))


def local_config(tmp_path, port: int = 8900, **node) -> Config:
    marker = tmp_path / "started"
    nodes = {"a": NodeConfig(url=f"http://127.0.0.2:{port}", start_command=["touch", str(marker)], **node)}
    return Config(nodes=nodes)


def test_kill_then_restore_runs_the_start_command(tmp_path, victim, node_port):
    fault = Fault(local_config(tmp_path, node_port), "a", "kill", victim.pid)
    fault.preflight()
    assert fault.target["pid"] == victim.pid
    fault.inject()
    assert victim.wait(5) == -9
    assert not (tmp_path / "started").exists()
    fault.restore()
    assert (tmp_path / "started").exists()
    fault.restore()  # idempotent: nothing left to undo


def test_freeze_and_thaw(tmp_path, victim, node_port):
    fault = Fault(local_config(tmp_path, node_port), "a", "freeze")
    fault.preflight()
    fault.inject()
    assert wait_state(victim.pid, "T")
    fault.restore()
    assert wait_state(victim.pid, "SR")  # thawed
    assert not (tmp_path / "started").exists()  # a thawed process needs no restart


def test_refuses_to_signal_a_process_that_is_not_ttsha(tmp_path, node_port):
    """A bystander reported by /health, or listening on the node's port, is never signalled."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fault = Fault(local_config(tmp_path, node_port), "a", "kill", bystander.pid)
        with pytest.raises(Refused, match="nothing listens"):
            fault.preflight()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)


def test_refuses_a_listener_whose_path_merely_contains_ttsha(tmp_path, procs, node_port):
    """The check holds from any checkout path, e.g. a clone in a folder named ``ttsha``."""
    clone = tmp_path / "ttsha"
    (clone / "tools").mkdir(parents=True)
    shutil.copy(procs.script, clone / "tools" / "listen.py")
    argv = [sys.executable, str(clone / "tools" / "listen.py"), "serve", "--host", "127.0.0.2",
            "--port", str(node_port)]
    other = procs.start(argv=argv, cwd=clone)
    fault = Fault(local_config(tmp_path, node_port), "a", "kill", other.pid)
    with pytest.raises(Refused, match="not exactly one ttsha serve command"):
        fault.preflight()
    assert other.poll() is None


def test_refuses_when_health_names_another_pid(tmp_path, victim, node_port, procs):
    decoy = procs.start("serve", "--host", "127.0.0.2", "--port", str(free_port("127.0.0.2")))
    fault = Fault(local_config(tmp_path, node_port), "a", "kill", decoy.pid)
    with pytest.raises(Refused, match=f"reports pid {decoy.pid}, but pid {victim.pid} listens"):
        fault.preflight()
    assert victim.poll() is None and decoy.poll() is None


def test_a_reused_pid_is_not_signalled(tmp_path, victim, node_port):
    """The start time is checked again just before the signal."""
    fault = Fault(local_config(tmp_path, node_port), "a", "kill")
    fault.preflight()
    fault.target["start"] -= 1  # as if the pid now belonged to a process started later
    with pytest.raises(Refused, match="pid reused"):
        fault.inject()
    assert victim.poll() is None


@pytest.mark.parametrize("argv, expected", [
    (["/usr/bin/python3", "/usr/bin/ttsha", "--config", "/etc/ttsha/ttsha.toml", "serve"],
     ("serve", "/etc/ttsha/ttsha.toml")),
    (["/opt/venv/bin/python", "-u", "-m", "ttsha", "-vv", "--config=/x.toml", "replicate", "--store", "s"],
     ("replicate", "/x.toml")),
    (["ttsha", "serve", "--port", "8900"], ("serve", None)),
    (["python3", "-m", "pytest", "/home/me/ttsha/tests"], None),
    (["less", "/var/log/ttsha/serve.log"], None),
    (["sshd: ttsha@notty"], None),
    (["/usr/bin/python3", "/home/me/ttsha/tools/x.py", "serve"], None),
    (["python3", "/usr/bin/ttsha", "--unknown", "serve"], None),
    (["python3", "-m", "ttsha"], None),
])
def test_exact_argv_match(argv, expected):
    assert ttsha_command(argv) == expected


def test_a_failing_start_command_names_the_node_and_the_output(tmp_path, victim, node_port):
    config = Config(nodes={"a": NodeConfig(url=f"http://127.0.0.2:{node_port}",
                                           start_command=[sys.executable, "-c", "import sys; sys.exit('no unit')"])})
    fault = Fault(config, "a", "stop", victim.pid)
    fault.preflight()
    fault.inject()
    victim.wait(5)
    with pytest.raises(TTSHAError, match="start_command on a .*no unit"):
        fault.restore()


def test_crash_kills_serve_and_its_replicators_at_once(tmp_path, victim, node_port, procs):
    mine = procs.start("--config", str(tmp_path / "node.toml"), "replicate", "--store", "s")
    others = procs.start("--config", str(tmp_path / "other-node.toml"), "replicate", "--store", "s")
    fault = Fault(local_config(tmp_path, node_port), "a", "crash")
    fault.preflight()
    fault.inject()
    assert victim.wait(5) == -9 and mine.wait(5) == -9
    assert others.poll() is None  # another node's replicator (the lab's pair on one host) is left alone
    fault.restore()
    assert (tmp_path / "started").exists()


def test_slow_runs_the_process_on_a_duty_cycle_and_always_continues_it(tmp_path, victim, node_port):
    fault = Fault(local_config(tmp_path, node_port), "a", "slow")
    fault.preflight()
    fault.inject()
    try:
        seen = set()
        deadline = time.monotonic() + 5
        while seen != {"T", "S"} and time.monotonic() < deadline:
            seen.add(state_of(victim.pid).replace("R", "S"))
            time.sleep(0.01)
        assert seen == {"T", "S"}  # stopped and running in turn
    finally:
        fault.restore()
    # The cycle's helper is gone (nobody can stop the process any more) and it runs.
    assert not os.path.exists(f"/proc/{fault._slow['helper']}")
    assert state_of(victim.pid) in "SR"
    assert victim.poll() is None


def _own_filesystem(tmp_path) -> Path:
    """A 16 MiB tmpfs (root only), standing in for a store on a filesystem of its own."""
    need_root("disk-full needs root to mount a test filesystem")
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "ttsha-test", str(store)], check=True)
    return store


def test_disk_full_fills_the_store_filesystem_and_restore_frees_it(tmp_path):
    store = _own_filesystem(tmp_path)
    try:
        config = replace(local_config(tmp_path), nodes={"a": NodeConfig(store=store)})
        fault = Fault(config, "a", "disk-full")
        fault.preflight()
        fault.inject()
        with pytest.raises(OSError) as exc:
            with open(store / "result.wav", "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        assert exc.value.errno == 28  # ENOSPC
        (store / "result.wav").unlink(missing_ok=True)
        fault.restore()
        assert not (store / FILLER).exists()
        (store / "result.wav").write_bytes(b"\0" * 65536)
        # A filler left by a drill that died is removed by the next one's preflight.
        fault.inject()
        fault.injected = False
        Fault(config, "a", "disk-full").preflight()
        assert not (store / FILLER).exists()
    finally:
        subprocess.run(["umount", str(store)], check=True)


def test_disk_full_refuses_a_store_on_the_root_filesystem(tmp_path):
    if os.stat(tmp_path).st_dev != os.stat("/").st_dev:
        pytest.skip("tmp_path is not on the root filesystem here")
    config = Config(nodes={"a": NodeConfig(store=tmp_path)})
    with pytest.raises(Refused, match="root filesystem"):
        Fault(config, "a", "disk-full").preflight()


def test_nft_ruleset_drops_only_the_node_port():
    rules = nft_ruleset("http://127.0.0.2:8900")
    assert f"table inet {NFT_TABLE}" in rules and "ip daddr 127.0.0.2 tcp dport 8900 drop" in rules
    assert "ip6 daddr ::1 tcp dport 80 drop" in nft_ruleset("http://[::1]")
    assert "        tcp dport 8900 drop" in nft_ruleset("http://node-a.example:8900")


def test_describe_says_what_and_where(tmp_path):
    config = local_config(tmp_path, ssh_host="10.0.0.2", ssh_user="ops", sudo=True)
    lines = Fault(config, "a", "kill", 4242).describe()
    assert "SIGKILL to the serve process listening on 127.0.0.2:8900 (pid 4242 by /health)" in lines[0]
    assert "ops@10.0.0.2:22" in lines[0]
    assert "sudo -n touch" in lines[1]
    assert "nft delete table" in Fault(config, "a", "isolate", None).describe()[1]
    assert "sshd on 10.0.0.2:22" in Fault(config, "a", "crash").describe()[0]
    for kind in NODE_FAULTS:
        assert Fault(config, "a", kind).describe()


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_isolate_makes_the_port_unreachable_and_restore_undoes_it():
    need("nft", "nftables")
    need_root("nftables needs root")
    host, port = "127.0.0.9", free_port("127.0.0.9")
    with socket.socket() as server:
        server.bind((host, port))
        server.listen(16)
        other = socket.socket()
        other.bind((host, 0))
        other.listen(16)
        config = Config(nodes={"a": NodeConfig(url=f"http://{host}:{port}")})
        fault = Fault(config, "a", "isolate", None)
        fault.preflight()
        try:
            fault.inject()
            assert not _connects(host, port)
            assert _connects(host, other.getsockname()[1])  # only the serve port is cut off
        finally:
            fault.restore()
            other.close()
        assert _connects(host, port)
        # A table left by a crashed drill is cleaned up before the next one.
        fault.inject()
        fault.injected = False  # as if the drill died
        Fault(config, "a", "isolate", None).preflight()
        assert _connects(host, port)


def _ssh_config(tmp_path, sshd, node_port: int, **node) -> Config:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
    marker = tmp_path / "started over ssh"
    return Config(
        nodes={"a": NodeConfig(url=f"http://127.0.0.2:{node_port}", ssh_host="127.0.0.1", ssh_port=sshd.port,
                               ssh_user=user, start_command=["touch", str(marker)], **node)},
        replicate=ReplicateConfig(known_hosts=known, key_file=sshd.client_key),
    )


def test_faults_over_ssh(tmp_path, sshd_running, victim, node_port):
    config = _ssh_config(tmp_path, sshd_running, node_port)
    fault = Fault(config, "a", "freeze", victim.pid)
    fault.preflight()  # finds the listener and checks its argv over SSH
    fault.inject()
    assert wait_state(victim.pid, "T")
    fault.restore()
    fault = Fault(config, "a", "kill", victim.pid)
    fault.preflight()
    fault.inject()
    assert victim.wait(5) == -9
    fault.restore()  # the start command, with a space in its argument, quoted for the remote shell
    assert (tmp_path / "started over ssh").exists()
    fault.close()


def test_crash_over_ssh_takes_the_sshd_down_and_power_on_brings_it_back(tmp_path, sshd_running, victim, node_port):
    sshd = sshd_running
    # The drill host powers the node on again: here, by starting the test's sshd once more.
    power_on = [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)",
                sshd.binary, "-D", "-f", str(sshd.config), "-E", str(sshd.root / "sshd.log")]
    config = _ssh_config(tmp_path, sshd, node_port, power_on_command=power_on)
    fault = Fault(config, "a", "crash")
    try:
        fault.preflight()
        fault.inject()
        assert victim.wait(5) == -9
        assert sshd.proc.wait(5) == -9  # the node's sshd died with it
        assert not _connects("127.0.0.1", sshd.port)
        fault.restore()
        assert (tmp_path / "started over ssh").exists()  # start_command ran over SSH once sshd was back
    finally:
        fault.close()
        # The sshd our power_on_command started is the test's to stop, whatever happened above.
        for pid in subprocess.run(["pgrep", "-f", str(sshd.config)], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), 9)


def test_ssh_fault_refuses_a_changed_host_key(tmp_path, sshd_running, victim, node_port):
    sshd = sshd_running
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other / "k")], check=True)
    known = tmp_path / "known_hosts"
    key = (other / "k.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {key[0]} {key[1]}\n")
    config = Config(
        nodes={"a": NodeConfig(url=f"http://127.0.0.2:{node_port}", ssh_host="127.0.0.1", ssh_port=sshd.port,
                               ssh_user="root")},
        replicate=ReplicateConfig(known_hosts=known, key_file=sshd.client_key),
    )
    fault = Fault(config, "a", "kill", victim.pid)
    with pytest.raises(TTSHAError, match="CHANGED"):
        fault.preflight()
    assert victim.poll() is None


def test_unknown_fault_is_an_error(tmp_path):
    with pytest.raises(TTSHAError, match="unknown fault"):
        Fault(replace(local_config(tmp_path)), "a", "reboot", 1)


def test_the_refusals_hold_from_a_checkout_named_ttsha(tmp_path):
    """The same tests, run from a copy of this tree in a folder named ``ttsha`` (as a ``git clone`` makes)."""
    root = Path(__file__).resolve().parent.parent
    clone = tmp_path / "ttsha"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "fixtures")
    for part in ("ttsha", "tests"):
        shutil.copytree(root / part, clone / part, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml"):
        if (root / name).exists():
            shutil.copy(root / name, clone / name)
    # The interpreter's own path names the folder too, as a clone's .venv does: every
    # process the tests start has "ttsha" in its command line.
    (clone / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    python = str(clone / ".venv" / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(clone)}
    proc = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_faults.py",
         "-k", "refuses_to_signal or merely_contains or freeze_and_thaw or reused_pid"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout
    # They really ran the copy: its path names the folder.
    where = subprocess.run([python, "-c", "import sys, ttsha; print(ttsha.__file__, sys.executable)"], cwd=clone,
                           env=env, capture_output=True, text=True).stdout.split()
    assert where == [str(clone / "ttsha" / "__init__.py"), python]


class _Hosts:
    """The gateway hosts' side of a gateway fault, recording what it was asked (the designed seam)."""

    def __init__(self, pids: list[int]) -> None:
        self.calls: list[tuple] = []
        self.pids = pids

    def kill_gateway(self, name):
        self.calls.append(("kill", name))
        return self.pids

    def signal_gateway(self, name, roles, sig):
        self.calls.append((sig.name, name, roles))
        return self.pids

    def start_gateway(self, name):
        self.calls.append(("start", name))


def test_gateway_faults_kill_or_freeze_the_holder_and_restore_it():
    from ttsha.faults import GATEWAY_FAULTS, GatewayFault

    assert set(GATEWAY_FAULTS) <= set(FAULTS)
    kill, freeze = _Hosts([11, 12]), _Hosts([21])
    for hosts, kind in ((kill, "gateway-kill"), (freeze, "gateway-freeze")):
        fault = GatewayFault(hosts, "gw-a", kind)
        assert "gw-a" in fault.describe()[0]
        fault.restore()  # nothing injected: nothing to undo
        fault.inject()
        fault.restore()
        fault.restore()  # restored once only
    assert kill.calls == [("kill", "gw-a"), ("start", "gw-a")]
    assert freeze.calls == [("SIGSTOP", "gw-a", ("nginx",)), ("SIGCONT", "gw-a", ("nginx",))]


def test_a_gateway_fault_refuses_when_no_process_is_the_lab_s():
    from ttsha.faults import GatewayFault

    with pytest.raises(Refused, match="not signalling"):
        GatewayFault(_Hosts([]), "gw-a", "gateway-kill").inject()


def test_a_node_fault_refuses_a_gateway_fault_name():
    from ttsha.errors import UsageError

    with pytest.raises(UsageError, match="lab up --gateways 2"):
        Fault(Config(), "primary", "gateway-kill")
