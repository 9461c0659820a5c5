"""Device bundles: build a bundle for a real Ascend NPU with GE's graph API (see docs/device-builder.md).

``acl-bundle build --target ascend`` is this package's command line.  ``precision`` holds GE's
precision modes (shared with the simulator); the builder is imported on first use, so reading
the modes (the command line's help does) imports nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DeviceBuildError", "DeviceBuildUnavailable", "build_device_bundle", "find_cann", "native_tool"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'acl_bundle.device' has no attribute {name!r}")
    return getattr(importlib.import_module(".builder", __name__), name)
