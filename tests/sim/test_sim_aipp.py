"""AIPP queries of a model built without AIPP, answered as GE does (hicann/ge acl_aipp.cpp, davinci_model.cc)."""
from __future__ import annotations

from acl_bundle import sim

acl = sim.acl


def test_aipp_queries_of_a_model_without_aipp(rig, mlp_plain):
    path, _ = mlp_plain()
    mid = rig.load(path)
    assert acl.mdl.get_aipp_type(mid, 0) == (0, 0xFFFFFFFF, 0)  # ACL_DATA_WITHOUT_AIPP, invalid index
    assert acl.mdl.get_first_aipp_info(mid, 0) == ({}, 145015)  # ACL_ERROR_GE_AIPP_NOT_EXIST
    assert "not configured with AIPP" in acl.get_recent_err_msg()
    # VerifyIndex first: the input index, then the model id
    assert acl.mdl.get_aipp_type(mid, 1)[2] == 100000
    assert acl.mdl.get_first_aipp_info(mid, 1) == ({}, 100000)
    assert acl.mdl.get_aipp_type(mid + 1000, 0)[2] == 145003
    assert acl.mdl.get_first_aipp_info(mid + 1000, 0) == ({}, 145003)


def test_aipp_queries_reach_the_ge_executor():
    assert acl.mdl.get_aipp_type(1, 0)[2] == 145001  # before acl.init, like get_desc
