"""``ttsha doctor``: check that this machine can do what its configuration asks."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from . import httpclient
from .config import Config

OK, FAIL, WARN, SKIP = "OK", "FAIL", "WARN", "SKIP"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: str
    detail: str
    hint: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def _tcp(host: str, port: int, timeout: float = 1.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", OK if ok else FAIL, sys.version.split()[0], "" if ok else "ttsha needs Python 3.10 or newer")


def check_torch() -> Check:
    version = _version("torch")
    if version is None:
        return Check("torch", FAIL, "not installed", "pip install torch==2.13.0 (CPU build)")
    return Check("torch", OK, version)


def check_engine_data(config: Config) -> Check:
    if config.engine.engine != "embedded":
        return Check("embedded voice data", SKIP, f"engine is {config.engine.engine}")
    from .engine.embedded import find_asset_dir
    from .errors import EngineError

    try:
        return Check("embedded voice data", OK, str(find_asset_dir(config.engine.data_dir)))
    except EngineError as exc:
        return Check("embedded voice data", FAIL, "missing", str(exc))


def check_modelscope(config: Config) -> Check:
    version = _version("modelscope")
    needed = config.engine.engine == "sambert"
    if version is None:
        if needed:
            return Check("modelscope", FAIL, "not installed",
                         "pip install 'ttsha[sambert]' and ModelScope's kantts/ttsfrd wheels (docs/deploy.md)")
        return Check("modelscope", SKIP, "not installed (only engine = \"sambert\" needs it)")
    if needed:
        from .engine.sambert import frontend_problem

        problem = frontend_problem()
        if problem:
            return Check("modelscope", FAIL, f"{version}, but kantts/ttsfrd are not usable", problem)
    return Check("modelscope", OK, version)


def check_model_dir(config: Config) -> Check:
    if config.engine.engine != "sambert":
        return Check("sambert model dir", SKIP, "engine is embedded")
    path = config.engine.model_dir
    if not (path / "configuration.json").is_file():
        return Check("sambert model dir", FAIL, f"{path}: no configuration.json",
                     "copy the model with 'ttsha replicate --once models'")
    return Check("sambert model dir", OK, str(path))


def check_lexicon(config: Config) -> Check:
    """The pronunciation lexicon loads, and sits where the replicator copies it to the standby."""
    from .engine.lexicon import load
    from .errors import ConfigError

    path = config.engine.lexicon
    if path is None:
        return Check("lexicon", SKIP, "none configured")
    if not path.is_file():
        return Check("lexicon", WARN, f"{path}: does not exist (read as empty)",
                     "create it, or let 'ttsha replicate' bring the primary's")
    try:
        lexicon = load(path)
    except ConfigError as exc:
        return Check("lexicon", FAIL, exc.message, "fix the entry named; serve keeps the lexicon it has")
    detail = f"{path}: {len(lexicon.pinyin)} readings, {len(lexicon.text)} replacements"
    if not path.resolve().is_relative_to(Path(config.replicate.local_models).resolve()):
        return Check("lexicon", WARN, detail + "; outside [replicate] local_models, so the standby gets no copy",
                     "move it under [replicate] local_models, or copy it to the standby yourself")
    return Check("lexicon", OK, detail)


def check_store(config: Config) -> Check:
    path = config.store.path
    if not path.exists():
        if _writable(path):
            return Check("audio store", WARN, f"{path} does not exist yet",
                         "ttsha serve creates it on start (its parent is writable)")
        return Check("audio store", FAIL, f"{path} does not exist and cannot be created",
                     "create it or set [store] path")
    if not path.is_dir():
        return Check("audio store", FAIL, f"{path} is not a directory", "set [store] path to a directory")
    if _writable(path):
        return Check("audio store", OK, f"{path} (writable)")
    return Check("audio store", FAIL, f"{path} is not writable", "fix its owner or set [store] path")


def check_nginx(config: Config) -> Check:
    if "nginx" not in config.present:
        return Check("nginx", SKIP, "no [nginx] section in the configuration")
    binary = config.nginx.test_command[0] if config.nginx.test_command else "nginx"
    found = shutil.which(binary)
    if not found:
        return Check("nginx", FAIL, f"{binary} not found", "apt-get install -y nginx")
    return Check("nginx", OK, found)


def check_nodes(config: Config) -> list[Check]:
    if "nodes" not in config.present:
        return [Check("nodes", SKIP, "no [nodes] tables in the configuration")]
    checks = []
    for name, node in config.nodes.items():
        url = node.url.rstrip("/") + "/health"
        reply = httpclient.get(url, timeout=2.0)
        if not reply.status:
            checks.append(Check(f"node {name}", FAIL, f"{url}: {reply.error}", "is 'ttsha serve' running there?"))
        elif reply.status >= 400:
            checks.append(Check(f"node {name}", WARN, f"{url} -> {reply.status}", "the node answers but is not ready"))
        else:
            checks.append(Check(f"node {name}", OK, f"{url} -> {reply.status}"))
    return checks


def check_ssh(config: Config) -> list[Check]:
    if "replicate" not in config.present:
        return [Check("ssh", SKIP, "no [replicate] section in the configuration")]
    checks = []
    key = config.replicate.key_file
    if not key.is_file():
        checks.append(Check("ssh key", FAIL, f"{key} missing", "ssh-keygen -t ed25519 -f " + str(key)))
    elif key.stat().st_mode & 0o077:
        checks.append(Check("ssh key", FAIL, f"{key} is readable by others", f"chmod 600 {key}"))
    else:
        checks.append(Check("ssh key", OK, str(key)))
    for name, node in config.nodes.items():
        if not node.ssh_host:
            continue
        error = _tcp(node.ssh_host, node.ssh_port)
        status, detail = (OK, "reachable") if error is None else (FAIL, error)
        checks.append(Check(f"ssh {name}", status, f"{node.ssh_host}:{node.ssh_port} {detail}"))
    return checks


def check_secret(config: Config) -> Check:
    """The shared secret that signs roles (ttsha.protocol)."""
    from .errors import ConfigError
    from .protocol import load_secret

    if config.monitor.secret_file is None:
        if "nodes" not in config.present:
            return Check("role secret", SKIP, "no [nodes] tables in the configuration")
        return Check("role secret", WARN, "[monitor] secret_file is not set: no node believes a role",
                     "see ttsha(1), SECURITY")
    try:
        load_secret(config.monitor.secret_file)
    except ConfigError as exc:
        return Check("role secret", FAIL, exc.message, "see ttsha(1), SECURITY")
    return Check("role secret", OK, str(config.monitor.secret_file))


def run(config: Config) -> list[Check]:
    """All checks, in the order the table shows them."""
    return [
        check_python(),
        check_torch(),
        check_engine_data(config),
        check_modelscope(config),
        check_model_dir(config),
        check_lexicon(config),
        check_store(config),
        check_nginx(config),
        *check_nodes(config),
        *check_ssh(config),
        check_secret(config),
    ]
