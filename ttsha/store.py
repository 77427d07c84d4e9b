"""Content-addressed audio store.

A result's id is a hash of everything that determines its audio (engine,
model version, voice, emotion, speed, sample rate, normalized text, the
pronunciation lexicon's fingerprint when there is one), so the
same request always names the same file: a repeat is a cache hit, and a
retry on the standby produces the same id. Files live in two-character
shards: ``ab/abcdef….wav`` with its JSON sidecar ``ab/abcdef….json``.

Every write is atomic (temp file in the same directory, fsync, rename, fsync
of the directory). The sidecar is written before the audio, so whoever sees
an audio file (a reader, the replicator) can also find the request that made
it, and a standby can regenerate a missing result. A write that fails (disk
full, read-only, I/O error) leaves neither a temp file nor the sidecar it
wrote first, and raises :class:`~ttsha.errors.StoreError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError, TTSHAError
from .fsutil import atomic_write

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
#: Temp files younger than this are left alone by gc: a writer may still own them.
TEMP_GRACE_S = 3600.0
#: The write probe: about one result's worth, in a temp name watchers ignore.
PROBE_NAME = ".write-probe.tmp"
PROBE_BYTES = 64 * 1024


def normalize_key_text(text: str) -> str:
    """The text as it counts for the id: NFKC, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def result_id(
    *,
    engine: str,
    model_version: str,
    voice: str,
    emotion: str,
    speed: float,
    sample_rate: int,
    text: str,
    lexicon: str = "",
    markup: str = "",
) -> str:
    """The content address of a synthesis request.

    ``lexicon`` is the pronunciation lexicon's fingerprint: a changed reading
    is a new result. Without one the id is what it was before lexicons.
    ``markup`` names the text's markup ("ssml"): an SSML document is a
    different request from the same characters as plain text.
    """
    fields: list[object] = [
        engine, model_version, voice, emotion, round(float(speed), 4), int(sample_rate), normalize_key_text(text)
    ]
    if lexicon:
        fields.append(lexicon)
    if markup:
        fields.append({"markup": markup})
    key = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class StoredResult:
    id: str
    path: Path
    meta: dict[str, Any]


@dataclass(frozen=True)
class GcEntry:
    """A result that gc removes (or would remove, in a dry run)."""

    id: str
    files: tuple[Path, ...]
    bytes: int
    age_s: float


class AudioStore:
    """Results on disk, addressed by :func:`result_id`."""

    def __init__(self, root: Path, min_free: int = 0) -> None:
        self.root = Path(root)
        #: Free bytes below which the node should stop taking writes (see :meth:`space_problem`).
        self.min_free = min_free

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TTSHAError(f"cannot create the audio store {self.root}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TTSHAError(f"the audio store {self.root} is not writable")

    @staticmethod
    def valid_id(result: str) -> bool:
        return bool(ID_PATTERN.match(result))

    def _base(self, result: str) -> Path:
        if not self.valid_id(result):
            raise ValueError(f"not a result id: {result!r}")
        return self.root / result[:2] / result

    def audio_path(self, result: str) -> Path:
        return self._base(result).with_suffix(".wav")

    def meta_path(self, result: str) -> Path:
        return self._base(result).with_suffix(".json")

    def get(self, result: str) -> StoredResult | None:
        """The stored result, or None (unknown or malformed ids are simply absent)."""
        if not self.valid_id(result):
            return None
        audio = self.audio_path(result)
        if not audio.is_file():
            return None
        try:
            meta = json.loads(self.meta_path(result).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        return StoredResult(result, audio, meta)

    def put(self, result: str, wav: bytes, meta: dict[str, Any]) -> StoredResult:
        """Store ``wav`` under ``result``: sidecar first, then audio, both atomically.

        Raises :class:`StoreError` when either cannot be written; what this
        call created is removed again, so no orphan sidecar is left.
        """
        audio, sidecar = self.audio_path(result), self.meta_path(result)
        meta = {**meta, "id": result, "created": meta.get("created", time.time())}
        created: list[Path] = []
        try:
            audio.parent.mkdir(parents=True, exist_ok=True)
            for path, data in ((sidecar, json.dumps(meta, ensure_ascii=False, sort_keys=True)), (audio, wav)):
                existed = path.exists()
                if not existed:
                    created.append(path)
                atomic_write(path, data)
        except OSError as exc:
            # The audio goes before its sidecar, as in gc.
            for path in reversed(created):
                try:
                    path.unlink(missing_ok=True)
                except OSError as cleanup:
                    log.error("cannot remove %s after a failed write: %s", path, cleanup)
            raise StoreError(
                f"cannot write {result} to the audio store {self.root}: {exc.strerror or exc}", errno=exc.errno
            ) from exc
        return StoredResult(result, audio, meta)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still use on the store's filesystem."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def space_problem(self) -> str | None:
        """Why the store is too full to take results, or None."""
        free = self.free_bytes()
        if free < self.min_free:
            return f"audio store has {free} bytes free, below min_free {self.min_free}"
        return None

    def probe_write(self) -> None:
        """Write, sync and remove a result-sized temp file; :class:`StoreError` when that fails."""
        path = self.root / PROBE_NAME
        try:
            try:
                # Buffered: a short write on a nearly full disk goes on to ENOSPC.
                with open(path, "wb") as f:
                    f.write(b"\0" * PROBE_BYTES)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write to the audio store {self.root}: {exc.strerror or exc}",
                             errno=exc.errno) from exc

    def results(self) -> Iterator[tuple[str, list[Path]]]:
        """Every id with its files (audio and/or sidecar)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if not (shard.is_dir() and len(shard.name) == 2):
                continue
            groups: dict[str, list[Path]] = {}
            for path in shard.iterdir():
                if path.suffix in (".wav", ".json") and self.valid_id(path.stem):
                    groups.setdefault(path.stem, []).append(path)
            yield from sorted(groups.items())

    def gc(self, older_than_s: float, dry_run: bool = True, now: float | None = None) -> list[GcEntry]:
        """Results older than ``older_than_s`` (by their newest file), removed unless ``dry_run``.

        Audio goes before its sidecar, so a result is never left as audio
        without the request that made it. Stale temp files of crashed writers
        go too; young ones may belong to a write in progress and stay.
        """
        now = time.time() if now is None else now
        removed: list[GcEntry] = []
        for result, files in self.results():
            try:
                stats = {p: p.stat() for p in files}
            except FileNotFoundError:
                continue  # removed under us
            newest = max(st.st_mtime for st in stats.values())
            age = now - newest
            if age < older_than_s:
                continue
            ordered = tuple(sorted(files, key=lambda p: p.suffix != ".wav"))
            entry = GcEntry(result, ordered, sum(st.st_size for st in stats.values()), age)
            if not dry_run:
                for path in ordered:
                    path.unlink(missing_ok=True)
            removed.append(entry)
        for temp in self.root.glob("*/.*.tmp"):
            try:
                age = now - temp.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > max(TEMP_GRACE_S, older_than_s):
                size = temp.stat().st_size if temp.exists() else 0
                if not dry_run:
                    temp.unlink(missing_ok=True)
                removed.append(GcEntry(temp.name, (temp,), size, age))
        return removed

