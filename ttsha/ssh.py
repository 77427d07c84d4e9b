"""Verified SSH connections, shared by the replicator and drill fault injection.

Host keys are checked against a known_hosts file: an unknown or changed key
is refused (:class:`HostKeyRefused`), never added on the fly. Only key
authentication is used, and the key file must not be readable by others.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import paramiko

from .errors import PeerUnreachable, TTSHAError


class HostKeyRefused(PeerUnreachable):
    """The peer's host key is unknown or differs from known_hosts."""


def check_key_file(key_file: Path) -> None:
    try:
        st = Path(key_file).stat()
    except FileNotFoundError:
        raise TTSHAError(f"SSH key {key_file} not found (ssh-keygen -t ed25519 -f {key_file})") from None
    if st.st_mode & 0o077:
        raise TTSHAError(f"SSH key {key_file} is accessible by others; run: chmod 600 {key_file}")


def connect(host: str, port: int, user: str, key_file: Path, known_hosts: Path,
            timeout: float = 10.0) -> paramiko.SSHClient:
    """An authenticated SSH client whose host key matched ``known_hosts``."""
    check_key_file(key_file)
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
    except FileNotFoundError:
        raise HostKeyRefused(
            f"known_hosts {known_hosts} does not exist; record the peer's key with "
            f"'ttsha replicate trust-host {host} --port {port}'"
        ) from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            host,
            port=port,
            username=user,
            key_filename=str(key_file),
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        raise HostKeyRefused(
            f"host key of {host}:{port} CHANGED ({exc.key.get_name()} {exc.key.fingerprint}); refusing to connect"
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise HostKeyRefused(
                f"{host}:{port} is not in {known_hosts}; "
                f"record its key with 'ttsha replicate trust-host {host} --port {port}'"
            ) from None
        raise PeerUnreachable(f"SSH to {user}@{host}:{port} failed: {exc}") from None
    except OSError as exc:
        raise PeerUnreachable(f"SSH to {host}:{port} failed: {exc.strerror or exc}") from None
    transport = client.get_transport()
    if transport is None:  # connect() returned, so the transport exists; checked for the type
        client.close()
        raise PeerUnreachable(f"SSH to {user}@{host}:{port} failed: no transport")
    transport.set_keepalive(15)
    return client


def run(client: paramiko.SSHClient, argv: list[str], stdin: bytes = b"",
        timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """Run ``argv`` on the peer (each argument quoted: no shell interpretation).

    Returns (exit status, stdout, stderr).
    """
    command = shlex.join(argv)
    try:
        chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
        if stdin:
            chan_in.write(stdin)
        chan_in.channel.shutdown_write()
        out, err = chan_out.read(), chan_err.read()
        return chan_out.channel.recv_exit_status(), out, err
    except (paramiko.SSHException, OSError) as exc:
        raise PeerUnreachable(f"running {argv[0]} over SSH failed: {exc}") from None
