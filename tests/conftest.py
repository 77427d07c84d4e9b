from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_engine():
    """The real embedded engine, loaded once for the session.

    Its data is installed by ``make install``; a missing voice is a failure,
    not a skip.
    """
    from ttsha.engine.embedded import EmbeddedEngine

    engine = EmbeddedEngine(threads=2)
    engine.load()
    return engine


@pytest.fixture
def sshd_running(tmp_path):
    """A real OpenSSH sshd on a loopback port (replication and remote faults)."""
    from .replicate.conftest import Sshd

    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(root)
    server.start()
    yield server
    server.stop()
