"""The options of :class:`~acl_bundle.watcher.CheckpointWatcher`, validated once (see its docstring)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import checks as _checks
from .names import Rename

PROTOCOLS = ("auto", "acl_bundle", "tf")


@dataclass(frozen=True)
class WatchOptions:
    """Everything a watcher is told besides its model and directory; a bad value raises at construction."""

    poll_interval: float = 0.5
    rename: Rename = None
    strip_prefix: str | None = None
    allow_partial: bool = False
    allow_unmatched: bool = False
    start_after: int | None = None
    use_watchdog: bool | None = None
    on_apply: Callable[[Any], None] | None = None
    check: _checks.Check | None = _checks.finite
    max_bytes: int | None = None
    allow_step_reset: bool = False
    history_size: int = 100
    golden: _checks.Golden | None = None
    health_check: Callable[[Any], Any] | None = None
    protocol: str = "auto"
    storage_options: Any = None

    def __post_init__(self) -> None:
        p = self.poll_interval
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not p > 0:
            raise ValueError(f"poll_interval must be a positive number of seconds, got {p!r} (finite and > 0)")
        object.__setattr__(self, "poll_interval", float(p))
        s = self.start_after
        if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
            raise TypeError(f"start_after must be an int step or None, got {s!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        if self.check is not None and not callable(self.check):
            raise TypeError(f"check must be a callable(weights) or None, got {type(self.check).__name__}")
        if self.on_apply is not None and not callable(self.on_apply):
            raise TypeError(f"on_apply must be a callable or None, got {type(self.on_apply).__name__}")
        m = self.max_bytes
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_bytes must be a positive int or None, got {m!r}")
        h = self.history_size
        if isinstance(h, bool) or not isinstance(h, int) or h < 0:
            raise ValueError(f"history_size must be a non-negative int, got {h!r}")
        if not isinstance(self.allow_step_reset, bool):
            raise TypeError(f"allow_step_reset must be a bool, got {self.allow_step_reset!r}")
        if self.golden is not None and not isinstance(self.golden, _checks.Golden):
            raise TypeError(f"golden must be an acl_bundle.checks.golden(...) check or None, "
                            f"got {type(self.golden).__name__}")
        if self.health_check is not None and not callable(self.health_check):
            raise TypeError(f"health_check must be a callable(model) or None, got {type(self.health_check).__name__}")

    @property
    def names(self) -> dict[str, Any]:
        """The name-mapping keywords of :func:`~acl_bundle.checkpoint.select_weights`."""
        return {"rename": self.rename, "strip_prefix": self.strip_prefix,
                "allow_partial": self.allow_partial, "allow_unmatched": self.allow_unmatched}
