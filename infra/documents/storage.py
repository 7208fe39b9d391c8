"""Content-addressed, atomic storage of compiled documents under the data dir.

A file lives at ``<data_dir>/documents/<sha[:2]>/<sha>.<ext>``, where ``sha`` is the SHA-256 of
its bytes. It is written to a temporary file in the same directory, flushed to disk and renamed
into place, so a reader never sees a partial file and two writers of the same bytes (two
concurrent compiles) end with one complete file. The same bytes always land at the same path:
storing again is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

MEDIA_TYPES: dict[str, str] = {
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Where one rendered file was stored, and what it is."""

    kind: str  # "md", "html" or "pdf": also the file extension
    sha256: str
    size: int
    media_type: str
    path: Path


def documents_dir(data_dir: Path) -> Path:
    """The root of the content-addressed store."""
    return Path(data_dir) / "documents"


def file_path(data_dir: Path, sha: str, kind: str) -> Path:
    """The path a file with this hash and kind has (whether or not it exists)."""
    return documents_dir(data_dir) / sha[:2] / f"{sha}.{kind}"


def store(data_dir: Path, files: dict[str, bytes]) -> dict[str, StoredFile]:
    """Store each file by the SHA-256 of its bytes; atomic, idempotent and safe to race."""
    for kind in files:
        _check_kind(kind)
    stored = {}
    for kind, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        path = file_path(data_dir, sha, kind)
        if not _holds(path, sha, len(data)):
            _write_atomically(path, data)
        stored[kind] = StoredFile(kind, sha, len(data), MEDIA_TYPES[kind], path)
    return stored


def open_file(data_dir: Path, sha: str, ext: str) -> Path | None:
    """The stored file's path, or None if there is none (or the hash or kind is not valid)."""
    if ext not in MEDIA_TYPES or not _SHA256.fullmatch(sha):
        return None
    path = file_path(data_dir, sha, ext)
    return path if path.is_file() else None


def _check_kind(kind: str) -> None:
    if kind not in MEDIA_TYPES:
        raise ValueError(f"unknown document kind {kind!r}; expected one of {sorted(MEDIA_TYPES)}")


def _holds(path: Path, sha: str, size: int) -> bool:
    """True if ``path`` already has exactly these bytes (a damaged file gets rewritten)."""
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha
    except FileNotFoundError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it 0600; web servers must read it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
