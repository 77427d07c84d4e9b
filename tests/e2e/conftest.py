"""What the end-to-end modules share: a lab brought up, and down again, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ttsha.lab import Lab

from ..monitor.conftest import need

EXE = Path(sys.executable).with_name("ttsha")


@contextmanager
def running_lab(tmp_path_factory, name: str = "lab") -> Iterator[Lab]:
    """``ttsha lab up`` in a fresh directory for the block, ``ttsha lab down`` after it."""
    need("nginx", "nginx")
    root = tmp_path_factory.mktemp(name)
    proc = subprocess.run([str(EXE), "lab", "up", "--dir", str(root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    try:
        yield Lab(root)
    finally:
        subprocess.run([str(EXE), "lab", "down", "--dir", str(root)], capture_output=True, timeout=600)
