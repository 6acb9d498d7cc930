"""Small file helpers: atomic writes, private folders, fsync."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Run folders may hold metrics and weights of unpublished work: user and group only.
DIR_MODE = 0o750


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and every missing parent with DIR_MODE (``mkdir(parents=True, mode=...)`` gives the
    mode to the last component only: a checkpoint's ``.tmp-step-N/`` made as the parent of its ``rng/``
    was world-readable). Existing folders keep their mode."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True, mode=DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of either (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
