"""pyACL constants and tables (the values of the CANN headers ``acl_base_rt.h``, ``acl_rt.h``,
``rt_error_codes.h`` and ``ge_error_codes.h``).

Shared knowledge about the public ACL contract (numbers and names), used by the
wrapper to build error messages and map dtypes, and by the simulator to answer
with the same numbers.  Nothing here is simulator-specific.

Real pyACL does not export these names as ``acl.ACL_*`` attributes: its documentation
lists them as values only and Ascend's own Python samples define them in a local
``constants.py``.  Import them from here (or define them) rather than from ``acl``.
"""
from __future__ import annotations

import numpy as np

#: The first bytes of a model file in the simulator's format (``acl_bundle.sim.format``): a file that
#: starts with them runs on the simulator only.  Here so the backend rule can tell without importing it.
SIM_MAGIC = b"ACLBSIM\x00"

# aclDataType
ACL_DT_UNDEFINED = -1
ACL_FLOAT = 0
ACL_FLOAT16 = 1
ACL_INT8 = 2
ACL_INT32 = 3
ACL_UINT8 = 4
ACL_INT16 = 6
ACL_UINT16 = 7
ACL_UINT32 = 8
ACL_INT64 = 9
ACL_UINT64 = 10
ACL_DOUBLE = 11
ACL_BOOL = 12
ACL_STRING = 13
ACL_COMPLEX64 = 16
ACL_COMPLEX128 = 17
ACL_BF16 = 27
ACL_INT4 = 29
ACL_UINT1 = 30
ACL_COMPLEX32 = 33
ACL_HIFLOAT8 = 34
ACL_FLOAT8_E5M2 = 35
ACL_FLOAT8_E4M3FN = 36
ACL_FLOAT8_E8M0 = 37
ACL_FLOAT6_E3M2 = 38
ACL_FLOAT6_E2M3 = 39
ACL_FLOAT4_E2M1 = 40
ACL_FLOAT4_E1M2 = 41

#: aclDataTypeSize(): bytes per element; every type not listed (including the 6- and 4-bit
#: floats and unknown values) answers 8, as the runtime's ``default:`` branch does
#: (hicann/runtime src/acl/aclrt_impl/data_buffer.cpp:22-58).
DATA_TYPE_SIZES: dict[int, int] = {
    ACL_STRING: 0, ACL_DT_UNDEFINED: 0,
    ACL_UINT1: 1, ACL_INT4: 1,
    ACL_BOOL: 1, ACL_INT8: 1, ACL_UINT8: 1, ACL_HIFLOAT8: 1, ACL_FLOAT8_E5M2: 1, ACL_FLOAT8_E4M3FN: 1,
    ACL_FLOAT8_E8M0: 1,
    ACL_FLOAT16: 2, ACL_INT16: 2, ACL_UINT16: 2, ACL_BF16: 2,
    ACL_FLOAT: 4, ACL_INT32: 4, ACL_UINT32: 4, ACL_COMPLEX32: 4,
    ACL_COMPLEX128: 16,
}
DATA_TYPE_SIZE_DEFAULT = 8

# aclFormat
ACL_FORMAT_UNDEFINED = -1
ACL_FORMAT_NCHW = 0
ACL_FORMAT_NHWC = 1
ACL_FORMAT_ND = 2

# aclrtMemcpyKind
ACL_MEMCPY_HOST_TO_HOST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_MEMCPY_DEFAULT = 4
ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE = 5

# aclrtMemMallocPolicy
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEM_MALLOC_HUGE_ONLY = 1
ACL_MEM_MALLOC_NORMAL_ONLY = 2

# aclrtRunMode
ACL_DEVICE = 0
ACL_HOST = 1

# aclrtEventStatus (acl.rt.query_event)
ACL_EVENT_STATUS_COMPLETE = 0
ACL_EVENT_STATUS_NOT_READY = 1

# aclrtCallbackBlockType (acl.rt.launch_callback)
ACL_CALLBACK_NO_BLOCK = 0
ACL_CALLBACK_BLOCK = 1

# aclrtMemAttr (acl.rt.get_mem_info): ACL_DDR_MEM .. ACL_MEM_P2P_HUGE1G
ACL_DDR_MEM = 0
ACL_MEM_P2P_HUGE1G = 17

ACL_DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"
ACL_MAX_DIM_CNT = 128
ACL_MAX_TENSOR_NAME_LEN = 128
ACL_MAX_BATCH_NUM = 128
ACL_MAX_HW_NUM = 128

#: aclDataType -> numpy dtype, for the types this project moves between host and device.
ACL_TO_NUMPY: dict[int, np.dtype] = {
    ACL_FLOAT: np.dtype(np.float32),
    ACL_FLOAT16: np.dtype(np.float16),
    ACL_INT8: np.dtype(np.int8),
    ACL_INT32: np.dtype(np.int32),
    ACL_UINT8: np.dtype(np.uint8),
    ACL_INT16: np.dtype(np.int16),
    ACL_UINT16: np.dtype(np.uint16),
    ACL_UINT32: np.dtype(np.uint32),
    ACL_INT64: np.dtype(np.int64),
    ACL_UINT64: np.dtype(np.uint64),
    ACL_DOUBLE: np.dtype(np.float64),
    ACL_BOOL: np.dtype(np.bool_),
}
NUMPY_TO_ACL: dict[np.dtype, int] = {v: k for k, v in ACL_TO_NUMPY.items()}

#: numpy type numbers used by acl.util.ptr_to_numpy (reference section 2).
NPY_TYPE_TO_NUMPY: dict[int, np.dtype] = {
    0: np.dtype(np.bool_), 1: np.dtype(np.int8), 2: np.dtype(np.uint8),
    3: np.dtype(np.int16), 4: np.dtype(np.uint16), 5: np.dtype(np.int32),
    6: np.dtype(np.uint32), 7: np.dtype(np.int64), 8: np.dtype(np.uint64),
    11: np.dtype(np.float32), 12: np.dtype(np.float64), 23: np.dtype(np.float16),
}

# aclError and the GE / runtime codes model APIs return (reference section 6).
ERROR_NAMES: dict[int, str] = {
    0: "ACL_SUCCESS",
    100000: "ACL_ERROR_INVALID_PARAM",
    100001: "ACL_ERROR_UNINITIALIZE",
    100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE",
    100004: "ACL_ERROR_WRITE_FILE",
    100005: "ACL_ERROR_INVALID_FILE_SIZE",
    100006: "ACL_ERROR_PARSE_FILE",
    100007: "ACL_ERROR_FILE_MISSING_ATTR",
    100008: "ACL_ERROR_FILE_ATTR_INVALID",
    100011: "ACL_ERROR_INVALID_MODEL_ID",
    100012: "ACL_ERROR_DESERIALIZE_MODEL",
    100013: "ACL_ERROR_PARSE_MODEL",
    100014: "ACL_ERROR_READ_MODEL_FAILURE",
    100015: "ACL_ERROR_MODEL_SIZE_INVALID",
    100016: "ACL_ERROR_MODEL_MISSING_ATTR",
    100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
    100019: "ACL_ERROR_MODEL_NOT_DYNAMIC",
    100024: "ACL_ERROR_OP_NOT_FOUND",
    100026: "ACL_ERROR_UNSUPPORTED_DATA_TYPE",
    100027: "ACL_ERROR_FORMAT_NOT_MATCH",
    100037: "ACL_ERROR_REPEAT_FINALIZE",
    148052: "ACL_ERROR_UNSUPPORTED_JPEG",
    148053: "ACL_ERROR_INVALID_BUNDLE_MODEL_ID",
    200000: "ACL_ERROR_BAD_ALLOC",
    200001: "ACL_ERROR_API_NOT_SUPPORT",
    200002: "ACL_ERROR_INVALID_DEVICE",
    200003: "ACL_ERROR_MEMORY_ADDRESS_UNALIGNED",
    200004: "ACL_ERROR_RESOURCE_NOT_MATCH",
    200005: "ACL_ERROR_INVALID_RESOURCE_HANDLE",
    200006: "ACL_ERROR_FEATURE_UNSUPPORTED",
    300000: "ACL_ERROR_STORAGE_OVER_LIMIT",
    500000: "ACL_ERROR_INTERNAL_ERROR",
    500001: "ACL_ERROR_FAILURE",
    500002: "ACL_ERROR_GE_FAILURE",
    500003: "ACL_ERROR_RT_FAILURE",
    500004: "ACL_ERROR_DRV_FAILURE",
    145000: "ACL_ERROR_GE_PARAM_INVALID",
    145001: "ACL_ERROR_GE_EXEC_NOT_INIT",
    145002: "ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID",
    145003: "ACL_ERROR_GE_EXEC_MODEL_ID_INVALID",
    145006: "ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID",
    145009: "ACL_ERROR_GE_EXEC_LOAD_MODEL_REPEATED",
    145011: "ACL_ERROR_GE_DYNAMIC_INPUT_ADDR_INVALID",
    145012: "ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID",
    145013: "ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID",
    145015: "ACL_ERROR_GE_AIPP_NOT_EXIST",
    145020: "ACL_ERROR_GE_FORMAT_INVALID",
    145021: "ACL_ERROR_GE_SHAPE_INVALID",
    145022: "ACL_ERROR_GE_DATATYPE_INVALID",
    245000: "ACL_ERROR_GE_MEMORY_ALLOCATION",
    545000: "ACL_ERROR_GE_INTERNAL_ERROR",
    545001: "ACL_ERROR_GE_LOAD_MODEL",
    107000: "ACL_ERROR_RT_PARAM_INVALID",
    107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL",
    107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107004: "ACL_ERROR_RT_MODEL_CONTEXT",
    107011: "ACL_ERROR_RT_STREAM_SUBSCRIBE",
    107012: "ACL_ERROR_RT_THREAD_SUBSCRIBE",
    107015: "ACL_ERROR_RT_STREAM_NO_CB_REG",
    107016: "ACL_ERROR_RT_INVALID_MEMORY_TYPE",
    207000: "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
    207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207004: "ACL_ERROR_RT_NO_DEVICE",
    207018: "ACL_ERROR_RT_DEVICE_OOM",
    507000: "ACL_ERROR_RT_INTERNAL_ERROR",
    507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507012: "ACL_ERROR_RT_REPORT_TIMEOUT",
    507015: "ACL_ERROR_RT_AICORE_EXCEPTION",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
}
#: Symbolic name -> code, so callers (and the simulator) can say ``CODES["ACL_ERROR_INVALID_PARAM"]``.
CODES: dict[str, int] = {v: k for k, v in ERROR_NAMES.items()}


def error_name(code: int) -> str:
    """Return the symbolic name of an ACL/GE/RT error code, or ``"UNKNOWN_ERROR"``."""
    return ERROR_NAMES.get(code, "UNKNOWN_ERROR")
