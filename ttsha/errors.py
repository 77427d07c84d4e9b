"""The ttsha exception family and its exit codes.

::

    TTSHAError                  exit 1  runtime failure
     ├── EngineError            exit 1  model missing, unloadable or producing bad audio
     ├── StoreError             exit 1  the audio store cannot be written (full, read-only, I/O error)
     ├── UsageError             exit 2  bad command line or bad input (empty text, unknown voice…)
     │    └── InputError        exit 2  text/voice/emotion/speed a request cannot be served with
     ├── ConfigError            exit 3  configuration file unreadable or invalid
     ├── PeerUnreachable        exit 4  a node, gateway or SSH peer did not answer
     ├── ObjectiveMissed        exit 5  a drill ran but missed an objective of [drill]
     └── Refused                exit 6  a safety check failed; nothing was changed

The CLI catches ``TTSHAError`` at one place, prints ``message`` on one line
and exits with ``exit_code``. Library code raises; it never exits.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_PEER = 4
EXIT_OBJECTIVE = 5
EXIT_REFUSED = 6
EXIT_INTERRUPTED = 130

#: Documented in README.md and ttsha(1); a test keeps the three in step.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "runtime failure (engine, I/O, a step that did not complete)",
    EXIT_USAGE: "usage error: bad option or bad input text",
    EXIT_CONFIG: "configuration error: the file and key are named",
    EXIT_PEER: "peer unreachable: a node, the gateway or the SSH peer did not answer",
    EXIT_OBJECTIVE: "drill objective missed (failed requests, RTO, RPO or latency over [drill] limits)",
    EXIT_REFUSED: "refused: a safety check failed (unhealthy standby, replication behind…); nothing changed",
    EXIT_INTERRUPTED: "interrupted (SIGINT)",
}


class TTSHAError(Exception):
    """Base of every error ttsha raises on purpose."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class EngineError(TTSHAError):
    """The synthesis engine is missing, cannot load, or produced invalid audio."""


class StoreError(TTSHAError):
    """A result could not be written to the audio store (ENOSPC, EIO, EROFS…)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class UsageError(TTSHAError):
    """The command line or its input cannot be used as given."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """A synthesis request is invalid (empty text, unknown voice, speed out of range…).

    ``code`` is the short machine-readable reason used in HTTP error bodies.
    """

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(TTSHAError):
    """The configuration file is unreadable or a key holds a bad value."""

    exit_code = EXIT_CONFIG


class PeerUnreachable(TTSHAError):
    """A remote party (node, gateway, SSH peer) could not be reached."""

    exit_code = EXIT_PEER


class ObjectiveMissed(TTSHAError):
    """A drill completed but missed an objective of ``[drill]``."""

    exit_code = EXIT_OBJECTIVE


class Refused(TTSHAError):
    """A switchover or drill was refused by a safety check; nothing was changed."""

    exit_code = EXIT_REFUSED
