"""BundleModel: load an Ascend bundle model once, update its weights live, serve inference.

Concurrency model (what runs at the same time and what is serialised):

* ``infer`` calls run concurrently with each other (up to ``max_concurrency`` per
  batch size, each on its own pre-built buffers) and with the *stage* phase of an
  update.  Each holds the shared side of a reader/writer lock while it uses its
  buffers (copy in, execute, copy out: microseconds to a few ms).
* ``update`` has two phases.  *Stage* validates the new weights and copies them
  host->device into the update graph's own input buffers; inference keeps running.
  *Commit* executes the update graph under the exclusive side of the lock: it waits
  for in-flight infer calls to end and holds new ones back until it is done.  The lock
  is phase-fair: infer calls already waiting when a commit ends go before the next one.
  That is the only pause inference sees, and it is why no ``infer`` ever observes a
  half-applied update.  Concurrent ``update`` calls are serialised.
* ``close`` refuses new calls, waits for in-flight calls to finish, then releases
  everything in reverse order of acquisition.

Device memory the wrapper itself costs (besides the bundle's variables, which ACL
allocates at load): one staging buffer per variable, the same size as the variable
(the update graph needs a valid device buffer for every variable on every call), plus
per batch size and per concurrent infer slot the model's input and output buffers at
the size the model reports for them (its largest batch's).
``BundleModel.device_bytes`` reports the total.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from . import _backend
from ._constants import (
    ACL_DYNAMIC_TENSOR_NAME,
    ACL_FORMAT_ND,
    ACL_HOST,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_TO_NUMPY,
    NUMPY_TO_ACL,
    error_name,
)
from ._errors import AclCleanupWarning, AclError, ModelClosedError, UnknownVariableError, check, recent_error, unwrap
from ._manifest import ManifestArg, ManifestVariable, manifest_path, read_manifest

log = logging.getLogger("acl_bundle")

VAR_SUFFIX = "_var_data"  # GE names update-graph input i "<const>_var_data" (reference §5.3)
NULL_HANDLE = 200000  # create_* calls return a bare 0 on failure; we report ACL_ERROR_BAD_ALLOC

_EMPTY, _FULL, _CUSTOM = 0, 1, 2  # which tensor desc is attached to an update input


@dataclass(frozen=True)
class TensorInfo:
    """A data input or output of the infer graph. ``shape[0] == -1`` marks a dynamic batch dim."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in self.shape)


@dataclass(frozen=True)
class Variable:
    """An updatable weight. ``shape`` is None when neither a manifest nor the bundle tells it."""

    index: int
    name: str
    shape: tuple[int, ...] | None
    dtype: np.dtype
    nbytes: int


class _Resources:
    """Every ACL handle one model acquired, with its release step, in acquisition order.

    Kept apart from :class:`BundleModel` so that ``weakref.finalize`` can release
    them at interpreter exit without referencing the model object.
    """

    def __init__(self, acl: Any) -> None:
        self.acl = acl
        self.context = 0
        self.undo: list[tuple[str, Callable[[], Any]]] = []
        # In-flight public calls; close() and the exit-time finalizer wait for them.
        self.cond = threading.Condition(threading.Lock())
        self.ops = 0
        self.closed = False

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new calls and wait for in-flight ones; False if they outlast ``timeout``."""
        with self.cond:
            self.closed = True
            return self.cond.wait_for(lambda: self.ops == 0, timeout)

    def push(self, name: str, fn: Callable[[], Any]) -> None:
        self.undo.append((name, fn))

    def release(self) -> list[str]:
        """Release everything in reverse order; return problems instead of raising."""
        problems: list[str] = []
        if self.context:
            ret = self.acl.rt.set_context(self.context)
            if ret != 0:
                problems.append(f"acl.rt.set_context returned {ret} ({error_name(ret)})")
        while self.undo:
            name, fn = self.undo.pop()
            try:
                ret = fn()
            except Exception as e:  # keep releasing the rest
                problems.append(f"{name} raised {e!r}")
                continue
            if isinstance(ret, list):  # _backend.release reports a list of AclError
                problems.extend(str(e) for e in ret)
            elif ret not in (0, None):
                problems.append(f"{name} returned {ret} ({error_name(ret)}){_detail(self.acl)}")
        self.context = 0
        return problems


def _detail(acl: Any) -> str:
    msg = recent_error(acl)
    return f": {msg}" if msg else ""


class _Slot:
    """Pre-built infer I/O for one batch size: device buffers, data buffers, datasets."""

    __slots__ = ("batch", "in_ds", "out_ds", "inputs", "outputs")

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.in_ds = 0
        self.out_ds = 0
        self.inputs: list[tuple[int, int]] = []  # (device ptr, size) per data input
        self.outputs: list[tuple[int, int, tuple[int, ...], np.dtype]] = []


class BundleModel:
    """A loaded Ascend bundle model (infer + optional init + update graphs sharing variables).

    ::

        with BundleModel("bundle.om") as m:
            m.update({1: new_w})          # by index or by variable name
            y = m.infer(x)                # numpy in, numpy out

    Parameters
    ----------
    path: the bundle ``.om`` file (``acl.mdl.bundle_load_from_file``).
    device_id: Ascend device to run on.
    acl: the ``acl`` module to use; None = pyACL if importable, else the simulator when
        ``ACL_BUNDLE_BACKEND=sim``.
    run_init: run the init graph at load (sets every variable to its built-in value).
    init_inputs: arrays for an init graph that declares inputs (in input order).
    manifest: variable shapes. None = ``<bundle>.manifest.json`` beside ``path`` if it
        exists; a path or mapping = use that; False = ignore manifests.
    roles: ``{"infer": i, "update": j[, "init": k]}`` bundle indexes, for bundles whose
        graph order is not the standard [infer, init, update].
    max_concurrency: infer calls that may run at once per batch size (each has its own
        device buffers).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device_id: int = 0,
        acl: Any = None,
        run_init: bool = True,
        init_inputs: Sequence[np.ndarray] | None = None,
        manifest: ManifestArg = None,
        roles: Mapping[str, int] | None = None,
        max_concurrency: int = 2,
    ) -> None:
        self._res: _Resources | None = None  # read by close(); set before anything can fail
        self._closed = True
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"bundle file {path!r} does not exist or is not a file")
        if manifest is None:
            auto = manifest_path(path)
            manifest = auto if auto.is_file() else False
        self._open(
            lambda acl: unwrap(acl, "acl.mdl.bundle_load_from_file", acl.mdl.bundle_load_from_file(path)),
            path, device_id, acl, run_init, init_inputs, manifest, roles, max_concurrency,
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        device_id: int = 0,
        acl: Any = None,
        run_init: bool = True,
        init_inputs: Sequence[np.ndarray] | None = None,
        manifest: ManifestArg = None,
        roles: Mapping[str, int] | None = None,
        max_concurrency: int = 2,
    ) -> BundleModel:
        """Load a bundle from bytes in host memory (``acl.mdl.bundle_load_from_mem``)."""
        if not isinstance(data, bytes):
            raise TypeError(f"from_bytes expects bytes, got {type(data).__name__}")
        if not data:
            raise ValueError("from_bytes got an empty bytes object")
        self = cls.__new__(cls)
        self._res = None
        self._closed = True

        def load(acl: Any) -> int:
            ptr = acl.util.bytes_to_ptr(data)
            return unwrap(acl, "acl.mdl.bundle_load_from_mem", acl.mdl.bundle_load_from_mem(ptr, len(data)))

        self._open(load, "<bytes>", device_id, acl, run_init, init_inputs, manifest or False, roles, max_concurrency)
        return self

    # ------------------------------------------------------------------ load
    def _open(
        self,
        load: Callable[[Any], int],
        source: str,
        device_id: int,
        acl: Any,
        run_init: bool,
        init_inputs: Sequence[np.ndarray] | None,
        manifest: ManifestArg,
        roles: Mapping[str, int] | None,
        max_concurrency: int,
    ) -> None:
        if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
            raise ValueError(f"device_id must be a non-negative int, got {device_id!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        manifest_vars = None if manifest is False else read_manifest(manifest)  # type: ignore[arg-type]
        acl = _backend.resolve_acl(acl)
        self._acl = acl
        self._source = source
        self._device_id = device_id
        self._max_concurrency = max_concurrency
        res = _Resources(acl)
        self._res = res
        self._finalizer = weakref.finalize(self, _release_quietly, res)
        try:
            self._load(load, res, run_init, init_inputs, manifest_vars, roles)
        except BaseException as e:
            problems = self._finalizer()
            for p in problems or ():
                if hasattr(e, "add_note"):
                    e.add_note(f"while unwinding: {p}")
            raise
        self._closed = False
        log.info(
            "loaded bundle %s on device %d: model ids %s, %d variables, init %s",
            source, device_id, self.model_ids, len(self.variables), "run" if (self.has_init and run_init) else "skipped",
        )

    def _load(
        self,
        load: Callable[[Any], int],
        res: _Resources,
        run_init: bool,
        init_inputs: Sequence[np.ndarray] | None,
        manifest_vars: list[ManifestVariable] | None,
        roles: Mapping[str, int] | None,
    ) -> None:
        acl, dev = self._acl, self._device_id
        _backend.acquire(acl, dev)
        res.push("acl_bundle runtime release", lambda: _backend.release(acl, dev))
        ctx = unwrap(acl, "acl.rt.create_context", acl.rt.create_context(dev))
        res.context = ctx
        res.push("acl.rt.destroy_context", lambda: acl.rt.destroy_context(ctx))
        run_mode = unwrap(acl, "acl.rt.get_run_mode", acl.rt.get_run_mode())
        # In device run mode the application's own memory is device memory (reference §1).
        self._h2d = ACL_MEMCPY_HOST_TO_DEVICE if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        self._d2h = ACL_MEMCPY_DEVICE_TO_HOST if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        # pyACL marks numpy_to_ptr "to be deprecated"; any host address is valid to real ACL.
        self._host_ptr = getattr(acl.util, "numpy_to_ptr", None) or _array_address

        bundle_id = load(acl)
        res.push("acl.mdl.bundle_unload", lambda: acl.mdl.bundle_unload(bundle_id))
        self.bundle_id: int = bundle_id
        n = unwrap(acl, "acl.mdl.bundle_get_model_num", acl.mdl.bundle_get_model_num(bundle_id))
        if n not in (2, 3):
            raise ValueError(f"a bundle must hold 2 (infer, update) or 3 (infer, init, update) graphs; this one holds {n}")
        ids = [unwrap(acl, "acl.mdl.bundle_get_model_id", acl.mdl.bundle_get_model_id(bundle_id, i)) for i in range(n)]
        descs = [self._create(res, "acl.mdl.create_desc", acl.mdl.create_desc, acl.mdl.destroy_desc) for _ in ids]
        for d, mid in zip(descs, ids):
            check(acl, "acl.mdl.get_desc", acl.mdl.get_desc(d, mid))
        infer_i, init_i, update_i = self._roles(descs, roles)
        self.model_ids: dict[str, int] = {"infer": ids[infer_i], "update": ids[update_i]}
        if init_i is not None:
            self.model_ids["init"] = ids[init_i]
        self.has_init: bool = init_i is not None
        self._describe_infer(descs[infer_i])
        self._describe_variables(descs[update_i], manifest_vars)
        self._build_update_io(res, descs[update_i])
        self._device_bytes_fixed = self._device_bytes
        if init_i is not None and run_init:
            self._run_init(descs[init_i], init_inputs)
        elif init_inputs is not None:
            raise ValueError("init_inputs given but the init graph is not run (no init graph, or run_init=False)")

        # Reader/writer state for the weights, under the same condition as the slots:
        # an infer is a reader from taking its slot to returning it; a commit is the writer
        # and is preferred (new infers wait while one is waiting).
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._admit = 0  # readers admitted ahead of the next commit
        self._update_lock = threading.Lock()
        self._slot_cond = res.cond  # one condition: slot waiters, in-flight count, close()
        self._free_slots: dict[int, list[_Slot]] = {}
        self._slot_count: dict[int, int] = {}
        self._slot_waiters = 0
        self._build_lock = threading.Lock()
        self._infer_id = self.model_ids["infer"]
        self._version = 0
        self._n_infer = 0
        self._stats: dict[str, Any] = {
            "updates": 0, "failed_updates": 0, "update_bytes": 0,
            "stage_seconds": 0.0, "commit_seconds": 0.0, "last_update": None,
        }

    def _create(self, res: _Resources, name: str, create: Callable[[], int], destroy: Callable[[int], Any]) -> int:
        handle = create()
        if not handle:
            raise AclError(name, NULL_HANDLE, "returned a NULL handle" + _detail(self._acl))
        res.push(name.replace("create", "destroy"), lambda: destroy(handle))
        return handle

    def _malloc(self, res: _Resources, size: int) -> int:
        acl = self._acl
        ptr = unwrap(acl, "acl.rt.malloc", acl.rt.malloc(max(size, 1), ACL_MEM_MALLOC_HUGE_FIRST))
        res.push("acl.rt.free", lambda: acl.rt.free(ptr))
        self._device_bytes += max(size, 1)
        return ptr

    def _dataset(self, res: _Resources, buffers: Sequence[tuple[int, int]]) -> int:
        """Create a dataset holding one data buffer per ``(ptr, size)``."""
        acl = self._acl
        ds = self._create(res, "acl.mdl.create_dataset", acl.mdl.create_dataset, acl.mdl.destroy_dataset)
        for ptr, size in buffers:
            db = self._create(
                res, "acl.create_data_buffer", partial(acl.create_data_buffer, ptr, size), acl.destroy_data_buffer
            )
            unwrap(acl, "acl.mdl.add_dataset_buffer", acl.mdl.add_dataset_buffer(ds, db))
        return ds

    def _roles(self, descs: list[int], roles: Mapping[str, int] | None) -> tuple[int, int | None, int]:
        n = len(descs)
        if roles is not None:
            extra = set(roles) - {"infer", "init", "update"}
            idx = [roles.get(k) for k in ("infer", "init", "update")]
            given = [i for i in idx if i is not None]
            if extra or idx[0] is None or idx[2] is None or sorted(given) != list(range(n)):
                raise ValueError(
                    f"roles must map 'infer', 'update' (and 'init' for 3 graphs) to the distinct indexes 0..{n - 1}; got {dict(roles)}"
                )
            return idx[0], idx[1], idx[2]  # type: ignore[return-value]
        looks = [self._looks_like_update(d) for d in descs]
        if n == 3:
            # The standard layout [infer, init, update] is fixed (reference §5.2); check it.
            if not looks[2] or looks[0]:
                raise ValueError("graph 2 of this bundle does not look like an update graph; pass roles=")
            return 0, 1, 2
        if looks.count(True) != 1:
            raise ValueError(
                "cannot tell the infer graph from the update graph of this 2-graph bundle by their "
                "descriptions; pass roles={'infer': i, 'update': j}"
            )
        u = looks.index(True)
        return 1 - u, None, u

    def _looks_like_update(self, desc: int) -> bool:
        """An update graph has no outputs and one ``*_var_data`` input per variable."""
        mdl = self._acl.mdl
        n_in = mdl.get_num_inputs(desc)
        return (
            n_in > 0
            and mdl.get_num_outputs(desc) == 0
            and all(mdl.get_input_name_by_index(desc, i).endswith(VAR_SUFFIX) for i in range(n_in))
        )

    def _tensor(self, desc: int, i: int, output: bool) -> tuple[TensorInfo, int]:
        mdl = self._acl.mdl
        kind = "output" if output else "input"
        get_dims = mdl.get_output_dims if output else mdl.get_input_dims
        dims = unwrap(self._acl, f"acl.mdl.get_{kind}_dims", get_dims(desc, i))
        name = (mdl.get_output_name_by_index if output else mdl.get_input_name_by_index)(desc, i)
        acl_dt = (mdl.get_output_data_type if output else mdl.get_input_data_type)(desc, i)
        size = (mdl.get_output_size_by_index if output else mdl.get_input_size_by_index)(desc, i)
        if acl_dt not in ACL_TO_NUMPY:
            raise ValueError(f"{kind} {name!r} has ACL data type {acl_dt}, which acl_bundle cannot map to numpy")
        shape = tuple(int(d) for d in dims["dims"][: dims["dimCount"]])
        return TensorInfo(name, shape, ACL_TO_NUMPY[acl_dt]), size

    def _describe_infer(self, desc: int) -> None:
        acl = self._acl
        info = unwrap(acl, "acl.mdl.get_dynamic_batch", acl.mdl.get_dynamic_batch(desc))
        batches = sorted(int(b) for b in info["batch"][: info["batchCount"]])
        self._mb_index: int | None = None
        if batches:  # ATC adds an input that carries the batch size (reference §3)
            self._mb_index = unwrap(acl, "acl.mdl.get_input_index_by_name",
                                    acl.mdl.get_input_index_by_name(desc, ACL_DYNAMIC_TENSOR_NAME))
            self._mb_size = acl.mdl.get_input_size_by_index(desc, self._mb_index)
        self.batch_sizes: tuple[int, ...] = tuple(batches)
        self._infer_desc = desc
        n_in = acl.mdl.get_num_inputs(desc)
        ins = [self._tensor(desc, i, False) for i in range(n_in) if i != self._mb_index]
        outs = [self._tensor(desc, i, True) for i in range(acl.mdl.get_num_outputs(desc))]
        if batches:
            # Output dims are documented as those of the largest batch ("maximum profile");
            # the batch dim is dim 0 (ATC --dynamic_batch_size). -1 marks it publicly; each
            # batch size's real dims come from get_cur_output_dims when its buffers are built.
            outs = [(TensorInfo(t.name, (-1,) + t.shape[1:], t.dtype) if t.shape and t.shape[0] in (-1, batches[-1]) else t, n)
                    for t, n in outs]
        self.inputs: tuple[TensorInfo, ...] = tuple(t for t, _ in ins)
        self.outputs: tuple[TensorInfo, ...] = tuple(t for t, _ in outs)
        # Reported byte sizes (the largest batch's): every batch size's buffers get this much.
        self._in_sizes = [n for _, n in ins]
        self._out_sizes = [n for _, n in outs]
        if not self.outputs:  # also catches a runtime whose bare getter failed (it answers 0)
            raise ValueError("the infer graph reports no outputs; is this bundle's graph order [infer, init, update]? pass roles=")
        for t in self.inputs + self.outputs:
            bad = [d for d in t.shape if d < 0 and not (d == -1 and batches and t.shape[0] == -1)]
            if bad or any(d == -1 for d in t.shape[1:]):
                raise ValueError(f"tensor {t.name!r} has dynamic dims {t.shape}; only dynamic batch (dim 0) is supported")
        # Per input: (dtype, {accepted shape: batch it implies, 0 = none}), so the common
        # case of infer() validates with one dict lookup per input.
        self._accept = [
            (t.dtype, {t.shape_for(b): b for b in batches} if t.shape and t.shape[0] == -1 else {t.shape: 0})
            for t in self.inputs
        ]
        self._default_batch = batches[-1] if batches else 0

    def _describe_variables(self, desc: int, manifest_vars: list[ManifestVariable] | None) -> None:
        n = self._acl.mdl.get_num_inputs(desc)
        raw = []
        for i in range(n):
            info, size = self._tensor(desc, i, False)
            name = info.name[: -len(VAR_SUFFIX)] if info.name.endswith(VAR_SUFFIX) else info.name
            raw.append((name, info.dtype, size, info.shape))
        if manifest_vars is not None:
            problems = []
            if [m.name for m in manifest_vars] != [r[0] for r in raw]:
                problems.append(f"variables {[m.name for m in manifest_vars]} vs bundle {[r[0] for r in raw]}")
            else:
                for m, (name, dt, size, _) in zip(manifest_vars, raw):
                    nbytes = int(np.prod(m.shape, dtype=np.int64)) * m.dtype.itemsize
                    if m.dtype != dt or (size and nbytes != size):
                        problems.append(f"{name!r}: manifest {m.dtype} {m.shape} ({nbytes} B) vs bundle {dt} ({size} B)")
            if problems:
                raise ValueError("manifest does not match the bundle: " + "; ".join(problems))
        variables = []
        for i, (name, dt, size, dims) in enumerate(raw):
            shape: tuple[int, ...] | None
            if manifest_vars is not None:
                shape = manifest_vars[i].shape
                size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            elif all(d >= 0 for d in dims):  # a runtime that does report the shape
                shape = dims
            else:
                shape = None
                if size <= 0:
                    raise ValueError(f"variable {name!r} has unknown shape and size; give a manifest")
            variables.append(Variable(i, name, shape, dt, size))
        self.variables: tuple[Variable, ...] = tuple(variables)
        self._var_by_name = {v.name: v for v in variables}
        if len(self._var_by_name) != len(variables):
            raise ValueError("the update graph names two variables alike")

    def _build_update_io(self, res: _Resources, desc: int) -> None:
        acl = self._acl
        self._device_bytes = 0
        self._staging = [(self._malloc(res, v.nbytes), v.nbytes) for v in self.variables]
        self._update_in = self._dataset(res, self._staging)
        outs = [(self._malloc(res, acl.mdl.get_output_size_by_index(desc, i)), acl.mdl.get_output_size_by_index(desc, i))
                for i in range(acl.mdl.get_num_outputs(desc))]
        self._update_out = self._dataset(res, outs)
        make = acl.create_tensor_desc
        self._empty_desc = [
            self._create(res, "acl.create_tensor_desc", partial(make, NUMPY_TO_ACL[v.dtype], [0], ACL_FORMAT_ND),
                         acl.destroy_tensor_desc)
            for v in self.variables
        ]
        self._full_desc = [
            self._create(res, "acl.create_tensor_desc", partial(make, NUMPY_TO_ACL[v.dtype], list(v.shape), ACL_FORMAT_ND),
                         acl.destroy_tensor_desc) if v.shape is not None else 0
            for v in self.variables
        ]
        for i, td in enumerate(self._empty_desc):
            unwrap(acl, "acl.mdl.set_dataset_tensor_desc", acl.mdl.set_dataset_tensor_desc(self._update_in, td, i))
        self._attached = [_EMPTY] * len(self.variables)
        self._not_empty: set[int] = set()

    def _run_init(self, desc: int, init_inputs: Sequence[np.ndarray] | None) -> None:
        acl = self._acl
        infos = [self._tensor(desc, i, False) for i in range(acl.mdl.get_num_inputs(desc))]
        arrays = list(init_inputs) if init_inputs is not None else []
        if len(arrays) != len(infos):
            raise ValueError(
                f"the init graph takes {len(infos)} inputs {[t.name for t, _ in infos]}; init_inputs has {len(arrays)}"
            )
        arrays = [self._check_array(a, t, f"init input {t.name!r}") for a, (t, _) in zip(arrays, infos)]
        tmp = _Resources(acl)  # released right after the init execution
        try:
            ins = [(self._malloc(tmp, max(a.nbytes, 1)), a.nbytes) for a in arrays]
            for (ptr, size), a in zip(ins, arrays):
                self._memcpy(ptr, size, self._host_ptr(a), a.nbytes, self._h2d)
            outs = [(self._malloc(tmp, s), s) for s in
                    (acl.mdl.get_output_size_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc)))]
            in_ds, out_ds = self._dataset(tmp, ins), self._dataset(tmp, outs)
            check(acl, "acl.mdl.execute", acl.mdl.execute(self.model_ids["init"], in_ds, out_ds))
        finally:
            for p in tmp.release():
                warnings.warn(f"init teardown: {p}", AclCleanupWarning, stacklevel=2)
            self._device_bytes = self._device_bytes_fixed

    # ------------------------------------------------------------------ helpers
    def _memcpy(self, dst: int, dst_max: int, src: int, count: int, kind: int) -> None:
        if count:
            check(self._acl, "acl.rt.memcpy", self._acl.rt.memcpy(dst, dst_max, src, count, kind))

    @staticmethod
    def _check_array(a: Any, t: TensorInfo, what: str, batches: Sequence[int] = ()) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what} must be a numpy.ndarray of {t.dtype}, got {type(a).__name__}")
        if a.dtype != t.dtype:
            raise TypeError(f"{what} must have dtype {t.dtype}, got {a.dtype.str if a.dtype.name == t.dtype.name else a.dtype}; "
                            f"convert it with .astype(numpy.{t.dtype.name})")
        if t.shape and t.shape[0] == -1:
            ok = a.ndim == len(t.shape) and a.shape[1:] == t.shape[1:] and a.shape[0] in batches
            if not ok:
                raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, t.shape[1:]))}) with batch in "
                                 f"{list(batches)}, got {a.shape}")
        elif a.shape != t.shape:
            raise ValueError(f"{what} must have shape {t.shape}, got {a.shape}")
        return _c_contiguous(a)

    def _enter(self) -> None:
        res = self._res
        with self._slot_cond:
            if res.closed:  # type: ignore[union-attr]
                raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
            res.ops += 1  # type: ignore[union-attr]

    def _exit(self) -> None:
        res = self._res
        with self._slot_cond:
            res.ops -= 1  # type: ignore[union-attr]
            if not res.ops:  # type: ignore[union-attr]
                self._slot_cond.notify_all()

    def _context(self) -> None:
        check(self._acl, "acl.rt.set_context", self._acl.rt.set_context(self._res.context))  # type: ignore[union-attr]

    # ------------------------------------------------------------------ infer
    def infer(self, *inputs: Any, return_version: bool = False) -> Any:
        """Run the infer graph on the current weights.

        Give the inputs positionally in ``self.inputs`` order, or one mapping by input
        name.  Returns one new array for a one-output model, else a tuple of arrays in
        ``self.outputs`` order; the arrays belong to the caller.  With
        ``return_version=True`` returns ``(result, version)``: the number of committed
        updates whose weights produced the result.
        """
        if self._closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        arrays, batch = self._check_inputs(inputs)
        res, cond = self._res, self._slot_cond
        with cond:  # one lock round-trip: register the call, become a reader, take a slot
            if self._writer or (self._writers_waiting and not self._admit):
                self._wait_to_read(res, cond)  # type: ignore[arg-type]
            if res.closed:  # type: ignore[union-attr]
                raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
            res.ops += 1  # type: ignore[union-attr]
            self._readers += 1
            free = self._free_slots.get(batch)
            slot = free.pop() if free else None
        try:
            if slot is None:
                slot = self._get_slot(batch)
            outs, version = self._run(slot, arrays)
        finally:
            with cond:  # and one to give it back
                if slot is not None:
                    self._free_slots[batch].append(slot)
                    self._n_infer += 1
                self._readers -= 1
                res.ops -= 1  # type: ignore[union-attr]
                if self._slot_waiters or (not self._readers and self._writers_waiting) or (res.closed and not res.ops):  # type: ignore[union-attr]
                    cond.notify_all()
        result = outs[0] if len(outs) == 1 else tuple(outs)
        return (result, version) if return_version else result

    def _wait_to_read(self, res: _Resources, cond: threading.Condition) -> None:
        """Wait (holding ``cond``) while a commit runs or waits, unless this reader was admitted.

        Phase-fair: the readers waiting when a commit ends go before the next commit, so a
        back-to-back update stream cannot starve inference, nor inference a commit.
        """
        self._readers_waiting += 1
        try:
            while not res.closed and (self._writer or (self._writers_waiting and not self._admit)):
                cond.wait()
        finally:
            self._readers_waiting -= 1
            if self._admit > self._readers_waiting:  # this reader used (or gave up) its admission
                self._admit = self._readers_waiting
                if not self._admit:
                    cond.notify_all()

    def _check_inputs(self, inputs: tuple[Any, ...]) -> tuple[list[np.ndarray], int]:
        if len(inputs) == len(self._accept):  # fast path: exact arrays as the model wants them
            batch = 0
            for a, (dtype, shapes) in zip(inputs, self._accept):
                if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                    break
                b = shapes.get(a.shape)
                if b is None or (b and batch and b != batch):
                    break
                batch = b or batch
            else:
                return list(inputs), batch or self._default_batch
        specs = self.inputs
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            given = inputs[0]
            names = [t.name for t in specs]
            unknown = [k for k in given if k not in names]
            missing = [n for n in names if n not in given]
            if unknown or missing:
                raise KeyError(f"infer inputs by name: unknown {unknown}, missing {missing}; the model's inputs are {names}")
            inputs = tuple(given[n] for n in names)
        if len(inputs) != len(specs):
            raise TypeError(
                f"infer takes {len(specs)} input(s) {[t.name for t in specs]} (positionally or as one mapping), got {len(inputs)}"
            )
        arrays = [self._check_array(a, t, f"input {t.name!r}", self.batch_sizes) for a, t in zip(inputs, specs)]
        batch = 0
        if self.batch_sizes:
            batches = {a.shape[0] for a, t in zip(arrays, specs) if t.shape and t.shape[0] == -1}
            if len(batches) > 1:
                raise ValueError(f"all inputs must share one batch size, got {sorted(batches)}")
            batch = batches.pop() if batches else self.batch_sizes[-1]
        return arrays, batch

    def _run(self, slot: _Slot, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        acl = self._acl
        memcpy, host_ptr, kind = acl.rt.memcpy, self._host_ptr, self._h2d
        ret = acl.rt.set_context(self._res.context)  # type: ignore[union-attr]
        if ret:
            raise AclError("acl.rt.set_context", ret, recent_error(acl))
        for a, (ptr, size) in zip(arrays, slot.inputs):
            if a.nbytes:
                ret = memcpy(ptr, size, host_ptr(a), a.nbytes, kind)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
        ret = acl.mdl.execute(self._infer_id, slot.in_ds, slot.out_ds)  # a reader: no commit runs now
        version = self._version
        if ret:
            raise AclError("acl.mdl.execute", ret, recent_error(acl))
        outs = []
        kind = self._d2h
        for ptr, _size, shape, dtype in slot.outputs:
            out = np.empty(shape, dtype)
            n = out.nbytes
            if n:
                ret = memcpy(host_ptr(out), n, ptr, n, kind)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            outs.append(out)
        return outs, version

    def _get_slot(self, batch: int) -> _Slot:
        with self._slot_cond:
            while True:
                free = self._free_slots.get(batch)
                if free:
                    return free.pop()
                if self._slot_count.get(batch, 0) < self._max_concurrency:
                    break
                self._slot_waiters += 1
                try:
                    self._slot_cond.wait()
                finally:
                    self._slot_waiters -= 1
            self._slot_count[batch] = self._slot_count.get(batch, 0) + 1
            self._free_slots.setdefault(batch, [])
        try:
            return self._new_slot(batch)
        except BaseException:
            with self._slot_cond:
                self._slot_count[batch] -= 1
                self._slot_cond.notify_all()
            raise

    def _new_slot(self, batch: int) -> _Slot:
        """Allocate one batch size's I/O; on failure release what was made, else hand it to the model."""
        acl = self._acl
        self._context()
        tmp = _Resources(acl)
        slot = _Slot(batch)
        try:
            # Buffers take the size the model reports (its largest batch), as ACL's samples
            # do; only the batch's own bytes are copied in and out.
            for t, reported in zip(self.inputs, self._in_sizes):
                size = max(reported, int(np.prod(t.shape_for(batch), dtype=np.int64)) * t.dtype.itemsize)
                slot.inputs.append((self._malloc(tmp, size), size))
            bufs = list(slot.inputs)
            if self._mb_index is not None:
                bufs.insert(self._mb_index, (self._malloc(tmp, self._mb_size), self._mb_size))
            slot.in_ds = self._dataset(tmp, bufs)
            shapes = [t.shape for t in self.outputs]
            if self._mb_index is not None:
                with self._build_lock:  # set + get_cur_output_dims must not interleave with another batch's
                    check(acl, "acl.mdl.set_dynamic_batch_size",
                          acl.mdl.set_dynamic_batch_size(self._infer_id, slot.in_ds, self._mb_index, batch))
                    shapes = [self._cur_output_shape(i) for i in range(len(self.outputs))]
            for t, reported, shape in zip(self.outputs, self._out_sizes, shapes):
                size = max(reported, int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize)
                slot.outputs.append((self._malloc(tmp, size), size, shape, t.dtype))
            slot.out_ds = self._dataset(tmp, [(p, s) for p, s, _, _ in slot.outputs])
        except BaseException as e:
            for p in tmp.release():
                if hasattr(e, "add_note"):
                    e.add_note(f"while unwinding: {p}")
            raise
        self._res.undo.extend(tmp.undo)  # type: ignore[union-attr]
        log.debug("built infer buffers for batch %d", batch)
        return slot

    def _cur_output_shape(self, i: int) -> tuple[int, ...]:
        """Output ``i``'s dims at the batch size just set (``acl.mdl.get_cur_output_dims``)."""
        acl = self._acl
        dims = unwrap(acl, "acl.mdl.get_cur_output_dims", acl.mdl.get_cur_output_dims(self._infer_desc, i))
        shape = tuple(int(d) for d in dims["dims"][: dims["dimCount"]])
        if any(d < 0 for d in shape):
            raise ValueError(f"output {self.outputs[i].name!r} reports dims {shape} for a set batch size")
        return shape

    # ------------------------------------------------------------------ update
    def update(self, weights: Mapping[int | str, np.ndarray]) -> int:
        """Replace some variables; return the new version.

        Keys are variable indexes or names; values are arrays of exactly the
        variable's shape and dtype.  Only the given variables are copied to the
        device; the update graph leaves every other one untouched (empty tensor
        descriptor).  On any error the model keeps serving the previous weights.
        """
        if self._closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        changed = self._check_weights(weights)
        self._enter()
        try:
            with self._update_lock:
                return self._apply(changed)
        finally:
            self._exit()

    def _check_weights(self, weights: Any) -> dict[int, np.ndarray]:
        if not isinstance(weights, Mapping):
            raise TypeError(f"update expects a mapping of variable index or name to numpy array, got {type(weights).__name__}")
        if not weights:
            raise ValueError("update got an empty mapping; name at least one variable")
        changed: dict[int, np.ndarray] = {}
        problems: list[tuple[type, str]] = []
        for key, value in weights.items():
            var = self._variable(key)
            if var is None:
                problems.append((UnknownVariableError, f"unknown variable {key!r}; expected an index 0..{len(self.variables) - 1} "
                                                       f"or one of {list(self._var_by_name)}"))
                continue
            if var.index in changed:
                problems.append((ValueError, f"variable {var.name!r} (index {var.index}) is named twice"))
                continue
            try:
                changed[var.index] = self._check_weight(value, var)
            except (TypeError, ValueError) as e:
                problems.append((type(e), str(e)))
        if problems:
            if len(problems) == 1:
                raise problems[0][0](problems[0][1])
            raise problems[0][0](f"{len(problems)} problems in update: " + "; ".join(m for _, m in problems))
        return changed

    def _variable(self, key: Any) -> Variable | None:
        if isinstance(key, str):
            return self._var_by_name.get(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(self.variables):
            return self.variables[int(key)]
        return None

    @staticmethod
    def _check_weight(a: Any, v: Variable) -> np.ndarray:
        what = f"variable {v.name!r}"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what} needs a numpy.ndarray of {v.dtype}, got {type(a).__name__}")
        if a.dtype != v.dtype:
            raise TypeError(f"{what} is {v.dtype}, got {a.dtype.str if a.dtype.name == v.dtype.name else a.dtype}; "
                            f"cast it with .astype(numpy.{v.dtype.name})")
        if v.shape is not None and a.shape != v.shape:
            raise ValueError(f"{what} has shape {v.shape}, got {a.shape}")
        if v.shape is None and a.nbytes != v.nbytes:
            raise ValueError(f"{what} holds {v.nbytes} bytes of {v.dtype}, got {a.nbytes} bytes (shape {a.shape})")
        return _c_contiguous(a)

    def _apply(self, changed: dict[int, np.ndarray]) -> int:
        acl = self._acl
        t0 = time.perf_counter()
        try:
            self._context()
            nbytes = 0
            for i, a in changed.items():  # stage: inference keeps running
                ptr, size = self._staging[i]
                self._memcpy(ptr, size, self._host_ptr(a), a.nbytes, self._h2d)
                nbytes += a.nbytes
            for i in self._not_empty - changed.keys():
                self._attach(i, _EMPTY, self._empty_desc[i])
            for i, a in changed.items():
                if self._full_desc[i]:
                    self._attach(i, _FULL, self._full_desc[i])
                else:  # shape unknown to the bundle: describe the array as given
                    td = acl.create_tensor_desc(NUMPY_TO_ACL[a.dtype], list(a.shape), ACL_FORMAT_ND)
                    if not td:
                        raise AclError("acl.create_tensor_desc", NULL_HANDLE, "returned a NULL handle" + _detail(acl))
                    try:
                        self._attach(i, _CUSTOM, td)
                    finally:
                        acl.destroy_tensor_desc(td)  # the dataset keeps its own copy (reference §4)
            t1 = time.perf_counter()
            cond = self._slot_cond
            with cond:  # commit: the only phase that excludes inference
                self._writers_waiting += 1
                try:
                    while self._writer or self._readers or self._admit:
                        cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = True
            try:
                ret = acl.mdl.execute(self.model_ids["update"], self._update_in, self._update_out)
                if ret == 0:
                    self._version += 1
                version = self._version
            finally:
                with cond:
                    self._writer = False
                    self._admit = self._readers_waiting  # they go before the next commit
                    cond.notify_all()
            if ret != 0:
                err = AclError("acl.mdl.execute", ret, recent_error(acl))
                if hasattr(err, "add_note"):
                    err.add_note(
                        "the update graph failed: on the simulator no variable was changed; on real hardware the "
                        "graph may have stopped part-way, so push the full set of weights again before trusting results"
                    )
                raise err
        except BaseException:
            self._stats["failed_updates"] += 1
            raise
        t2 = time.perf_counter()
        st = self._stats
        st["updates"] += 1
        st["update_bytes"] += nbytes
        st["stage_seconds"] += t1 - t0
        st["commit_seconds"] += t2 - t1
        st["last_update"] = {"version": version, "variables": len(changed), "bytes": nbytes,
                             "stage_seconds": t1 - t0, "commit_seconds": t2 - t1}
        log.debug("update v%d: %d variables, %d bytes, stage %.3f ms, commit %.3f ms",
                  version, len(changed), nbytes, 1e3 * (t1 - t0), 1e3 * (t2 - t1))
        return version

    def _attach(self, i: int, state: int, td: int) -> None:
        if self._attached[i] == state and state != _CUSTOM:
            return
        acl = self._acl
        unwrap(acl, "acl.mdl.set_dataset_tensor_desc", acl.mdl.set_dataset_tensor_desc(self._update_in, td, i))
        self._attached[i] = state
        if state == _EMPTY:
            self._not_empty.discard(i)
        else:
            self._not_empty.add(i)

    # ------------------------------------------------------------------ info / lifecycle
    @property
    def version(self) -> int:
        """Number of committed updates since load."""
        return self._version

    @property
    def closed(self) -> bool:
        return self._closed or (self._res is not None and self._res.closed)

    @property
    def device_bytes(self) -> int:
        """Device memory this wrapper allocated (staging + infer buffers), not counting the variables."""
        return self._device_bytes

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: version, infers, updates, failed updates, bytes and stage/commit seconds."""
        with self._update_lock:
            st = dict(self._stats)
        st["version"] = self._version
        st["infers"] = self._n_infer
        return st

    def close(self) -> None:
        """Release every ACL resource in reverse order; idempotent; waits for in-flight calls."""
        res = self._res
        if res is None:
            return
        self._closed = True
        res.shutdown()
        problems = self._finalizer()
        for p in problems or ():
            warnings.warn(f"BundleModel.close: {p}", AclCleanupWarning, stacklevel=2)
        if problems is not None:
            log.info("closed bundle %s", self._source)

    def __enter__(self) -> BundleModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"version={getattr(self, '_version', 0)}"
        return f"<BundleModel {self._source!r} device={getattr(self, '_device_id', '?')} {state}>"


EXIT_WAIT_SECONDS = 5.0


def _c_contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself if C-contiguous, else a C-ordered copy (the caller's array is never modified; 0-d stays 0-d)."""
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _array_address(a: np.ndarray) -> int:
    return a.ctypes.data


def _release_quietly(res: _Resources) -> list[str]:
    """weakref.finalize target: release, log problems (warnings may be off at exit), return them.

    Runs from close(), from garbage collection, or at interpreter exit while daemon
    threads may still be inside infer/update: it waits for in-flight calls first, and
    if they outlast EXIT_WAIT_SECONDS it leaks the resources rather than free memory
    a running call still uses.
    """
    if not res.shutdown(EXIT_WAIT_SECONDS):
        log.warning("calls still running after %.0f s; leaving this model's ACL resources to process exit", EXIT_WAIT_SECONDS)
        return ["in-flight calls did not finish; resources left to process exit"]
    problems = res.release()
    for p in problems:
        log.warning("teardown problem: %s", p)
    return problems
