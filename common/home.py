"""The embedded home: one user's folder holding all embedded state (database with every feedback row,
objects, broker, logs), so it is created 0700 and its files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def ensure_private_dir(path: Path, tighten: bool = False) -> Path:
    """Create `path` (and missing parents) 0700; with `tighten`, also chmod an existing `path` that is
    ours to 0700 (the home; never a folder the user chose for something else)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass  # a concurrent command made it
    info = path.stat()
    if tighten and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def ensure_private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 unless it exists (SQLite then keeps that mode for its WAL
    and shared-memory files)."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    return path


def open_private_append(path: Path):
    """Open a log file for appending, created 0600."""
    ensure_private_dir(Path(path).parent)
    return os.fdopen(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600), "ab")
