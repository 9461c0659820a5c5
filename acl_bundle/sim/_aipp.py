"""AIPP queries of ``acl.mdl`` answered as GE answers them for a model built without AIPP.

The simulator's models have no AIPP (no ``aipp.cfg`` at conversion), so:

- ``get_aipp_type(model_id, index)`` -> ``(ACL_DATA_WITHOUT_AIPP (0), 0xFFFFFFFF, 0)``: no AIPP
  entry for the input is a success with the default type and an invalid attached index
  (hicann/ge ``runtime/v1/graph/load/model_manager/davinci_model.cc:4247-4254``, ``aipp_utils.cc:257-265``);
- ``get_first_aipp_info(model_id, index)`` -> ``({}, 145015 ACL_ERROR_GE_AIPP_NOT_EXIST)``
  (``api/acl/acl_model/model/acl_aipp.cpp:510-515``; ``davinci_model.cc:4188-4193``).

Both first check the model and the index (``acl_aipp.cpp:264-276`` VerifyIndex: the model's
desc, 145003 for an unknown id, then index >= inputs -> 100000).
"""
from __future__ import annotations

from . import _state as S
from ._state import LOCK, WORLD, api, ints, set_err

ACL_DATA_WITHOUT_AIPP = 0  # aclmdlInputAippType
ACL_INVALID_NODE_INDEX = 0xFFFFFFFF


def _verify_index(name: str, model_id: int, index: int) -> int:
    """acl_aipp.cpp VerifyIndex: the model must be loaded and ``index`` one of its inputs (LOCK held)."""
    m = WORLD.models.get(model_id)
    if m is None:
        return set_err(S.E_MODEL_ID, f"{name}: model id {model_id} is not loaded")
    if not 0 <= index < len(m.inputs):
        return set_err(S.E_PARAM, f"{name}: index {index} should be smaller than {len(m.inputs)} (the model's inputs)")
    return 0


@api("acl.mdl.get_aipp_type", "t2", ge_init=True, pre=ints("model_id", "index"))
def get_aipp_type(model_id: int, index: int) -> tuple[int, int, int]:
    """``type, dynamic_attached_data_index, ret``: no AIPP on any input of a simulated model."""
    with LOCK:
        ret = _verify_index("get_aipp_type", model_id, index)
    if ret:
        return 0, 0, ret
    return ACL_DATA_WITHOUT_AIPP, ACL_INVALID_NODE_INDEX, 0


@api("acl.mdl.get_first_aipp_info", "dims", ge_init=True, pre=ints("model_id", "index"))
def get_first_aipp_info(model_id: int, index: int) -> tuple[dict, int]:
    """``aipp_info, ret``: 145015 (ACL_ERROR_GE_AIPP_NOT_EXIST) for every input of a simulated model."""
    with LOCK:
        ret = _verify_index("get_first_aipp_info", model_id, index)
    if ret:
        return {}, ret
    return {}, set_err(
        S.E_AIPP_NOT_EXIST, f"get_first_aipp_info: input {index} of model {model_id} is not configured with AIPP"
    )
