"""Helpers for the simulator tests (imported by tests/sim/conftest.py and the tests)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from acl_bundle import _constants as C
from acl_bundle import sim

acl = sim.acl


class Rig:
    """Creates ACL resources for a test and destroys whatever is left at teardown."""

    def __init__(self) -> None:
        self.ptrs: list[int] = []
        self.dbs: list[int] = []
        self.dss: list[int] = []
        self.tds: list[int] = []
        self.descs: list[int] = []
        self.bundles: list[int] = []
        self.models: list[int] = []

    def malloc(self, n: int) -> int:
        p, ret = acl.rt.malloc(n, 2)
        assert ret == 0, acl.get_recent_err_msg()
        self.ptrs.append(p)
        return p

    def buffer(self, ptr: int, size: int) -> int:
        db = acl.create_data_buffer(ptr, size)
        assert db
        self.dbs.append(db)
        return db

    def dataset(self, sizes: list[int]) -> tuple[int, list[int]]:
        """A dataset with one fresh device buffer per size."""
        ds = acl.mdl.create_dataset()
        self.dss.append(ds)
        ptrs = []
        for s in sizes:
            p = self.malloc(s)
            _, ret = acl.mdl.add_dataset_buffer(ds, self.buffer(p, s))
            assert ret == 0
            ptrs.append(p)
        return ds, ptrs

    def tensor_desc(self, dtype: int, dims: list[int]) -> int:
        td = acl.create_tensor_desc(dtype, dims, C.ACL_FORMAT_ND)
        assert td
        self.tds.append(td)
        return td

    def desc(self, model_id: int) -> int:
        d = acl.mdl.create_desc()
        self.descs.append(d)
        assert acl.mdl.get_desc(d, model_id) == 0, acl.get_recent_err_msg()
        return d

    def load_bundle(self, path: str | Path) -> tuple[int, list[int]]:
        bid, ret = acl.mdl.bundle_load_from_file(str(path))
        assert ret == 0, acl.get_recent_err_msg()
        self.bundles.append(bid)
        n, ret = acl.mdl.bundle_get_model_num(bid)
        return bid, [acl.mdl.bundle_get_model_id(bid, i)[0] for i in range(n)]

    def load(self, path: str | Path) -> int:
        mid, ret = acl.mdl.load_from_file(str(path))
        assert ret == 0, acl.get_recent_err_msg()
        self.models.append(mid)
        return mid

    def h2d(self, dst: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        assert (
            acl.rt.memcpy(dst, arr.nbytes, acl.util.numpy_to_ptr(arr), arr.nbytes, C.ACL_MEMCPY_HOST_TO_DEVICE) == 0
        ), acl.get_recent_err_msg()

    def d2h(self, src: int, dtype: Any, shape: tuple) -> np.ndarray:
        out = np.empty(shape, dtype)
        assert (
            acl.rt.memcpy(acl.util.numpy_to_ptr(out), out.nbytes, src, out.nbytes, C.ACL_MEMCPY_DEVICE_TO_HOST) == 0
        ), acl.get_recent_err_msg()
        return out

    def close(self) -> None:
        for d in self.descs:
            acl.mdl.destroy_desc(d)
        for ds in self.dss:
            acl.mdl.destroy_dataset(ds)
        for db in self.dbs:
            acl.destroy_data_buffer(db)
        for td in self.tds:
            with contextlib.suppress(sim.SimulatorMisuse):
                acl.destroy_tensor_desc(td)
        for p in self.ptrs:
            acl.rt.free(p)
        for m in self.models:
            acl.mdl.unload(m)
        for b in self.bundles:
            acl.mdl.bundle_unload(b)
