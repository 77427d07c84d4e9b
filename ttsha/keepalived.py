"""The gateway pair: keepalived (VRRP) moves one virtual IP between gateways.

Each gateway host runs Nginx, ``ttsha monitor`` and Debian's keepalived.
``ttsha keepalived render`` writes that host's ``keepalived.conf`` from the
ttsha configuration (``[vrrp]`` and ``[gateways.NAME]``); nothing else
writes it. Choices, each for a reason:

- every instance starts ``BACKUP`` with ``nopreempt``: a gateway that comes
  back does not take the address back (a second move is a second outage);
- unicast adverts to the other gateways, with ``vrrp_check_unicast_src``:
  adverts from any other source are ignored, so a host on the LAN cannot
  claim the address by sending a higher priority;
- VRRP version 3 for sub-second adverts (version 2 has whole seconds, but
  also the PASS authentication some sites require);
- a track script (``ttsha keepalived check``) that fails when this host's
  Nginx or monitor does not answer, so the address leaves a gateway whose
  proxy is frozen, not only one that is powered off;
- notify hooks (``ttsha keepalived notify``) that raise ttsha alerts.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import httpclient
from .alert import Alert, Alerter
from .config import Config, GatewayConfig
from .errors import ConfigError, TTSHAError

#: keepalived's VRRP states as passed to notify scripts.
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
INSTANCE = "ttsha"
#: How long a notify hook waits for the webhook (keepalived runs hooks asynchronously).
NOTIFY_TIMEOUT = 10.0


def this_gateway(config: Config, name: str | None) -> tuple[str, GatewayConfig]:
    """The ``[gateways]`` entry named ``name``, or the one whose address is on this host."""
    if not config.gateways:
        raise ConfigError("no [gateways.NAME] tables: keepalived needs at least two gateways")
    if name:
        if name not in config.gateways:
            raise ConfigError(f"gateway {name!r} is not one of the [gateways] tables ({', '.join(config.gateways)})")
        return name, config.gateways[name]
    local = _local_addresses()
    mine = [(n, g) for n, g in config.gateways.items() if g.address in local]
    if len(mine) != 1:
        raise ConfigError("cannot tell which [gateways] table is this host (none or several of their addresses "
                          "are local): name it with --gateway")
    return mine[0]


def _local_addresses() -> set[str]:
    ip = shutil.which("ip")
    if ip is None:
        return set()
    out = subprocess.run([ip, "-o", "addr", "show"], capture_output=True, text=True, check=False).stdout
    return {fields[3].split("/")[0] for fields in (line.split() for line in out.splitlines()) if len(fields) > 3}


def _q(text: str) -> str:
    """A keepalived quoted string (its parser takes the text between double quotes)."""
    if '"' in text or "\n" in text:
        raise ConfigError(f"cannot quote {text!r} for keepalived")
    return f'"{text}"'


def render(config: Config, name: str, ttsha_bin: str = "/usr/bin/ttsha", config_path: Path | None = None,
           script_user: str = "root") -> str:
    """``keepalived.conf`` for gateway ``name``."""
    vrrp = config.vrrp
    if not vrrp.vip:
        raise ConfigError("vrrp.vip is empty: set the virtual IP the gateways share (e.g. \"192.0.2.100/24\")")
    me = config.gateways[name]
    peers = [g.address for n, g in config.gateways.items() if n != name]
    if not peers:
        raise ConfigError("[gateways] names one gateway: a pair needs two")
    base = [ttsha_bin] + (["--config", str(config_path)] if config_path else [])
    check = shlex.join([*base, "keepalived", "check"])
    notify = shlex.join([*base, "keepalived", "notify", "--gateway", name])
    advert = f"{vrrp.advert_interval:g}"
    lines = [
        f"# keepalived.conf for gateway {name}, written by `ttsha keepalived render`: edit the",
        "# ttsha configuration ([vrrp], [gateways.NAME]) and render again instead.",
        "global_defs {",
        f"    router_id ttsha-{name}",
        "    enable_script_security",
        f"    script_user {script_user}",
        "    # Adverts only from the configured peers count (no VIP theft from the LAN).",
        "    vrrp_check_unicast_src",
        f"    vrrp_version {vrrp.version}",
        "}",
        "",
        "vrrp_script ttsha_check {",
        f"    script {_q(check)}",
        f"    interval {max(1, round(vrrp.check_interval))}",
        "    timeout 1",
        "    fall 1",
        "    rise 2",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        "    state BACKUP",
        "    nopreempt",
        f"    interface {vrrp.interface}",
        f"    virtual_router_id {vrrp.router_id}",
        f"    priority {me.priority}",
        f"    advert_int {advert}",
        f"    unicast_src_ip {me.address}",
        "    unicast_peer {",
        *(f"        {address}" for address in peers),
        "    }",
        "    virtual_ipaddress {",
        f"        {vrrp.vip} dev {vrrp.interface}",
        "    }",
        "    track_script {",
        "        ttsha_check",
        "    }",
    ]
    if vrrp.version == 2:
        secret = _auth_pass(vrrp.auth_file)
        lines += ["    authentication {", "        auth_type PASS", f"        auth_pass {secret}", "    }"]
    lines += [
        f"    notify_master {_q(notify + ' MASTER')}",
        f"    notify_backup {_q(notify + ' BACKUP')}",
        f"    notify_fault {_q(notify + ' FAULT')}",
        f"    notify_stop {_q(notify + ' STOP')}",
        "}",
        "",
    ]
    return "\n".join(lines)


def _auth_pass(path: Path) -> str:
    try:
        st = path.stat()
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"vrrp.auth_file: cannot read {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"vrrp.auth_file: {path} must not be readable by others (chmod 600)")
    if not secret or not secret.isascii() or not secret.isalnum():
        raise ConfigError(f"vrrp.auth_file: {path} must hold letters and digits (VRRP uses the first 8)")
    return secret[:8]


def validate(text: str, keepalived: str = "keepalived") -> None:
    """Run ``keepalived -t`` on ``text``; raise with its complaint when it refuses."""
    binary = shutil.which(keepalived)
    if binary is None:
        raise TTSHAError("keepalived not found: apt-get install -y keepalived")
    with tempfile.TemporaryDirectory(prefix="ttsha-keepalived-") as tmp:
        path = Path(tmp) / "keepalived.conf"
        path.write_text(text, encoding="utf-8")
        proc = subprocess.run([binary, "-t", "-l", "-f", str(path)], capture_output=True, text=True,
                              check=False, timeout=30)
    if proc.returncode != 0:
        complaint = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(f"keepalived -t refused the configuration: {' | '.join(complaint[-5:])}")


def check(config: Config, timeout: float = 0.8) -> list[str]:
    """Why this gateway should not hold the VIP (empty: it may): Nginx and the monitor must answer."""
    from .monitor import control

    problems = []
    host, _, port = config.nginx.listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "*") else host.strip("[]")
    served = httpclient.get(httpclient.host_url(host, int(port), "/ttsha_generation"), timeout=timeout)
    if not served.status:
        problems.append(f"nginx on {config.nginx.listen} does not answer: {served.error}")
    elif served.status != 200:
        problems.append(f"nginx answered /ttsha_generation with {served.status}")
    try:
        reply = control.call(config.monitor.control_socket, {"op": "ping"}, timeout=timeout)
        if not reply.get("ok"):
            problems.append(f"monitor answered {reply}")
    except TTSHAError as exc:
        problems.append(f"monitor does not answer on {config.monitor.control_socket}: {exc}")
    return problems


def notify(config: Config, gateway: str, state: str) -> Alert:
    """Raise the alert for a VRRP state change of this gateway and return it."""
    if state not in STATES:
        raise TTSHAError(f"unknown VRRP state {state!r} (one of {', '.join(STATES)})")
    severity = {"MASTER": "warning", "BACKUP": "info", "FAULT": "critical", "STOP": "warning"}[state]
    words = {"MASTER": "now holds the virtual IP", "BACKUP": "is backup (does not hold the virtual IP)",
             "FAULT": "is in FAULT: its Nginx or monitor failed the check", "STOP": "stopped VRRP"}[state]
    alert = Alert(kind=f"vrrp_{state.lower()}", message=f"gateway {gateway} {words} ({config.vrrp.vip})",
                  severity=severity, data={"gateway": gateway, "state": state, "vip": config.vrrp.vip})
    alerter = Alerter(config.alert, source=gateway)
    alerter.send(alert)
    alerter.close(timeout=NOTIFY_TIMEOUT)  # a notify hook is a short-lived process: deliver, then exit
    return alert
