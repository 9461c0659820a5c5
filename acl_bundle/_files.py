"""Atomic file writes, shared by the builder (bundles, manifests) and checkpoint writers."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

#: Hidden temp names are ``.<final name>.<TEMP_TAG_CHARS hex chars>.tmp`` (checkpoint cleanup matches them).
TEMP_SUFFIX = ".tmp"
TEMP_TAG_CHARS = 12


def temp_name(final: str) -> str:
    """A fresh hidden temp name beside ``final`` (see :data:`TEMP_SUFFIX`)."""
    return f".{final}.{secrets.token_hex(TEMP_TAG_CHARS // 2)}{TEMP_SUFFIX}"


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via ``write(fileobj)`` to a hidden temp name beside ``path``, fsync, then rename.

    Readers see either the old file or the complete new one, never a partial write.
    The file gets the mode ``open()`` would give it (0666 minus the umask, so a server
    running as another user can read it; ``tempfile.mkstemp`` would force 0600).
    Errors are ``OSError`` naming ``path`` (never the temp name); the temp file is
    removed on every failure.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.parent / temp_name(path.name)
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as open() does
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _named(e, path) from e
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"cannot create a temp file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise


def _named(e: OSError, path: Path) -> OSError:
    """The same kind of OSError, about ``path`` instead of a temp name."""
    return type(e)(e.errno, e.strerror or str(e), str(path)) if e.errno else OSError(f"{path}: {e}")


def package_root() -> str:
    """The directory holding the imported ``acl_bundle`` package: the working directory for child interpreters.

    A child started with ``python -c`` / ``-m`` puts its working directory first on ``sys.path``; run from the
    folder holding a clone named ``acl_bundle``, that folder's ``acl_bundle`` (the clone, a namespace package)
    shadows the installed one (``cannot import name '__version__'``).  From here the child imports this tree.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
