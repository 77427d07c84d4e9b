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
