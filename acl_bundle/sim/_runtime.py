"""The simulated ``acl`` module: assembly, install/uninstall, reset, introspection.

Error codes the simulator returns (U = unconfirmed by the reference, our choice):

=====================================================  ======  ===
situation                                              code    U
=====================================================  ======  ===
any call (not init/get_version/get_recent_err_msg/     100001
  acl.util) before init or after finalize
init twice (no state change)                           100002
init(path) with a missing file                         100003  U
finalize twice                                         100037
finalize without any init                              100001  U
set_device/create_context: device out of range;        107001
  reset_device of a device that is not set
device calls with no live current context              107002
set_context/destroy_context of dead/unknown context;   107000  U
  unknown stream; free/free_host of a pointer that is
  not a live block start (incl. double free)
malloc/malloc_host size <= 0                           100000
malloc beyond configured device_memory                 207001
memcpy: count > dest_max, count < 0, kind not 0..4     100000
memcpy/memset: range not inside ONE live allocation    107000
  or registered region; kind contradicts the real
  direction
dead dataset/data buffer/model desc/tensor desc        100000
  handle (where a ret exists)
load_*: unreadable/missing/directory path              145002  U
load_*: FormatError                                    e.code  U
load_from_file of a bundle / bundle_load of a plain    145000  U
load_from_mem: range not in known memory               107000  U
onnxruntime rejects a graph / onnxruntime missing      545001  U
unload/get_desc/execute of unknown or unloaded id      145003
unload of a bundle-inner id                            100000
bundle_* with unknown bundle id                        148053
bundle_get_model_id index >= num                       100000
execute: dataset/buffer count/size/desc mismatch,      100000
  non-device buffer, update input without desc,
  empty update input on a non-device address
dynamic batch missing/invalid (execute) or not in the  145013
  model's list (set_dynamic_batch_size)
set_dynamic_batch_size/hw_size on a static model       100019
update input with dims != variable shape, or buffer    145021  U
  not covering the variable's bytes
update input desc dtype != variable dtype              145022  U
onnxruntime fails while running                        507011  U
=====================================================  ======  ===

Other choices: bare-value getters return 0 / -1 (types, formats, dims v1) / "" on
error and record the message; get_input_index_by_name unknown -> (0, 100000).
memcpy/memset ranges are the *requested* malloc size (not the padded size).
Descs of update graphs: input i = variable i, named ``<var>_var_data``, dims [-2],
size = the variable's bytes. A 0-d variable is applied by a desc with dims [] (U).
Bundle variables without an init graph are zero-filled (real memory: uninitialised);
malloc'd memory is filled with 0xCD (up to 64 MiB). Streams: stream 0 runs work
synchronously; destroying a stream runs its pending work first. Model ids (plain and
bundle-inner, one counter) and bundle ids both count from 1 and never repeat.
finalize keeps leftover resources alive (they are leaks). get_recent_err_msg is not
cleared by reading.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .. import _constants
from . import _data, _memory, _models, _rt
from . import _state as S
from ._state import LOCK, WORLD, NotImplementedInSimulator

_MODULES: dict[str, types.ModuleType] = {}


def _make_module(name: str, funcs: dict[str, Any], extra: dict[str, Any] | None = None) -> types.ModuleType:
    mod = types.ModuleType(name, f"acl_bundle.sim simulation of pyACL's {name}")
    for k, v in funcs.items():
        setattr(mod, k, v)
    names = sorted(funcs)
    for k, v in (extra or {}).items():
        setattr(mod, k, v)

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NotImplementedInSimulator(f"acl_bundle.sim does not implement {name}.{attr}")

    def __dir__() -> list[str]:
        return list(names) + sorted(extra or {})

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    mod.__dir__ = __dir__  # type: ignore[method-assign]
    return mod


def _build() -> types.ModuleType:
    groups: dict[str, dict[str, Any]] = {"acl": {}, "acl.rt": {}, "acl.mdl": {}, "acl.util": {}}
    for dotted, fn in S.REGISTRY.items():
        mod, _, short = dotted.rpartition(".")
        groups[mod][short] = fn
    util = _make_module("acl.util", groups["acl.util"])
    rt = _make_module("acl.rt", groups["acl.rt"])
    mdl = _make_module("acl.mdl", groups["acl.mdl"])
    consts = {k: v for k, v in vars(_constants).items() if k.startswith("ACL_") and isinstance(v, (int, str))}
    acl = _make_module("acl", groups["acl"], {"rt": rt, "mdl": mdl, "util": util, **consts})
    acl.__path__ = []  # type: ignore[attr-defined]  # a package, so "import acl.rt" works
    _MODULES.update({"acl": acl, "acl.rt": rt, "acl.mdl": mdl, "acl.util": util})
    return acl


acl = _build()

_MISSING = object()
_saved: dict[str, Any] | None = None


def install() -> types.ModuleType:
    """Make ``import acl`` (and acl.rt/mdl/util) return the simulator. Idempotent."""
    global _saved
    if _saved is None:
        _saved = {k: sys.modules.get(k, _MISSING) for k in _MODULES}
    sys.modules.update(_MODULES)
    return acl


def uninstall() -> None:
    """Undo :func:`install`, restoring whatever was in ``sys.modules`` before. Idempotent."""
    global _saved
    if _saved is None:
        return
    for k, v in _saved.items():
        if v is _MISSING:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    _saved = None


def configure(
    *, device_count: int | None = None, run_mode: int | None = None, device_memory: int | None = None
) -> None:
    """Settings that survive reset() until changed (defaults: 2 devices, ACL_HOST, 8 GiB)."""
    with LOCK:
        if device_count is not None:
            S.CONFIG.device_count = int(device_count)
        if run_mode is not None:
            if run_mode not in (_constants.ACL_DEVICE, _constants.ACL_HOST):
                raise ValueError(f"run_mode must be ACL_DEVICE (0) or ACL_HOST (1), not {run_mode}")
            S.CONFIG.run_mode = run_mode
        if device_memory is not None:
            S.CONFIG.device_memory = int(device_memory)


def reset() -> None:
    """Back to a pristine, uninitialised simulator; ids keep increasing."""
    with LOCK:
        S.new_world()
        _memory.clear_regions()
        S.clear_stats_and_faults()
        S.TLS.err = ""


def live_resources() -> dict:
    """Everything explicitly created and still alive."""
    with LOCK:
        return {
            "initialized": WORLD.initialized,
            "devices": dict(WORLD.devices),
            "contexts": list(WORLD.contexts),
            "streams": list(WORLD.streams),
            "device_blocks": {b.ptr: b.size for b in WORLD.device_blocks.values()},
            "host_blocks": {b.ptr: b.size for b in WORLD.host_blocks.values()},
            "datasets": list(WORLD.datasets),
            "data_buffers": list(WORLD.data_buffers),
            "tensor_descs": [t.id for t in WORLD.tensor_descs.values() if not t.owner_ds],
            "model_descs": list(WORLD.model_descs),
            "models": [m.id for m in WORLD.models.values() if m.bundle is None],
            "bundles": list(WORLD.bundles),
        }


def leaks() -> dict:
    """The non-empty entries of :func:`live_resources` (``{}`` means clean)."""
    return {k: v for k, v in live_resources().items() if v}


stats = S.stats
fault = S.fault
record = S.record
variables = _models.variables

_ = (_data, _rt)
