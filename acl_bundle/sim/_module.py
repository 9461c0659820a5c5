"""The simulated ``acl`` module (assembly, install/uninstall, reset, introspection) and the
table of the codes it answers with.

Each row names the source that decides it: ``RT:`` hicann/runtime (``src/acl/aclrt_impl/...``
ACL layer, ``src/runtime/...`` runtime core), ``GE:`` hicann/ge, ``DOC:`` the pyACL reference
pages; ``U`` = no source found, our plausible choice.

==========================================================  ======  ==============================================
situation                                                   code    source
==========================================================  ======  ==============================================
no call checks acl.init (rt.*, util.*, descs, datasets,     --      RT: aclrt_impl/toolchain/dump.cpp:106 (dump
  buffers, tensor descs answer before init and after                APIs are the only init-checked paths)
  finalize)
load_*/bundle_load_*/execute*/get_desc before init or       145001  GE: runtime/v1/executor/ge_executor.cc:988,
  after finalize (the GE executor is not initialised)               :1028, :1173, :760 (bundle loads go through
                                                                    gert: U)
init while initialised: reference +1                        100002  RT: aclrt_impl/acl.cpp:388-391
init(path) with a missing file                              100003  U
finalize after finalize (without any init: 0)               100037  RT: acl.cpp:634 (only aclFinalizeFlag)
finalize_reference: count > 1 -> (count-1, 0); 1 ->         100037  RT: acl.cpp:648-683
  finalises, (0, 0); none left -> (0, 100037)
get_recent_err_msg: newest first, cleared by reading,       --      DOC: get_recent_err_msg ("obtains and
  None when there is none                                           clears"); RT: acl.cpp:1311-1313
set_device/create_context: device out of range;             107001  RT: errcode_manage.cc:39 (RT_ERROR_DEVICE_ID);
  reset_device of a device that is not set                          reset: U
device calls with no live current context; get_device,      107002  RT: api_impl.cc CHECK_CONTEXT_VALID (e.g.
  get_context without one                                           :2750 memcpy, :3490 get_device)
destroy_context of a dead/unknown or a default (primary)    107002  RT: api_impl.cc:4134-4137, :4140-4142
  context
set_context(0) / destroy_context(0)                         100000  RT: aclrt_impl/context.cpp:67, :55
set_context of a dead/unknown context                       107000  RT: api_error.cc:3646
a stream of another context in memcpy_async, execute_async, 107003  RT: api_impl.cc:2882, :1584, :2152, :5364
  destroy_stream, record_event, launch_callback,                    (COND_RETURN_AND_MSG_INVALID_CONTEXT_STREAM)
  subscribe_report (synchronize_stream switches context)            sync: api_impl.cc:1719
execute/execute_async of a model loaded in another context  107004  RT: api_impl.cc:4419, :4441
unknown stream/event handle                                 107000  U (a real handle is a pointer)
free/free_host of a pointer that is not a live block start  107000  U
malloc/malloc_host size <= 0                                100000  RT: memory.cpp aclMallocMemInner (U: line)
malloc beyond configured device_memory                      207001  U
memcpy/memcpy_async: count 0 -> 0 before anything else      0       RT: memory.cpp:653, :689
memcpy*: NULL dst/src; kind not 0..5 (the kind is not       100000  RT: memory.cpp:657-658, :162-198
  compared with the addresses: direction from addresses)            DOC: 8.0 memcpy "kind reserved"
memcpy*: dest_max 0 or count > dest_max (sizes as size_t)   107000  RT: api_error.cc:2135-2139 (MemcpyAsync alike)
memcpy: dst == src -> 0, nothing copied                     0       RT: api_error.cc:2144
memcpy/memset: a device-side range not inside ONE live      107000  U (the driver rejects it)
  device allocation; a host-side range not in a malloc_host
  block, registered region or mapped (readable, writable
  for dst) host memory
any use of a malloc_host block after free_host (until      107000  U (our choice: the address stays refused
  malloc_host hands it out again)                                   while its memory is kept, up to 256 MiB)
memset/memset_async: count 0 -> 0 first; NULL dev_ptr       0/100000 RT: aclrt_impl/memory.cpp:674-678, :742-746
memset/memset_async without a current context               107002  RT: api_impl.cc:3205-3206, :3219-3220
memset_async: count > max_count; memset: the same (driver)  107000  RT: api_error.cc:3133-3135; npu_driver_mem.cc
                                                                    :772-784 -> errcode_manage.cc:565, :86
memset_async on a stream of another context                 107003  RT: api_impl.cc:3227-3228
get_aipp_type / get_first_aipp_info: unknown model id;      145003  GE: acl_aipp.cpp:264-276 (VerifyIndex)
  index >= the model's inputs                               100000
get_aipp_type of a model without AIPP: (0, 0xFFFFFFFF, 0)   0       GE: davinci_model.cc:4247-4254
get_first_aipp_info of a model without AIPP: ({}, 145015)   145015  GE: acl_aipp.cpp:510-515
acl.media: dvpp_free of rt.malloc memory / rt.free of       107000  U (each API frees its own)
  dvpp_malloc memory / not a block start
acl.media: a documented DVPP constraint violated at         100000  DOC: pyACL DVPP V1 pages ("non-zero"); the
  submission (channel not created, dead desc/config, not            value U -- see _media.py for each rule and
  dvpp_malloc memory, odd size, stride alignment, buffer            its page
  size, crop/paste offsets, area sizes, ratio, roi_nums)
acl.media: JPEG the decoder does not support (progressive,  148052  RT: acl_base_rt.h:119; GE docs aclError.md:73
  not a JPEG, CMYK, outside 32x32..8192x8192)                       (decode: at stream sync and in ret_code)
acl.media: a documented format the simulator does not       raise   NotImplementedInSimulator (not a device code)
  implement (VPC/JPEGE other than YUV420SP NV12/NV21)
get_mem_info attr outside 0..17 (aclrtMemAttr)              107016  RT: api_error.cc:3185-3188
dead dataset/data buffer/model desc/tensor desc handle      100000  U (NULL checks answer 100000)
  (where a ret exists); create_data_buffer(0, n) succeeds           RT: data_buffer.cpp:60-66
load_*: unreadable/missing/directory path                   145002  GE: ge_executor.cc:994-1001
load_*: FormatError                                         e.code  U (see format.py)
load_from_file of a bundle / bundle_load of a plain         145000  U
load_from_mem: range not in valid memory                    107000  U
onnxruntime rejects a graph / onnxruntime missing           545001  U
unload/get_desc/execute of unknown or unloaded id           145003  GE: model_manager.cc:645
unload of a bundle-inner id                                 100000  GE: api/acl/acl_model/model/model.cpp:1758-1760
bundle_* with unknown bundle id                             148053  GE: acl_resource_manager.cpp:63
bundle_get_model_id index >= num                            100000  GE: model.cpp aclmdlBundleGetModelIdImpl
execute: dataset/buffer count/size/desc mismatch,           100000  U
  non-device buffer, update input without desc,
  empty update input on a non-device address
dynamic gear missing/invalid at execute, not one of the     145013  GE: ge_executor.cc:411, :470, :542
  model's gears, or a gear of another kind (set_dynamic_*)
set_dynamic_*: value 0, no buffer at index, index not the   100000  GE: model.cpp:1845, :1851-1861, :1886, :1925;
  ascend_mbatch_shape_data input (ours)                             index check: U
set_dynamic_* buffer < 4 B per value; set_input_dynamic_    145012  GE: ge_executor.cc:385, :444, :557 (length),
  dims count != all input dims or a static dim differs              :618-626 (GetCurDynamicDims)
set_dynamic_* on a static model                             100019  U
get_input_dynamic_gear_count/_dims index != -1 or           100000  GE: model_om2.cpp:1851, :1880, :1885
  gear_count < the model's
update input with dims != variable shape, or buffer         145021  U
  not covering the variable's bytes
update input desc dtype != variable dtype                   145022  U
onnxruntime fails while running                             507011  U
launch_callback block_type not 0/1; process_report timeout  100000  RT: aclrt_impl/callback.cpp:163-166, :189-192
  < -1 or 0
launch_callback on a stream no thread is subscribed to      107015  RT: api_impl.cc:5366-5367
subscribe_report of a subscribed stream; unsubscribe of a   107011  RT: core/src/utils/subscribe.cc:76, :194
  stream with no thread
process_report in a thread without subscription;            107012  RT: subscribe.cc:416, :202
  unsubscribe by another thread id
process_report: nothing within the timeout                  507012  RT: errcode_manage.cc:326, callback.cpp:197
==========================================================  ======  ==============================================

Other choices: bare-value getters return 0 / -1 (types, formats, dims v1) / "" on
error and record the message; get_input_index_by_name unknown -> (0, 100000).
memcpy/memset ranges are the *requested* malloc size (not the padded size).
Descs of update graphs: input i = variable i, named ``<var>_var_data``, dims [-2],
size = the variable's bytes. A 0-d variable is applied by a desc with dims [] (U).
Bundle variables without an init graph are zero-filled (real memory: uninitialised);
malloc'd memory is filled with 0xCD (up to 64 MiB). Streams: work queued on a
stream (memcpy_async, memset_async, execute_async, DVPP, callbacks, event records), the
default stream 0 included, runs in stream order only when something waits for it:
synchronize_stream / synchronize_device, synchronize_event or query_event (up to the
event), a subscribed thread's process_report (up to its callback, which it then runs), or
the stream's, its context's or its device's teardown; a client that reads without waiting
sees the old bytes, as on a device. Synchronous calls (memcpy, memset, execute) wait for no
stream (U: the device's streams progress on their own; the simulator's when waited for).
Model ids (plain and bundle-inner, one counter) and bundle ids both count from 1 and never
repeat. finalize keeps leftover resources alive (they are leaks). ``acl.ACL_*`` names are not
offered: real pyACL does not document them and Ascend's samples define their own (see :mod:`acl_bundle._constants`).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .. import _constants
from . import _aipp, _callbacks, _data, _events, _mdl, _media, _memory, _rt
from . import _state as S
from ._arena import ARENA
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
        if attr.startswith("ACL_"):
            raise AttributeError(
                f"{name}.{attr}: pyACL does not export its constants as module attributes (Ascend's samples "
                "define their own); use the value, or acl_bundle._constants"
            )
        raise NotImplementedInSimulator(f"acl_bundle.sim does not implement {name}.{attr}")

    def __dir__() -> list[str]:
        return list(names) + sorted(extra or {})

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    mod.__dir__ = __dir__  # type: ignore[method-assign]
    return mod


def _build() -> types.ModuleType:
    groups: dict[str, dict[str, Any]] = {"acl": {}, "acl.rt": {}, "acl.mdl": {}, "acl.util": {}, "acl.media": {}}
    for dotted, fn in S.REGISTRY.items():
        mod, _, short = dotted.rpartition(".")
        groups[mod][short] = fn
    util = _make_module("acl.util", groups["acl.util"])
    rt = _make_module("acl.rt", groups["acl.rt"])
    mdl = _make_module("acl.mdl", groups["acl.mdl"])
    media = _make_module("acl.media", groups["acl.media"])
    acl = _make_module("acl", groups["acl"], {"rt": rt, "mdl": mdl, "util": util, "media": media})
    acl.__path__ = []  # a package, so "import acl.rt" works
    _MODULES.update({"acl": acl, "acl.rt": rt, "acl.mdl": mdl, "acl.util": util, "acl.media": media})
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
    *,
    device_count: int | None = None,
    run_mode: int | None = None,
    device_memory: int | None = None,
    soc_name: str | None = None,
) -> None:
    """Settings that survive reset() until changed (defaults: 2 devices, ACL_HOST, 8 GiB, "Ascend310P3")."""
    with LOCK:
        if device_count is not None:
            S.CONFIG.device_count = int(device_count)
        if run_mode is not None:
            if run_mode not in (_constants.ACL_DEVICE, _constants.ACL_HOST):
                raise ValueError(f"run_mode must be ACL_DEVICE (0) or ACL_HOST (1), not {run_mode}")
            S.CONFIG.run_mode = run_mode
        if device_memory is not None:
            S.CONFIG.device_memory = int(device_memory)
        if soc_name is not None:
            S.CONFIG.soc_name = str(soc_name)


def reset() -> None:
    """Back to a pristine, uninitialised simulator; ids keep increasing."""
    with LOCK:
        S.new_world()
        _memory.clear_regions()
        ARENA.release_all()
        S.clear_stats_and_faults()
        S.TLS.errs = []
        _callbacks.REPORTS.notify_all()  # waiting process_report calls see the new world


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
            "events": list(WORLD.events),
            "dvpp_descs": [h for h, o in WORLD.media.items() if not getattr(o, "batch", 0)],
            "threads": list(WORLD.threads),
        }


def leaks() -> dict:
    """The non-empty entries of :func:`live_resources` (``{}`` means clean)."""
    return {k: v for k, v in live_resources().items() if v}


stats = S.stats
fault = S.fault
record = S.record
variables = _mdl.variables

_ = (_aipp, _data, _events, _media, _rt)
