"""Datasets, data buffers and tensor descriptors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._constants import DATA_TYPE_SIZE_DEFAULT, DATA_TYPE_SIZES, NUMPY_TO_ACL
from . import _state as S
from ._state import LOCK, WORLD, SimulatorMisuse, api, ints, new_handle, set_err

#: aclDataType values a tensor desc may carry: the numpy-movable ones and the named others.
KNOWN_DTYPES = set(NUMPY_TO_ACL.values()) | (set(DATA_TYPE_SIZES) - {-1})


@dataclass(eq=False)
class DataBuffer:
    id: int
    addr: int
    size: int
    holders: list[tuple[int, int]] = field(default_factory=list)  # (dataset id, index) it was added at


@dataclass(eq=False)
class TensorDesc:
    id: int
    dtype: int
    dims: list[int]
    fmt: int
    owner_ds: int = 0  # dataset that owns this copy (0: user-created)

    def element_count(self) -> int:
        n = 1
        for d in self.dims:
            if d < 0:
                return 0
            n *= d
        return n


@dataclass(eq=False)
class Dataset:
    id: int
    buffers: list[int] = field(default_factory=list)
    descs: list[int] = field(default_factory=list)  # owned TensorDesc ids, 0 = none
    # What an update graph validated last (see _mdl._prepare_update): which model, at which
    # count of device frees, which inputs were non-empty; and the indexes changed since
    # (desc set, buffer re-pointed or destroyed), so only those and the non-empty ones are
    # validated again.
    checked_for: int = 0
    checked_frees: int = -1
    nonempty: set[int] = field(default_factory=set)
    dirty: set[int] = field(default_factory=set)
    # Bumped with every change ``dirty`` records (buffer added, re-pointed or destroyed, desc set): what an
    # infer execute cached for this dataset (_mdl._ExecCache) is valid while it is unchanged.
    gen: int = 0


def touched(db: DataBuffer) -> None:
    """``db`` was re-pointed or destroyed: mark its places in live datasets for re-validation (LOCK held)."""
    for ds_id, index in db.holders:
        ds = WORLD.datasets.get(ds_id)
        if ds is not None:
            ds.dirty.add(index)
            ds.gen += 1


def dtype_size(dtype: int) -> int:
    """aclDataTypeSize (hicann/runtime src/acl/aclrt_impl/data_buffer.cpp:22-58): unknown types answer 8."""
    return DATA_TYPE_SIZES.get(dtype, DATA_TYPE_SIZE_DEFAULT)


# ---- getters of one handle (data buffers and tensor descs) -------------------------------
def _getter(name: str, form: str, default: Any, lookup: Any, what: str, fn: Any) -> Any:
    """``acl.<name>(handle)``: ``fn(object)``, or ``default`` (and a recorded error) for a dead handle."""

    @api(f"acl.{name}", form, pre=ints(what.replace(" ", "_")))
    def getter(handle: int) -> Any:
        with LOCK:
            obj = lookup(handle)
            if obj is None:
                set_err(S.E_PARAM, f"{name}: {handle:#x} is not a live {what}")
                return default
            return fn(obj)

    getter.__name__ = name
    return getter


# ---- data buffers ------------------------------------------------------------------------
@api("acl.create_data_buffer", "handle", pre=ints("data", "size"))
def create_data_buffer(data: int, size: int) -> int:
    """Any (pointer, size) is recorded, (0, 0) and (0, n) included (data_buffer.cpp:60-66 checks nothing)."""
    if data < 0 or size < 0:
        set_err(S.E_PARAM, f"create_data_buffer: invalid (ptr {data:#x}, size {size})")
        return 0
    with LOCK:
        db = DataBuffer(new_handle(), data, size)
        WORLD.data_buffers[db.id] = db
        return db.id


def get_db(h: Any) -> DataBuffer | None:
    return WORLD.data_buffers.get(h) if isinstance(h, int) else None


@api("acl.destroy_data_buffer", "ret", pre=ints("data_buffer"))
def destroy_data_buffer(data_buffer: int) -> int:
    with LOCK:
        db = WORLD.data_buffers.pop(data_buffer, None)
        if db is None:
            return set_err(S.E_PARAM, f"destroy_data_buffer: {data_buffer:#x} is not a live data buffer")
        touched(db)
    return 0


get_data_buffer_addr = _getter("get_data_buffer_addr", "int0", 0, get_db, "data buffer", lambda d: d.addr)
get_data_buffer_size = _getter("get_data_buffer_size", "int0", 0, get_db, "data buffer", lambda d: d.size)
get_data_buffer_size_v2 = _getter("get_data_buffer_size_v2", "int0", 0, get_db, "data buffer", lambda d: d.size)


@api("acl.update_data_buffer", "ret", pre=ints("data_buffer", "data", "size"))
def update_data_buffer(data_buffer: int, data: int, size: int) -> int:
    with LOCK:
        db = get_db(data_buffer)
        if db is None:
            return set_err(S.E_PARAM, f"update_data_buffer: {data_buffer:#x} is not a live data buffer")
        if data < 0 or size < 0:
            return set_err(S.E_PARAM, f"update_data_buffer: invalid (ptr {data:#x}, size {size})")
        db.addr, db.size = data, size
        touched(db)
    return 0


# ---- tensor descs ------------------------------------------------------------------------
def _check_dims(name: str, dims: Any) -> None:
    if not isinstance(dims, list):
        raise TypeError(f"{name}: argument 2 is not list")
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool):
            raise TypeError(f"{name}: dims must be ints")


@api("acl.create_tensor_desc", "handle")
def create_tensor_desc(data_type: int, dims: list, format: int) -> int:
    S.check_int(("data_type", data_type), ("format", format))
    _check_dims("create_tensor_desc", dims)
    if data_type not in KNOWN_DTYPES:
        set_err(S.E_PARAM, f"create_tensor_desc: unknown aclDataType {data_type}")
        return 0
    if any(d < 0 and d not in (-1, -2) for d in dims) or (-2 in dims and dims != [-2]):
        set_err(S.E_PARAM, f"create_tensor_desc: invalid dims {dims}")
        return 0
    if len(dims) > 128:
        set_err(S.E_PARAM, f"create_tensor_desc: {len(dims)} dims exceed ACL_MAX_DIM_CNT")
        return 0
    with LOCK:
        td = TensorDesc(new_handle(), data_type, list(dims), format)
        WORLD.tensor_descs[td.id] = td
        return td.id


def get_td(h: Any) -> TensorDesc | None:
    return WORLD.tensor_descs.get(h) if isinstance(h, int) else None


@api("acl.destroy_tensor_desc", "none", pre=ints("desc"))
def destroy_tensor_desc(desc: int) -> None:
    """No error return in pyACL: a dead/foreign handle is SimulatorMisuse (real: double free)."""
    with LOCK:
        td = get_td(desc)
        if td is None:
            raise SimulatorMisuse(f"destroy_tensor_desc: {desc:#x} is not a live tensor desc (double destroy?)")
        if td.owner_ds:
            raise SimulatorMisuse(f"destroy_tensor_desc: {desc:#x} is owned by dataset {td.owner_ds:#x}")
        del WORLD.tensor_descs[desc]


get_tensor_desc_num_dims = _getter("get_tensor_desc_num_dims", "int0", 0, get_td, "tensor desc", lambda t: len(t.dims))
get_tensor_desc_type = _getter("get_tensor_desc_type", "intm1", -1, get_td, "tensor desc", lambda t: t.dtype)
get_tensor_desc_format = _getter("get_tensor_desc_format", "intm1", -1, get_td, "tensor desc", lambda t: t.fmt)
get_tensor_desc_element_count = _getter(
    "get_tensor_desc_element_count", "int0", 0, get_td, "tensor desc", lambda t: t.element_count()
)
get_tensor_desc_size = _getter(
    "get_tensor_desc_size", "int0", 0, get_td, "tensor desc", lambda t: t.element_count() * dtype_size(t.dtype)
)


@api("acl.get_tensor_desc_dim_v2", "t1", pre=ints("desc", "index"))
def get_tensor_desc_dim_v2(desc: int, index: int) -> tuple[int, int]:
    with LOCK:
        td = get_td(desc)
        if td is None:
            return 0, set_err(S.E_PARAM, f"get_tensor_desc_dim_v2: {desc:#x} is not a live tensor desc")
        if not 0 <= index < len(td.dims):
            return 0, set_err(S.E_PARAM, f"get_tensor_desc_dim_v2: index {index} out of range ({len(td.dims)} dims)")
        return td.dims[index], 0


@api("acl.get_tensor_desc_dim", "intm1", pre=ints("desc", "index"))
def get_tensor_desc_dim(desc: int, index: int) -> int:
    with LOCK:
        td = get_td(desc)
        if td is None or not 0 <= index < len(td.dims):
            set_err(S.E_PARAM, f"get_tensor_desc_dim: bad desc {desc:#x} or index {index}")
            return -1
        return td.dims[index]


@api("acl.data_type_size", "int0", pre=ints("data_type"))
def data_type_size(data_type: int) -> int:
    return dtype_size(data_type)


# ---- datasets ----------------------------------------------------------------------------
@api("acl.mdl.create_dataset", "handle")
def create_dataset() -> int:
    with LOCK:
        ds = Dataset(new_handle())
        WORLD.datasets[ds.id] = ds
        return ds.id


def get_ds(h: Any) -> Dataset | None:
    return WORLD.datasets.get(h) if isinstance(h, int) else None


@api("acl.mdl.destroy_dataset", "ret", pre=ints("dataset"))
def destroy_dataset(dataset: int) -> int:
    """Destroys the dataset's own tensor desc copies, not its buffers or memory."""
    with LOCK:
        ds = WORLD.datasets.pop(dataset, None)
        if ds is None:
            return set_err(S.E_PARAM, f"destroy_dataset: {dataset:#x} is not a live dataset")
        for t in ds.descs:
            WORLD.tensor_descs.pop(t, None)
    return 0


@api("acl.mdl.add_dataset_buffer", "t1", pre=ints("dataset", "data_buffer"))
def add_dataset_buffer(dataset: int, data_buffer: int) -> tuple[int, int]:
    with LOCK:
        ds = get_ds(dataset)
        if ds is None:
            return 0, set_err(S.E_PARAM, f"add_dataset_buffer: {dataset:#x} is not a live dataset")
        db = get_db(data_buffer)
        if db is None:
            return 0, set_err(S.E_PARAM, f"add_dataset_buffer: {data_buffer:#x} is not a live data buffer")
        db.holders.append((ds.id, len(ds.buffers)))
        ds.dirty.add(len(ds.buffers))
        ds.gen += 1
        ds.buffers.append(data_buffer)
        ds.descs.append(0)
        return dataset, 0


@api("acl.mdl.get_dataset_num_buffers", "int0", pre=ints("dataset"))
def get_dataset_num_buffers(dataset: int) -> int:
    with LOCK:
        ds = get_ds(dataset)
        if ds is None:
            set_err(S.E_PARAM, f"get_dataset_num_buffers: {dataset:#x} is not a live dataset")
            return 0
        return len(ds.buffers)


@api("acl.mdl.get_dataset_buffer", "handle", pre=ints("dataset", "index"))
def get_dataset_buffer(dataset: int, index: int) -> int:
    with LOCK:
        ds = get_ds(dataset)
        if ds is None or not 0 <= index < len(ds.buffers):
            set_err(S.E_PARAM, f"get_dataset_buffer: bad dataset {dataset:#x} or index {index}")
            return 0
        return ds.buffers[index]


@api("acl.mdl.set_dataset_tensor_desc", "t1", pre=ints("dataset", "tensor_desc", "index"))
def set_dataset_tensor_desc(dataset: int, tensor_desc: int, index: int) -> tuple[int, int]:
    """The desc is copied into the dataset; 0 clears."""
    with LOCK:
        ds = get_ds(dataset)
        if ds is None:
            return 0, set_err(S.E_PARAM, f"set_dataset_tensor_desc: {dataset:#x} is not a live dataset")
        if not 0 <= index < len(ds.buffers):
            return 0, set_err(
                S.E_PARAM, f"set_dataset_tensor_desc: index {index} >= number of buffers {len(ds.buffers)}"
            )
        src = None
        if tensor_desc != 0:
            src = get_td(tensor_desc)
            if src is None:
                return 0, set_err(S.E_PARAM, f"set_dataset_tensor_desc: {tensor_desc:#x} is not a live tensor desc")
        ds.dirty.add(index)
        ds.gen += 1
        old = ds.descs[index]
        if old:
            WORLD.tensor_descs.pop(old, None)
        ds.descs[index] = 0
        if src is not None:
            cp = TensorDesc(new_handle(), src.dtype, list(src.dims), src.fmt, owner_ds=ds.id)
            WORLD.tensor_descs[cp.id] = cp
            ds.descs[index] = cp.id
        return dataset, 0


@api("acl.mdl.get_dataset_tensor_desc", "handle", pre=ints("dataset", "index"))
def get_dataset_tensor_desc(dataset: int, index: int) -> int:
    with LOCK:
        ds = get_ds(dataset)
        if ds is None or not 0 <= index < len(ds.buffers):
            set_err(S.E_PARAM, f"get_dataset_tensor_desc: bad dataset {dataset:#x} or index {index}")
            return 0
        return ds.descs[index]
