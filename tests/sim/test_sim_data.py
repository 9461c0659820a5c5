"""Datasets, data buffers, tensor descs."""
from __future__ import annotations

import pytest

from acl_bundle import _constants as C
from acl_bundle import sim

acl = sim.acl
F, ND = C.ACL_FLOAT, C.ACL_FORMAT_ND


def test_data_buffer_lifecycle(dev):
    db = acl.create_data_buffer(0, 0)
    assert db
    assert acl.get_data_buffer_addr(db) == 0
    assert acl.update_data_buffer(db, 0x1000, 64) == 0
    assert acl.get_data_buffer_addr(db) == 0x1000
    assert acl.get_data_buffer_size(db) == 64 == acl.get_data_buffer_size_v2(db)
    assert acl.destroy_data_buffer(db) == 0
    assert acl.destroy_data_buffer(db) == 100000
    assert acl.update_data_buffer(db, 0, 0) == 100000
    assert acl.get_data_buffer_addr(db) == 0
    assert acl.get_data_buffer_size(db) == 0
    # (0, n) is a valid data buffer: ACL stores any pointer/size (data_buffer.cpp:60-66)
    db = acl.create_data_buffer(0, 8)
    assert db and acl.get_data_buffer_addr(db) == 0 and acl.get_data_buffer_size(db) == 8
    assert acl.destroy_data_buffer(db) == 0


def test_dataset_buffers_and_descs(dev):
    ds = acl.mdl.create_dataset()
    dbs = [acl.create_data_buffer(0, 0) for _ in range(2)]
    for db in dbs:
        assert acl.mdl.add_dataset_buffer(ds, db) == (ds, 0)
    assert acl.mdl.add_dataset_buffer(ds, 12345) == (0, 100000)
    assert acl.mdl.add_dataset_buffer(999, dbs[0]) == (0, 100000)
    assert acl.mdl.get_dataset_num_buffers(ds) == 2
    assert acl.mdl.get_dataset_buffer(ds, 1) == dbs[1]
    assert acl.mdl.get_dataset_buffer(ds, 2) == 0
    td = acl.create_tensor_desc(F, [2, 3], ND)
    assert acl.mdl.set_dataset_tensor_desc(ds, td, 2) == (0, 100000)  # index >= buffers
    assert acl.mdl.set_dataset_tensor_desc(ds, td, 0) == (ds, 0)
    acl.destroy_tensor_desc(td)  # the dataset holds a copy
    owned = acl.mdl.get_dataset_tensor_desc(ds, 0)
    assert owned and owned != td
    assert acl.get_tensor_desc_num_dims(owned) == 2
    assert acl.get_tensor_desc_dim_v2(owned, 1) == (3, 0)
    assert acl.mdl.get_dataset_tensor_desc(ds, 1) == 0
    assert sim.live_resources()["tensor_descs"] == []  # dataset-owned copies are not user resources
    with pytest.raises(sim.SimulatorMisuse):
        acl.destroy_tensor_desc(owned)
    assert acl.mdl.set_dataset_tensor_desc(ds, 0, 0) == (ds, 0)  # clears
    assert acl.mdl.get_dataset_tensor_desc(ds, 0) == 0
    assert acl.mdl.destroy_dataset(ds) == 0
    assert acl.mdl.destroy_dataset(ds) == 100000
    assert acl.mdl.get_dataset_num_buffers(ds) == 0
    # destroy_dataset does not destroy the buffers
    assert sorted(sim.live_resources()["data_buffers"]) == sorted(dbs)
    for db in dbs:
        assert acl.destroy_data_buffer(db) == 0


def test_tensor_desc(dev):
    with pytest.raises(TypeError):
        acl.create_tensor_desc(F, (1, 2), ND)
    assert acl.create_tensor_desc(999, [1], ND) == 0
    assert acl.create_tensor_desc(F, [-3], ND) == 0
    td = acl.create_tensor_desc(F, [2, 3], ND)
    assert acl.get_tensor_desc_size(td) == 24
    assert acl.get_tensor_desc_element_count(td) == 6
    assert acl.get_tensor_desc_type(td) == F
    assert acl.get_tensor_desc_format(td) == ND
    assert acl.get_tensor_desc_dim(td, 0) == 2
    assert acl.get_tensor_desc_dim(td, 5) == -1
    assert acl.get_tensor_desc_dim_v2(td, 5) == (0, 100000)
    empty = acl.create_tensor_desc(F, [0], ND)
    assert acl.get_tensor_desc_element_count(empty) == 0 and acl.get_tensor_desc_size(empty) == 0
    scalar = acl.create_tensor_desc(F, [], ND)
    assert acl.get_tensor_desc_num_dims(scalar) == 0 and acl.get_tensor_desc_element_count(scalar) == 1
    assert sorted(sim.live_resources()["tensor_descs"]) == sorted([td, empty, scalar])
    for t in (td, empty, scalar):
        assert acl.destroy_tensor_desc(t) is None
    with pytest.raises(sim.SimulatorMisuse):
        acl.destroy_tensor_desc(td)
    assert acl.get_tensor_desc_num_dims(td) == 0
    assert acl.get_tensor_desc_type(td) == -1
    assert acl.data_type_size(F) == 4 and acl.data_type_size(C.ACL_FLOAT16) == 2
    # aclDataTypeSize (data_buffer.cpp:22-58): the newer types, and 8 for anything unknown
    assert acl.data_type_size(C.ACL_BF16) == 2 and acl.data_type_size(C.ACL_COMPLEX128) == 16
    assert acl.data_type_size(C.ACL_HIFLOAT8) == 1 and acl.data_type_size(C.ACL_INT4) == 1
    assert acl.data_type_size(C.ACL_COMPLEX32) == 4 and acl.data_type_size(C.ACL_STRING) == 0
    assert acl.data_type_size(C.ACL_FLOAT4_E2M1) == 8 and acl.data_type_size(12345) == 8


def test_dead_handles_everywhere(dev):
    """Every getter/setter rejects a destroyed data buffer, tensor desc or dataset."""
    db = acl.create_data_buffer(0, 0)
    assert acl.update_data_buffer(db, 0x1000, 64) == 0
    assert acl.destroy_data_buffer(db) == 0
    assert acl.get_data_buffer_size_v2(db) == 0
    td = acl.create_tensor_desc(F, [2, 3], ND)
    acl.destroy_tensor_desc(td)
    assert acl.get_tensor_desc_dim_v2(td, 0) == (0, 100000)
    assert acl.get_tensor_desc_dim(td, 0) == -1
    live_td = acl.create_tensor_desc(F, [2, 3], ND)
    ds = acl.mdl.create_dataset()
    buf = acl.create_data_buffer(0, 0)
    assert acl.mdl.add_dataset_buffer(ds, buf) == (ds, 0)
    assert acl.mdl.set_dataset_tensor_desc(ds, live_td, 0) == (ds, 0)
    owned = acl.mdl.get_dataset_tensor_desc(ds, 0)
    assert acl.mdl.set_dataset_tensor_desc(ds, td, 0) == (0, 100000)  # dead desc
    assert acl.mdl.get_dataset_tensor_desc(ds, 0) == owned  # unchanged
    assert acl.mdl.destroy_dataset(ds) == 0
    # the dataset's own desc copies die with it
    assert acl.get_tensor_desc_num_dims(owned) == 0 and acl.get_tensor_desc_type(owned) == -1
    assert acl.mdl.get_dataset_buffer(ds, 0) == 0
    assert acl.mdl.get_dataset_tensor_desc(ds, 0) == 0
    assert acl.mdl.set_dataset_tensor_desc(ds, live_td, 0) == (0, 100000)
    acl.destroy_tensor_desc(live_td)
    assert acl.destroy_data_buffer(buf) == 0
