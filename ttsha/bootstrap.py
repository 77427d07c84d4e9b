"""``ttsha init``: a complete, commented configuration and an SSH key for one host.

A node's file names the node itself (``[serve]`` address, its ``[nodes]``
table) and its peer; a gateway's names every node. Both are built as
:class:`~ttsha.config.Config` objects, serialized by the one TOML writer
(:func:`ttsha.config.to_toml`) and read back by :func:`ttsha.config.parse`
before anything is written, so ``init`` never writes a file ``config check``
would refuse.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import Config, NodeConfig, ReplicateConfig, ServeConfig, parse, to_toml
from .errors import Refused, TTSHAError, UsageError
from .fsutil import atomic_write

try:
    import tomli as _toml
except ImportError:  # pragma: no cover
    import tomllib as _toml  # type: ignore[no-redef]

SERVICE_USER = "ttsha"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class InitResult:
    """What ``init`` wrote and what the admin does next, on which host."""

    config_path: Path
    key_path: Path
    public_key: str
    next_steps: list[str]


def _host_port(url: str, what: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{what}: {url!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"{what}: expected http://HOST:PORT, got {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{what}: node names may use letters, digits, '.', '_' and '-', got {name!r}")
    return name


def parse_nodes(spec: str) -> dict[str, str]:
    """``"a=http://10.0.0.11:8900,b=http://10.0.0.12:8900"`` -> ``{name: url}``, in order."""
    nodes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, url = item.partition("=")
        if not sep:
            raise UsageError(f"--nodes: expected NAME=URL, got {item!r}")
        name = _check_name(name.strip(), "--nodes")
        if name in nodes:
            raise UsageError(f"--nodes: {name!r} is named twice")
        _host_port(url.strip(), f"--nodes {name}")
        nodes[name] = url.strip()
    if len(nodes) < 2:
        raise UsageError("--nodes: name at least two nodes (NAME=URL,NAME=URL)")
    return nodes


def _replication(key: Path) -> ReplicateConfig:
    return dataclasses.replace(ReplicateConfig(), key_file=key, known_hosts=key.parent / "known_hosts")


def secret_path(key: Path) -> Path:
    """The role secret (ttsha.protocol), beside the key: the gateway's ``init`` makes it, each node gets a copy."""
    return key.parent / "monitor.secret"


def _with_secret(config: Config, key: Path) -> Config:
    return dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, secret_file=secret_path(key)))


def node_config(name: str, url: str, peer: str, peer_url: str, engine: str, key: Path) -> Config:
    """The configuration of synthesis node ``name``, replicating to ``peer``."""
    _check_name(name, "NAME")
    _check_name(peer, "--peer")
    if peer == name:
        raise UsageError("--peer: a node cannot be its own peer")
    host, port = _host_port(url, "--url")
    peer_host, _ = _host_port(peer_url, "--peer")
    base = Config()
    config = dataclasses.replace(
        base,
        engine=dataclasses.replace(base.engine, engine=engine),
        serve=dataclasses.replace(ServeConfig(), host=host, port=port),
        # Equal priorities: only the gateway's file ranks the nodes (a node's ranking is never read),
        # and two node files that each put themselves first would contradict each other.
        nodes={
            name: NodeConfig(url=url, ssh_host=host),
            peer: NodeConfig(url=peer_url, ssh_host=peer_host),
        },
        replicate=dataclasses.replace(_replication(key), peer=peer),
    )
    return _with_secret(config, key)


def gateway_config(nodes: dict[str, str], listen: str, key: Path) -> Config:
    """The configuration of a gateway host routing to ``nodes`` (the first is preferred as primary)."""
    table = {}
    for rank, (name, url) in enumerate(nodes.items()):
        host, _ = _host_port(url, f"--nodes {name}")
        table[name] = NodeConfig(url=url, ssh_host=host, sudo=True, priority=max(200 - 100 * rank, 0))
    base = Config()
    config = dataclasses.replace(base, nodes=table, nginx=dataclasses.replace(base.nginx, listen=listen),
                                 replicate=_replication(key))
    return _with_secret(config, key)


def _validated(config: Config, out: Path) -> str:
    text = to_toml(config, comments=True)
    parse(_toml.loads(text), source=out)  # never write what `config check` would refuse
    return text


def _service_ids() -> tuple[int, int] | None:
    """uid and gid of the ttsha user when running as root and it exists (make install-host creates it)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid, grp.getgrnam(SERVICE_USER).gr_gid
    except KeyError:
        return None


def _ensure_key(key: Path, comment: str) -> str:
    if not key.exists():
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            raise TTSHAError("ssh-keygen not found: apt-get install -y openssh-client")
        key.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TTSHAError(f"ssh-keygen failed: {proc.stderr.strip()}")
    os.chmod(key, 0o600)
    ids = _service_ids()
    if ids:  # the replicator and drills run as ttsha and must read their key
        os.chown(key, ids[0], ids[1])
    return Path(f"{key}.pub").read_text(encoding="utf-8").strip()


def _write(config: Config, out: Path, force: bool, key: Path, comment: str) -> tuple[str, Path]:
    if out.exists() and not force:
        raise Refused(f"{out} exists; nothing written (--force replaces it)")
    text = _validated(config, out)
    header = (f"# Written by `ttsha init` for {comment}. Every key is shown with its\n"
              "# meaning; check after editing with `ttsha config check`.\n\n")
    atomic_write(out, header + text, mode=0o640)
    ids = _service_ids()
    if ids:
        os.chown(out, 0, ids[1])
    return _ensure_key(key, comment), out


def _ensure_secret(path: Path) -> None:
    """The role secret, made once on the gateway (mode 0600; the monitor runs as root there)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, secrets.token_hex(32) + "\n", mode=0o600)


def _authorized_line(public_key: str, source: str | None) -> str:
    restrict = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding"
    return f'from="{source}",{restrict} {public_key}' if source else f"{restrict} {public_key}"


def init_node(name: str, url: str, peer: str, peer_url: str, engine: str, out: Path, key: Path,
              force: bool = False) -> InitResult:
    """Write the node's configuration and key; say what to run on the peer."""
    config = node_config(name, url, peer, peer_url, engine, key)
    public, path = _write(config, out, force, key, f"ttsha@{name}")
    host = config.serve.host
    peer_host = config.nodes[peer].ssh_host
    steps = [
        f"On {peer}: append this line to ~ttsha/.ssh/authorized_keys (/var/lib/ttsha/.ssh/authorized_keys):\n"
        f"  {_authorized_line(public, host)}",
        f"Here: compare {peer}'s host key fingerprint, then record it: ttsha replicate trust-host {peer_host}",
        f"Here: copy the gateway's role secret to {config.monitor.secret_file}, readable by ttsha only "
        f"(the same file on the gateway and every node): install -m 600 -o ttsha -g ttsha monitor.secret "
        f"{config.monitor.secret_file}",
        "Here: systemctl enable --now ttsha-serve.service ttsha-replicate.service ttsha-gc.timer && ttsha doctor",
    ]
    if engine == "sambert":
        steps.insert(0, f"Here: put the Sambert model in {config.engine.model_dir} (docs/deploy.md, section 3)")
    return InitResult(path, key, public, steps)


def init_gateway(nodes: dict[str, str], listen: str, out: Path, key: Path, force: bool = False,
                 address: str | None = None) -> InitResult:
    """Write the gateway's configuration and key; say what to run on each node."""
    config = gateway_config(nodes, listen, key)
    public, path = _write(config, out, force, key, "ttsha@gateway")
    secret = config.monitor.secret_file
    assert secret is not None  # set by gateway_config
    _ensure_secret(secret)
    steps = [f"On each node: a copy of {secret}, the role secret, where its [monitor] secret_file says "
             "(by default /etc/ttsha/monitor.secret), mode 0600, owner ttsha; copy it over a channel "
             "you trust"]
    for name, node in config.nodes.items():
        steps.append(f"On {name}: append this line to /var/lib/ttsha/.ssh/authorized_keys (the gateway's drills):\n"
                     f"  {_authorized_line(public, address)}")
        steps.append(f"Here: compare {name}'s host key fingerprint, then: ttsha replicate trust-host {node.ssh_host}")
    steps.append("Here: ttsha nginx render && nginx -t && systemctl reload nginx")
    steps.append("Here: systemctl enable --now ttsha-monitor.service && ttsha status")
    return InitResult(path, key, public, steps)
