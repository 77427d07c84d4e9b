"""Each lab node's SSH endpoint (the replicator's SFTP peer): a loopback sshd with key authentication only."""

from __future__ import annotations

from pathlib import Path

HOST_AND_CLIENT_KEYS = ("host_ed25519", "id_ed25519")


def render_sshd_config(host: str, port: int, ssh_dir: Path, name: str) -> str:
    """An sshd_config for a loopback test endpoint: key authentication only, SFTP."""
    return f"""# Written by ttsha: {name}'s SSH endpoint, loopback only.
Port {port}
ListenAddress {host}
HostKey {ssh_dir}/host_ed25519
PidFile {ssh_dir}/sshd-{name}.pid
AuthorizedKeysFile {ssh_dir}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
"""



def write_keys(ssh_dir: Path, keygen: str, comment: str = "ttsha-lab") -> None:
    """The endpoint's host key and the client's key (kept if present), the client key authorized."""
    import os
    import subprocess

    ssh_dir.mkdir(parents=True, exist_ok=True)
    for key in HOST_AND_CLIENT_KEYS:
        if not (ssh_dir / key).exists():
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{comment}-{key}",
                            "-f", str(ssh_dir / key)], check=True)
    os.chmod(ssh_dir / "id_ed25519", 0o600)
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "id_ed25519.pub").read_text())


def known_hosts(ssh_dir: Path, endpoints: list[tuple[str, int]]) -> str:
    """known_hosts lines pinning the host key at each ``(host, port)`` (host keys are verified)."""
    kind, key = (ssh_dir / "host_ed25519.pub").read_text().split()[:2]
    return "".join(f"[{host}]:{port} {kind} {key}\n" for host, port in endpoints)


def sshd_command(binary: str, config: Path, log: Path) -> list[str]:
    """sshd in the foreground (a child its starter supervises), logging to ``log``."""
    return [binary, "-D", "-f", str(config), "-E", str(log)]
