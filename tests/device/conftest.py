"""``pytest -m device``: the wrapper on real pyACL and an NPU, with bundles built by the native builder.

Every test here is marked ``device`` and skips, saying why, unless ``import acl`` works in a fresh
interpreter, ``acl.init`` + ``acl.rt.get_device_count`` see at least one NPU, and the native builder
(``acl_bundle.device``, needs the CANN toolkit, CMake and g++) can build a bundle.  The probe runs
in a subprocess so this process initialises ACL only through ``BundleModel``.  Environment:
``ACL_BUNDLE_DEVICE`` (device id, default 0), ``ACL_BUNDLE_SOC_VERSION`` (default: ``acl.get_soc_name()``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

_PROBE = r"""
import json
out = {}
try:
    import acl
except Exception as e:
    out["skip"] = f"pyACL is not importable here (import acl: {type(e).__name__}: {e})"
else:
    ret = acl.init()
    if ret not in (0, 100002):
        out["skip"] = f"acl.init() returned {ret}"
    else:
        count, ret = acl.rt.get_device_count()
        if ret != 0 or count < 1:
            out["skip"] = f"no NPU visible (acl.rt.get_device_count() returned count {count}, ret {ret})"
        else:
            out["count"] = count
            soc = getattr(acl, "get_soc_name", None)
            out["soc"] = soc() if soc else None
        acl.finalize()
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Device:
    acl: Any
    device_id: int
    soc_version: str


@pytest.fixture(scope="session")
def device() -> Device:
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], check=False, capture_output=True, text=True, timeout=120)
        lines = r.stdout.strip().splitlines()
        probe = json.loads(lines[-1]) if lines else {"skip": f"probe failed: {r.stderr[-300:]}"}
    except (subprocess.TimeoutExpired, ValueError) as e:
        probe = {"skip": f"probing pyACL failed ({type(e).__name__})"}
    if "skip" in probe:
        pytest.skip(f"device tests need an Ascend NPU: {probe['skip']}")
    device_id = int(os.environ.get("ACL_BUNDLE_DEVICE", "0"))
    if device_id >= probe["count"]:
        pytest.skip(f"ACL_BUNDLE_DEVICE={device_id} but only {probe['count']} NPU(s) are visible")
    soc = os.environ.get("ACL_BUNDLE_SOC_VERSION") or probe.get("soc")
    if not soc:
        pytest.skip("set ACL_BUNDLE_SOC_VERSION (the chip, as `npu-smi info` names it, e.g. Ascend310P3): "
                    "this pyACL has no acl.get_soc_name()")
    import acl  # the real one: the probe just imported it

    return Device(acl, device_id, soc)


@pytest.fixture(scope="session")
def device_bundles(device: Device, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Bundles of models.mlp built by the native builder: GE's default precision, fp32-kept, and dynamic batch."""
    import onnx

    from acl_bundle import device as device_builder
    from acl_bundle.sim import models

    tmp = tmp_path_factory.mktemp("device")
    model, weights = models.mlp((8, 16, 4), seed=3)
    src = tmp / "mlp.onnx"
    onnx.save(model, str(src))
    out: dict[str, Any] = {"weights": weights, "onnx": src}
    try:
        for key, kwargs in {"default": {}, "fp32": {"precision_mode": "must_keep_origin_dtype"},
                            "batch": {"batch_sizes": [1, 4, 8]}}.items():
            om, _man, _ = device_builder.build_device_bundle(src, tmp / f"{key}.om", soc_version=device.soc_version,
                                                             **kwargs)
            out[key] = om
    except device_builder.DeviceBuildUnavailable as e:
        pytest.skip(f"device tests build their bundles with the native builder: {e}")
    return out
