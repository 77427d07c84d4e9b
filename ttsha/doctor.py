"""``ttsha doctor``: check that this machine can do what its configuration asks.

Every check gives OK, WARN or FAIL (SKIP when it does not apply) with the fix
in one line. Besides the software (python, torch, engine data), a deployed
host is checked end to end for what it is: a *node* (the config names it in
``[nodes]``) or a *gateway* (it routes to the nodes): the ttsha user, its
directories, the SSH key and ``known_hosts``, an SSH login to each peer with
the host key verified, ``nginx -t`` on the files ``ttsha nginx render``
would write, and the units enabled.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import httpclient
from .config import Config, replication_peers, this_node

OK, FAIL, WARN, SKIP = "OK", "FAIL", "WARN", "SKIP"
NODE, GATEWAY = "node", "gateway"
SERVICE_USER = "ttsha"
#: What `make install-host` ships and `ttsha init` asks to enable, per role.
UNITS = {
    NODE: ("ttsha-serve.service", "ttsha-replicate.service", "ttsha-gc.timer"),
    GATEWAY: ("nginx.service", "ttsha-monitor.service"),
}


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


@dataclass(frozen=True)
class Host:
    """What this host is and where its system lives (tests point ``root``,
    ``user`` and ``systemctl`` at a throwaway root)."""

    roles: frozenset[str] = frozenset()
    user: str = SERVICE_USER
    root: Path = Path("/")
    systemctl: str | None = field(default_factory=lambda: shutil.which("systemctl"))


def host_roles(config: Config) -> frozenset[str]:
    """``node`` when ``[nodes]`` names this host (see :func:`ttsha.config.this_node`),
    ``gateway`` when it names nodes that are not this host, or its Nginx site is written here."""
    roles = set()
    if "nodes" in config.present:
        roles.add(NODE if this_node(config) else GATEWAY)
    if "nginx" in config.present and config.nginx.site_file.is_file():
        roles.add(GATEWAY)
    return frozenset(roles)


def _account(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def _can(path: Path, account: pwd.struct_passwd | None, mode: int) -> bool:
    """Whether ``account`` (else this process) may access ``path`` with ``mode`` (os.R_OK, os.W_OK | os.X_OK)."""
    if account is None:
        return os.access(path, mode)
    if account.pw_uid == 0:
        return True
    groups = {account.pw_gid} | {g.gr_gid for g in _groups_of(account.pw_name)}

    def allowed(target: Path, bits: int) -> bool:
        st = target.stat()
        shift = 6 if st.st_uid == account.pw_uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits

    # Reaching the path needs search (x) on every directory above it, too.
    path = path.absolute()
    if not all(allowed(parent, 1) for parent in path.parents):
        return False
    return allowed(path, (4 if mode & os.R_OK else 0) | (2 if mode & os.W_OK else 0) | (1 if mode & os.X_OK else 0))


def _groups_of(user: str) -> list:
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]


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


def check_store(config: Config, host: Host = Host()) -> Check:
    """The audio store: a directory the node's services (the ttsha user, when it exists) can write."""
    path = config.store.path
    if not path.exists():
        if _writable(path):
            return Check("audio store", WARN, f"{path} does not exist yet",
                         "ttsha serve creates it on start (its parent is writable)")
        return Check("audio store", FAIL, f"{path} does not exist and cannot be created",
                     "create it or set [store] path")
    if not path.is_dir():
        return Check("audio store", FAIL, f"{path} is not a directory", "set [store] path to a directory")
    account = _account(host.user) if NODE in host.roles else None
    if _can(path, account, os.W_OK | os.X_OK):
        return Check("audio store", OK, f"{path} (writable{f' by {host.user}' if account else ''})")
    who = f" by {host.user}" if account else ""
    return Check("audio store", FAIL, f"{path} is not writable{who}",
                 f"chown -R {host.user}: {path}" if account else "fix its owner or set [store] path")


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


def _ssh_targets(config: Config, roles: frozenset[str]) -> list[str]:
    """Nodes this host logs in to: a node its replication peers, a gateway every node (drills)."""
    targets = []
    if NODE in roles:
        targets += [peer for peer in replication_peers(config) if peer in config.nodes]
    if GATEWAY in roles:
        targets += [name for name in config.nodes if name not in targets]
    return [name for name in targets if config.nodes[name].ssh_host]


def _known_hosts_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def check_ssh(config: Config, host: Host = Host()) -> list[Check]:
    """The key (0600, readable by the ttsha user on a node), and per peer: its host key
    in ``known_hosts``, then a real login that verifies it (what the replicator and drills do)."""
    if "replicate" not in config.present and not host.roles:
        return [Check("ssh", SKIP, "no [replicate] section in the configuration")]
    from paramiko import SSHException
    from paramiko.hostkeys import HostKeys, InvalidHostKey

    from . import ssh
    from .errors import TTSHAError

    rep = config.replicate
    key = rep.key_file
    checks = []
    if not key.is_file():
        checks.append(Check("ssh key", FAIL, f"{key} missing", f"ttsha init, or: ssh-keygen -t ed25519 -N '' -f {key}"))
    elif key.stat().st_mode & 0o077:
        checks.append(Check("ssh key", FAIL, f"{key} is readable by others (mode "
                            f"{stat.S_IMODE(key.stat().st_mode):o})", f"chmod 600 {key}"))
    elif NODE in host.roles and not _can(key, _account(host.user), os.R_OK):
        # ttsha-replicate runs as the ttsha user.
        checks.append(Check("ssh key", FAIL, f"{key}: the {host.user} user cannot read it",
                            f"chown {host.user} {key}"))
    else:
        checks.append(Check("ssh key", OK, f"{key} (mode {stat.S_IMODE(key.stat().st_mode):04o})"))
    targets = _ssh_targets(config, host.roles)
    if not targets:
        return checks
    try:
        known = HostKeys(str(rep.known_hosts)) if rep.known_hosts.is_file() else HostKeys()
    except (OSError, InvalidHostKey, SSHException) as exc:  # a damaged line is what doctor is for
        return [*checks, Check("known_hosts", FAIL, f"{rep.known_hosts}: {type(exc).__name__}: {exc}",
                               f"fix or remove the damaged line of {rep.known_hosts}, then trust the hosts again")]
    for name in targets:
        node = config.nodes[name]
        where = f"{node.ssh_user}@{node.ssh_host}:{node.ssh_port}"
        trust = f"ttsha replicate trust-host {node.ssh_host}" + (f" --port {node.ssh_port}" if node.ssh_port != 22
                                                                 else "")
        if known.lookup(_known_hosts_entry(node.ssh_host, node.ssh_port)) is None:
            checks.append(Check(f"known_hosts {name}", FAIL, f"{rep.known_hosts} has no key of {node.ssh_host}:"
                                f"{node.ssh_port}", f"compare the fingerprint, then: {trust}"))
            continue
        checks.append(Check(f"known_hosts {name}", OK, f"{rep.known_hosts} holds {node.ssh_host}:{node.ssh_port}"))
        try:
            client = ssh.connect(node.ssh_host, node.ssh_port, node.ssh_user, key, rep.known_hosts, timeout=5.0)
        except ssh.HostKeyRefused as exc:
            checks.append(Check(f"ssh {name}", FAIL, exc.message, "compare the fingerprint; if it changed on "
                                "purpose, remove the old line and " + trust))
            continue
        except TTSHAError as exc:
            checks.append(Check(f"ssh {name}", FAIL, exc.message, f"is sshd running on {node.ssh_host}, and "
                                f"{key}.pub in {node.ssh_user}'s authorized_keys there?"))
            continue
        client.close()
        checks.append(Check(f"ssh {name}", OK, f"logged in to {where}, host key verified"))
    return checks


def check_config(config: Config, host: Host = Host()) -> Check:
    """Which file was read and what this host is taken to be."""
    where = str(config.source) if config.source else "no file (built-in defaults)"
    node = this_node(config)
    said = [f"node {node}" if role == NODE else role for role in sorted(host.roles)]
    what = " and ".join(said) or "no host role: [nodes] does not name this host and no Nginx site is here"
    if config.source and NODE in host.roles and not _can(config.source, _account(host.user), os.R_OK):
        # serve, replicate and gc run as the ttsha user (the gateway's units as root).
        return Check("config", FAIL, f"{where}: the {host.user} user cannot read it",
                     f"chgrp {host.user} {where} && chmod 640 {where}")
    return Check("config", OK, f"{where}; checked as {what}")


def check_user(host: Host = Host()) -> Check:
    """The system user the units run as (User=ttsha)."""
    if not host.roles:
        return Check("user", SKIP, "no host role")
    account = _account(host.user)
    if account is None:
        return Check("user", FAIL, f"no user {host.user!r}",
                     "make install-host, or: systemd-sysusers /usr/lib/sysusers.d/ttsha.conf")
    return Check("user", OK, f"{host.user} (uid {account.pw_uid}, home {account.pw_dir})")


def check_dirs(config: Config, host: Host = Host()) -> list[Check]:
    """The directories the node's services write, owned so the ttsha user can write them.

    (The audio store has its own check, :func:`check_store`.)
    """
    if NODE not in host.roles:
        return []
    account = _account(host.user)
    checks = []
    for label, path in (("models dir", config.replicate.local_models),
                        ("state dir", config.replicate.queue_file.parent)):
        if not path.exists():
            checks.append(Check(label, FAIL, f"{path} does not exist (so it is not writable)",
                                "systemd-tmpfiles --create /usr/lib/tmpfiles.d/ttsha.conf, or: "
                                f"install -d -o {host.user} -g {host.user} -m 750 {path}"))
        elif not path.is_dir():
            checks.append(Check(label, FAIL, f"{path} is not a directory", "move it away; ttsha needs a directory"))
        elif not _can(path, account, os.W_OK | os.X_OK):
            checks.append(Check(label, FAIL, f"{path} is not writable by {host.user}",
                                f"chown -R {host.user}: {path}"))
        else:
            checks.append(Check(label, OK, f"{path} (writable by {host.user if account else 'this user'})"))
    return checks


def check_nginx_config(config: Config, host: Host = Host()) -> Check:
    """``nginx -t`` on what ``ttsha nginx render`` writes (and the current upstream file), in a scratch prefix."""
    if GATEWAY not in host.roles:
        return Check("nginx config", SKIP, "not a gateway")
    from . import nginx
    from .errors import TTSHAError

    binary = shutil.which(config.nginx.test_command[0] if config.nginx.test_command else "nginx")
    if binary is None:
        return Check("nginx config", FAIL, "nginx not found", "apt-get install -y nginx")
    upstream = config.nginx.upstream_file
    with tempfile.TemporaryDirectory(prefix="ttsha-doctor-") as scratch:
        prefix = Path(scratch)
        try:
            routing = (upstream.read_text(encoding="utf-8") if upstream.is_file()
                       else nginx.render_upstream(config.nodes, nginx.initial_roles(config.nodes)))
            site = nginx.render_site(config, upstream_file=prefix / "ttsha-upstream.conf")
        except (OSError, TTSHAError) as exc:
            return Check("nginx config", FAIL, f"cannot render the site: {exc}", "fix the file or key named")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True)
        (prefix / "ttsha-upstream.conf").write_text(routing, encoding="utf-8")
        (prefix / "ttsha-site.conf").write_text(site, encoding="utf-8")
        (prefix / "nginx.conf").write_text(nginx.render_main(config, prefix), encoding="utf-8")
        command, _ = nginx.prefix_commands(binary, prefix)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return Check("nginx config", FAIL, "nginx -t did not finish in 30 s", "is the host overloaded?")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = (lines[0] if lines else f"exit {proc.returncode}").replace(str(prefix) + "/", "")
        return Check("nginx config", FAIL, f"nginx -t refuses it: {why}",
                     f"fix the key or file named (the upstream is {upstream})")
    installed = config.nginx.site_file
    if not installed.is_file():
        return Check("nginx config", WARN, f"valid, but {installed} is not written yet",
                     "ttsha nginx render && nginx -t && systemctl reload nginx")
    if installed.read_text(encoding="utf-8") != nginx.render_site(config):
        return Check("nginx config", WARN, f"valid, but {installed} differs from what the configuration renders",
                     "ttsha nginx render && nginx -t && systemctl reload nginx")
    return Check("nginx config", OK, f"nginx -t accepts {installed} and {upstream.name}")


def check_units(host: Host = Host()) -> list[Check]:
    """The role's units are enabled (read from the unit files: systemd need not be running)."""
    units = [unit for role in sorted(host.roles) for unit in UNITS[role]]
    if not units:
        return []
    if host.systemctl is None:
        return [Check("units", WARN, f"unknown: no systemctl here to ask about {', '.join(units)}",
                      "check that your init system starts them")]
    checks = []
    for unit in units:
        try:
            proc = subprocess.run([host.systemctl, f"--root={host.root}", "is-enabled", unit],
                                  capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            checks.append(Check(unit, WARN, "unknown: systemctl is-enabled did not answer in 30 s",
                                f"systemctl is-enabled {unit}"))
            continue
        state = proc.stdout.strip()
        if state == "enabled":
            checks.append(Check(unit, OK, "enabled"))
        elif state in ("disabled", "static", "masked", "indirect"):
            checks.append(Check(unit, FAIL, state, f"systemctl enable --now {unit}"))
        elif "No such file" in proc.stderr or state == "not-found":
            checks.append(Check(unit, FAIL, "not installed", "make install-host"
                                + (" (and apt-get install -y nginx)" if unit.startswith("nginx") else "")))
        else:
            checks.append(Check(unit, WARN, f"unknown: {(proc.stderr or state).strip() or 'no answer'}",
                                f"systemctl status {unit}"))
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


def run(config: Config, host: Host | None = None) -> list[Check]:
    """All checks, in the order the table shows them (``host``: default, as :func:`host_roles` finds this one)."""
    host = host or Host(roles=host_roles(config))
    return [
        check_config(config, host),
        check_user(host),
        check_python(),
        check_torch(),
        check_engine_data(config),
        check_modelscope(config),
        check_model_dir(config),
        check_lexicon(config),
        check_store(config, host),
        *check_dirs(config, host),
        check_nginx(config),
        check_nginx_config(config, host),
        *check_nodes(config),
        *check_ssh(config, host),
        check_secret(config),
        *check_units(host),
    ]
