"""Fixtures the attacks need, from the suites that own them: a fake-engine
node on a real socket, two nodes behind a real Nginx, a real sshd."""

from __future__ import annotations

from ..monitor.conftest import pair  # noqa: F401
from ..replicate.conftest import rep_config  # noqa: F401
from ..server.conftest import fake_engine, fake_node, make_node  # noqa: F401
