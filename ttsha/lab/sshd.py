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

