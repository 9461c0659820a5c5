"""Atomic file writes, shared by the builder (bundles, manifests) and checkpoint writers."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via ``write(fileobj)`` to a hidden temp name beside ``path``, fsync, then rename.

    Readers see either the old file or the complete new one, never a partial write.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
