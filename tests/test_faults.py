"""Fault injection on real processes, locally and over a real sshd; isolate with real nftables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from ttsha.config import Config, NodeConfig, ReplicateConfig
from ttsha.errors import Refused, TTSHAError
from ttsha.faults import NFT_TABLE, Fault, nft_ruleset

from .monitor.conftest import free_port, need


def wait_state(pid: int, states: str, timeout: float = 5.0) -> bool:
    """Whether the process reaches one of ``states`` (letters as in /proc/PID/stat) in time."""
    deadline = time.monotonic() + timeout
    while state_of(pid) not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return state_of(pid) in states


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def victim():
    """A process whose command line names ttsha, standing in for a serve process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ttsha-serve-stand-in"])
    yield proc
    if proc.poll() is None:
        proc.send_signal(18)  # SIGCONT
        proc.kill()
        proc.wait(10)


def local_config(tmp_path, **node) -> Config:
    marker = tmp_path / "started"
    nodes = {"a": NodeConfig(url="http://127.0.0.2:8900", start_command=["touch", str(marker)], **node)}
    return Config(nodes=nodes)


def test_kill_then_restore_runs_the_start_command(tmp_path, victim):
    fault = Fault(local_config(tmp_path), "a", "kill", victim.pid)
    fault.preflight()
    fault.inject()
    assert victim.wait(5) == -9
    assert not (tmp_path / "started").exists()
    fault.restore()
    assert (tmp_path / "started").exists()
    fault.restore()  # idempotent: nothing left to undo


def test_freeze_and_thaw(tmp_path, victim):
    fault = Fault(local_config(tmp_path), "a", "freeze", victim.pid)
    fault.inject()
    assert wait_state(victim.pid, "T")
    fault.restore()
    assert wait_state(victim.pid, "SR")  # thawed
    assert not (tmp_path / "started").exists()  # a thawed process needs no restart


def test_refuses_to_signal_a_process_that_is_not_ttsha(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fault = Fault(local_config(tmp_path), "a", "kill", bystander.pid)
        with pytest.raises(Refused, match="not a ttsha process"):
            fault.preflight()
        assert bystander.poll() is None
        with pytest.raises(Refused, match="no pid"):
            Fault(local_config(tmp_path), "a", "stop", None).preflight()
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_failing_start_command_names_the_node_and_the_output(tmp_path, victim):
    config = Config(nodes={"a": NodeConfig(start_command=[sys.executable, "-c", "import sys; sys.exit('no unit')"])})
    fault = Fault(config, "a", "stop", victim.pid)
    fault.inject()
    victim.wait(5)
    with pytest.raises(TTSHAError, match="start_command on a .*no unit"):
        fault.restore()


def test_nft_ruleset_drops_only_the_node_port():
    rules = nft_ruleset("http://127.0.0.2:8900")
    assert f"table inet {NFT_TABLE}" in rules and "ip daddr 127.0.0.2 tcp dport 8900 drop" in rules
    assert "ip6 daddr ::1 tcp dport 80 drop" in nft_ruleset("http://[::1]")
    assert "        tcp dport 8900 drop" in nft_ruleset("http://node-a.example:8900")


def test_describe_says_what_and_where(tmp_path):
    config = local_config(tmp_path, ssh_host="10.0.0.2", ssh_user="ops", sudo=True)
    lines = Fault(config, "a", "kill", 4242).describe()
    assert "SIGKILL to serve pid 4242" in lines[0] and "ops@10.0.0.2:22" in lines[0]
    assert "sudo -n touch" in lines[1]
    assert "nft delete table" in Fault(config, "a", "isolate", None).describe()[1]


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_isolate_makes_the_port_unreachable_and_restore_undoes_it():
    need("nft", "nftables")
    if os.geteuid() != 0:
        pytest.skip("nftables needs root")
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


def test_faults_over_ssh(tmp_path, sshd_running, victim):
    sshd = sshd_running
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
    marker = tmp_path / "started over ssh"
    config = Config(
        nodes={"a": NodeConfig(ssh_host="127.0.0.1", ssh_port=sshd.port, ssh_user=user,
                               start_command=["touch", str(marker)])},
        replicate=ReplicateConfig(known_hosts=known, key_file=sshd.client_key),
    )
    fault = Fault(config, "a", "freeze", victim.pid)
    fault.preflight()  # reads /proc/PID/cmdline over SSH
    fault.inject()
    assert wait_state(victim.pid, "T")
    fault.restore()
    fault = Fault(config, "a", "kill", victim.pid)
    fault.inject()
    assert victim.wait(5) == -9
    fault.restore()  # the start command, with a space in its argument, quoted for the remote shell
    assert marker.exists()
    fault.close()


def test_ssh_fault_refuses_a_changed_host_key(tmp_path, sshd_running, victim):
    sshd = sshd_running
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other / "k")], check=True)
    known = tmp_path / "known_hosts"
    key = (other / "k.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {key[0]} {key[1]}\n")
    config = Config(
        nodes={"a": NodeConfig(ssh_host="127.0.0.1", ssh_port=sshd.port, ssh_user="root")},
        replicate=ReplicateConfig(known_hosts=known, key_file=sshd.client_key),
    )
    fault = Fault(config, "a", "kill", victim.pid)
    with pytest.raises(TTSHAError, match="CHANGED"):
        fault.preflight()
    assert victim.poll() is None


def test_unknown_fault_is_an_error(tmp_path):
    with pytest.raises(TTSHAError, match="unknown fault"):
        Fault(replace(local_config(tmp_path)), "a", "reboot", 1)
