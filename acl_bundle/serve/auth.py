"""Who may change weights: one shared bearer token, compared in constant time, never logged.

Updates are off unless the server was given a token file.  Clients present the token
as ``Authorization: Bearer <token>`` (HTTP) or the ``authorization`` metadata key with
the same value (gRPC).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

from .protocol import ServeError

log = logging.getLogger("acl_bundle.serve")

__all__ = ["UpdateAuth", "MAX_TOKEN_FILE_BYTES", "MIN_TOKEN_CHARS"]

MAX_TOKEN_FILE_BYTES = 4096
MIN_TOKEN_CHARS = 16


class UpdateAuth:
    """Decides whether a request may change weights.  ``UpdateAuth(None)`` refuses every update."""

    def __init__(self, token: str | None) -> None:
        self._digest = None if token is None else hashlib.sha256(token.encode()).digest()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None) -> UpdateAuth:
        """Read the token (the file's text, surrounding whitespace stripped); None disables updates."""
        if path is None:
            return cls(None)
        p = Path(path)
        try:
            st = p.stat()
        except OSError as e:
            raise ValueError(f"cannot read the update token file {str(p)!r}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"update token file {str(p)!r} is not a regular file")
        if st.st_size > MAX_TOKEN_FILE_BYTES:
            raise ValueError(f"update token file {str(p)!r} has {st.st_size} bytes; a token file holds one token "
                             f"(at most {MAX_TOKEN_FILE_BYTES} bytes)")
        try:
            token = p.read_bytes()[:MAX_TOKEN_FILE_BYTES].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"update token file {str(p)!r} is not UTF-8 text") from None
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError(f"update token file {str(p)!r} must hold one token of at least {MIN_TOKEN_CHARS} "
                             "printable characters without spaces (e.g. the output of "
                             "'python -c \"import secrets; print(secrets.token_urlsafe(32))\"')")
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("update token file %s is readable by group or others (chmod 600 it)", p)
        return cls(token)

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None) -> None:
        """Raise ServeError 403 (updates disabled) or 401 (missing / wrong token); return if allowed."""
        if self._digest is None:
            raise ServeError(403, "weight updates are disabled on this server (start it with --update-token-file)")
        if not authorization:
            raise ServeError(
                401, "weight updates need 'Authorization: Bearer <token>' (gRPC: 'authorization' metadata)"
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ServeError(401, "the authorization must be of the form 'Bearer <token>'")
        # Hash both sides so the comparison takes the same time whatever the length presented.
        given = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise ServeError(401, "the update token is not valid")
