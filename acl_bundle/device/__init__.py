"""Device bundles: build a bundle for a real Ascend NPU with GE's graph API (see docs/device-builder.md).

``acl-bundle build --target ascend`` is this package's command line.
"""
from __future__ import annotations

from .builder import DeviceBuildError, DeviceBuildUnavailable, build_device_bundle, find_cann, native_tool

__all__ = ["DeviceBuildError", "DeviceBuildUnavailable", "build_device_bundle", "find_cann", "native_tool"]
