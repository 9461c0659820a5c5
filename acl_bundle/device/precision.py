"""GE's precision modes (ATC ``--precision_mode``): the names both builders accept and GE's default.

The list is what GE accepts (hicann/ge ``compiler/api/aclgrph/option_utils.cc:1317-1326``).  GE's
default for inference is ``force_fp16``: "在线推理场景下，参数默认值为force_fp16"
(``docs/zh/api/graph_engine_api/cpp/ge/options_params/precision_tuning.md:189``; ATC's help,
``api/atc/main_impl.cc:660``, "force_fp16(default)").  How the simulator computes each mode is in
:mod:`acl_bundle.sim._precision`.

No import beyond the standard library: the command line's help reads it.
"""
from __future__ import annotations

PRECISION_MODES = (
    "force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_mix_precision", "allow_fp32_to_fp16",
    "must_keep_origin_dtype", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16",
)
PRECISION_DEFAULT = "force_fp16"


def check_precision_mode(mode: str | None) -> str | None:
    """Return ``mode`` if GE accepts it (None: not set); ValueError naming the valid ones otherwise."""
    if mode is None or mode in PRECISION_MODES:
        return mode
    raise ValueError(f"precision_mode {mode!r} is not one of GE's: {', '.join(PRECISION_MODES)}")
