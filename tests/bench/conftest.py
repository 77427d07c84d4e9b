"""The benchmarks' helpers are scripts in bench/, not a package: put it on the path."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from tests.monitor.conftest import pair  # noqa: E402,F401 - the real Nginx and fake nodes, reused
