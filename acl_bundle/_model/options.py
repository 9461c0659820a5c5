"""The load options of a BundleModel, checked once before anything is acquired."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, cast

import numpy as np

from .._manifest import ManifestArg

DEFAULT_HISTORY_BYTES = 512 << 20


class LoadOptions(TypedDict, total=False):
    """The keyword arguments ``BundleModel(path, ...)`` and ``BundleModel.from_bytes(data, ...)`` share.

    Their defaults are :data:`LOAD_DEFAULTS`; their meaning is in ``BundleModel``'s docstring.
    """

    device_id: int
    acl: Any
    run_init: bool
    init_inputs: Sequence[np.ndarray] | None
    manifest: ManifestArg
    roles: Mapping[str, int] | None
    max_concurrency: int
    pad_batch: bool
    staging_bytes: int | None
    history: int
    history_bytes: int


LOAD_DEFAULTS: dict[str, Any] = {
    "device_id": 0, "acl": None, "run_init": True, "init_inputs": None, "manifest": None, "roles": None,
    "max_concurrency": 2, "pad_batch": True, "staging_bytes": None, "history": 0,
    "history_bytes": DEFAULT_HISTORY_BYTES,
}


def load_options(loader: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every load option: ``given`` over :data:`LOAD_DEFAULTS`; a keyword no loader takes is a TypeError."""
    for key in given:
        if key not in LOAD_DEFAULTS:
            raise TypeError(f"{loader}() got an unexpected keyword argument {key!r}")
    return {**LOAD_DEFAULTS, **given}


F = TypeVar("F", bound=Callable[..., Any])


def with_load_signature(first: str, annotation: str, returns: str) -> Callable[[F], F]:
    """Give a loader taking ``(self_or_cls, first, **options)`` the signature it is called with.

    ``help()`` and ``inspect.signature`` then show ``first`` and each load option, keyword-only, with
    its type and default; type checkers read the options from :class:`LoadOptions` (``Unpack``).
    """
    p = inspect.Parameter
    params = [p("self", p.POSITIONAL_OR_KEYWORD), p(first, p.POSITIONAL_OR_KEYWORD, annotation=annotation)]
    hints = {k: getattr(a, "__forward_arg__", a) for k, a in LoadOptions.__annotations__.items()}  # the text
    params += [p(k, p.KEYWORD_ONLY, default=v, annotation=hints[k]) for k, v in LOAD_DEFAULTS.items()]
    signature = inspect.Signature(params, return_annotation=returns)

    def apply(fn: F) -> F:
        cast(Any, fn).__signature__ = signature
        return fn

    return apply


def check_load_options(device_id: Any, run_init: Any, init_inputs: Any, roles: Any, max_concurrency: Any,
                       pad_batch: Any, staging_bytes: Any, history: Any, history_bytes: Any) -> tuple[int, int]:
    """Raise TypeError/ValueError naming the first bad option; return (device_id, max_concurrency) as ints."""
    if isinstance(device_id, np.integer):
        device_id = int(device_id)
    if isinstance(max_concurrency, np.integer):
        max_concurrency = int(max_concurrency)
    if not isinstance(pad_batch, bool):
        raise TypeError(f"pad_batch must be True or False, got {pad_batch!r}")
    if staging_bytes is not None and (not isinstance(staging_bytes, int) or isinstance(staging_bytes, bool)
                                      or staging_bytes < 0):
        raise ValueError(f"staging_bytes must be an int >= 0 or None (the variables' total), got {staging_bytes!r}")
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
        raise ValueError(f"device_id must be a non-negative int, got {device_id!r}")
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    if not isinstance(run_init, (bool, np.bool_)):
        raise TypeError(f"run_init must be True or False, got {run_init!r}")
    if roles is not None and (
        not isinstance(roles, Mapping)
        or not all(
            isinstance(k, str) and isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            for k, v in roles.items()
        )
    ):
        raise TypeError(
            f"roles must be a mapping of 'infer'/'init'/'update' to graph indexes (ints), got {roles!r:.80}"
        )
    if init_inputs is not None and (
        isinstance(init_inputs, (str, bytes, np.ndarray)) or not isinstance(init_inputs, Sequence)
    ):
        raise TypeError(
            f"init_inputs must be a sequence of arrays (in input order) or None, got {type(init_inputs).__name__}"
        )
    for name, value in (("history", history), ("history_bytes", history_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return device_id, max_concurrency


def check_step(step: Any) -> None:
    if step is not None and (not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0):
        raise ValueError(f"step must be a non-negative int or None, got {step!r}")
