"""Packaging tests: the real systemd, groff and make tools judge the shipped files."""

from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str, package: str) -> str:
    """The path of a Debian tool; missing, it fails under CI and skips on a developer's machine."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing: apt-get install -y {package}")
        pytest.skip(f"{name} missing: apt-get install -y {package}")
    return path
