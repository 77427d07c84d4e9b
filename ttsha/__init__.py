"""ttsha: keep a Chinese text-to-speech service up when a node dies."""

from __future__ import annotations

__version__ = "0.1.0"
