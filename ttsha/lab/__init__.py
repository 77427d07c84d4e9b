"""``ttsha lab``: the whole HA pair on one machine, on 127.0.0.0/8.

Parts: :mod:`.layout` (where everything goes, the configs), :mod:`.procs`
(processes, ports, health), :mod:`.sshd` (each node's SSH endpoint), the
gateway (:class:`ttsha.nginx.PrivateGateway`), and :mod:`.core` (the
:class:`Lab` that starts, inspects and stops them). Test fixtures and
benchmarks use the same parts.
"""

from __future__ import annotations

from .core import STORE_FS_SOURCE, Lab
from .layout import GATEWAY_HOST, NODE_HOSTS, LabError, LabLayout, lab_settings, standby_settings, write_config
from .procs import alive, descendants, find_binary, health, wait_port
from .sshd import HOST_AND_CLIENT_KEYS, render_sshd_config

__all__ = ["GATEWAY_HOST", "HOST_AND_CLIENT_KEYS", "NODE_HOSTS", "STORE_FS_SOURCE", "Lab", "LabError", "LabLayout",
           "alive", "descendants", "find_binary", "health", "lab_settings", "render_sshd_config",
           "standby_settings", "wait_port", "write_config"]
