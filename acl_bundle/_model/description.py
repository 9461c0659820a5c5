"""What a loaded bundle is, read once from its model descriptions (+ manifest), and the checks against it.

:class:`Description` holds the graph roles, the infer graph's data inputs and outputs,
its dynamic batch sizes and the update graph's variables (shapes from the manifest);
it is built at load and never changes.  ``check_inputs`` / ``check_weights`` turn what a
caller passes to ``infer`` / ``update`` into exactly the arrays the device needs, or
raise a ``TypeError``/``ValueError``/``KeyError`` that says what was wrong and what was
expected — before anything touches the device.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import ACL_DYNAMIC_TENSOR_NAME, ACL_TO_NUMPY
from .._errors import AclError, UnknownVariableError, recent_error, unwrap
from .._manifest import ManifestVariable

VAR_SUFFIX = "_var_data"  # GE names update-graph input i "<const>_var_data" (CANN bundle documentation)


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


def tensor_info(acl: Any, desc: int, i: int, output: bool) -> tuple[TensorInfo, int]:
    """Input or output ``i`` of a model description, and its reported byte size."""
    mdl = acl.mdl
    kind = "output" if output else "input"
    get_dims = mdl.get_output_dims if output else mdl.get_input_dims
    dims = unwrap(acl, f"acl.mdl.get_{kind}_dims", get_dims(desc, i))
    name = (mdl.get_output_name_by_index if output else mdl.get_input_name_by_index)(desc, i)
    acl_dt = (mdl.get_output_data_type if output else mdl.get_input_data_type)(desc, i)
    size = (mdl.get_output_size_by_index if output else mdl.get_input_size_by_index)(desc, i)
    if acl_dt not in ACL_TO_NUMPY:
        raise ValueError(f"{kind} {name!r} has ACL data type {acl_dt}, which acl_bundle cannot map to numpy")
    shape = tuple(int(d) for d in dims["dims"][: dims["dimCount"]])
    return TensorInfo(name, shape, ACL_TO_NUMPY[acl_dt]), size


def c_contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself if C-contiguous, else a C-ordered copy (the caller's array is never modified; 0-d stays 0-d)."""
    return a if a.flags.c_contiguous else np.array(a, order="C")


def check_array(a: Any, t: TensorInfo, what: str, batches: Sequence[int] = ()) -> np.ndarray:
    """``a`` as the C-contiguous array ``t`` needs (batch dim in ``batches``), or a clear error."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray of {t.dtype}, got {type(a).__name__}")
    if a.dtype != t.dtype:
        raise TypeError(
            f"{what} must have dtype {t.dtype}, got {a.dtype.str if a.dtype.name == t.dtype.name else a.dtype}; "
            f"convert it with .astype(numpy.{t.dtype.name})"
        )
    if -1 in t.shape[1:]:  # an image-size / dims input: the gear check follows
        if a.ndim != len(t.shape) or any(d != -1 and d != n for d, n in zip(t.shape, a.shape)):
            raise ValueError(f"{what} must have shape {t.shape} (-1: a dynamic dim), got {a.shape}")
    elif t.shape and t.shape[0] == -1 and not batches:
        if a.ndim != len(t.shape) or a.shape[1:] != t.shape[1:]:
            raise ValueError(f"{what} must have shape {t.shape} (-1: a dynamic dim), got {a.shape}")
    elif t.shape and t.shape[0] == -1:
        ok = a.ndim == len(t.shape) and a.shape[1:] == t.shape[1:] and a.shape[0] in batches
        if not ok:
            allowed = f"1..{batches[-1]}" if isinstance(batches, range) else f"in {list(batches)}"
            raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, t.shape[1:]))}) with batch "
                             f"{allowed}, got {a.shape}")
    elif a.shape != t.shape:
        raise ValueError(f"{what} must have shape {t.shape}, got {a.shape}")
    return c_contiguous(a)


def check_weight(a: Any, v: Variable) -> np.ndarray:
    """``a`` as the C-contiguous array variable ``v`` takes (exact dtype and shape), or a clear error."""
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
    return c_contiguous(a)


_SHOWN = 10  # items listed in one message before "... and N more"


def _shown(items: list[Any]) -> str:
    return repr(items) if len(items) <= _SHOWN else f"{items[:_SHOWN]!r} and {len(items) - _SHOWN} more"


def _looks_like_update(acl: Any, desc: int) -> bool:
    """An update graph has no outputs and one ``*_var_data`` input per variable."""
    mdl = acl.mdl
    n_in = mdl.get_num_inputs(desc)
    return (
        n_in > 0
        and mdl.get_num_outputs(desc) == 0
        and all(mdl.get_input_name_by_index(desc, i).endswith(VAR_SUFFIX) for i in range(n_in))
    )


def _roles(acl: Any, descs: list[int], roles: Mapping[str, int] | None) -> tuple[int, int | None, int]:
    n = len(descs)
    if roles is not None:
        extra = set(roles) - {"infer", "init", "update"}
        idx = [roles.get(k) for k in ("infer", "init", "update")]
        given = [i for i in idx if i is not None]
        if extra or idx[0] is None or idx[2] is None or sorted(given) != list(range(n)):
            raise ValueError(
                f"roles must map 'infer', 'update' (and 'init' for 3 graphs) to the distinct indexes 0..{n - 1}; got "
                f"{dict(roles)}"
            )
        return idx[0], idx[1], idx[2]
    looks = [_looks_like_update(acl, d) for d in descs]
    if n == 3:
        # The standard layout [infer, init, update] is fixed (pyACL documentation); check it.
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


class Description:
    """The bundle's graphs, tensors and variables; built by :meth:`read` at load, immutable after."""

    infer: int  # index of each role among the bundle's graphs
    init: int | None
    update: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    batch_sizes: tuple[int, ...]
    variables: tuple[Variable, ...]
    mb_index: int | None  # the dynamic-batch input ATC adds (None: static batch)
    mb_size: int
    in_sizes: list[int]  # reported byte sizes (the largest batch's) of inputs and outputs
    out_sizes: list[int]

    profile_of: dict[Any, Any]  # rows an infer call gives -> batch size that runs them (0: static; gears: themselves)
    _batches: Sequence[int]  # the row counts an infer call may have (with padding: 1 .. the largest)

    @classmethod
    def read(cls, acl: Any, descs: list[int], roles: Mapping[str, int] | None,
             manifest_vars: list[ManifestVariable] | None, pad_batch: bool = True) -> Description:
        self = cls()
        self.infer, self.init, self.update = _roles(acl, descs, roles)
        self._read_infer(acl, descs[self.infer])
        self._read_variables(acl, descs[self.update], manifest_vars)
        b = self.batch_sizes
        # With padding, any row count up to the largest batch runs on the next batch size up.
        self._batches = range(1, b[-1] + 1) if (b and pad_batch) else b
        self.profile_of = {r: min(x for x in b if x >= r) for r in self._batches} if b else {0: 0}
        if self.profiles:
            self.profile_of = {g: g for g in self.profiles}
        return self

    def _read_infer(self, acl: Any, desc: int) -> None:
        info = unwrap(acl, "acl.mdl.get_dynamic_batch", acl.mdl.get_dynamic_batch(desc))
        batches = sorted(int(b) for b in info["batch"][: info["batchCount"]])
        # ATC adds an input that carries the batch / image size / dims (pyACL documentation); a
        # model without it answers an error here, which only means "static".
        idx, ret = acl.mdl.get_input_index_by_name(desc, ACL_DYNAMIC_TENSOR_NAME)
        self.mb_index = idx if ret == 0 else None
        if batches and self.mb_index is None:
            raise AclError("acl.mdl.get_input_index_by_name", ret, recent_error(acl))
        self.mb_size = acl.mdl.get_input_size_by_index(desc, self.mb_index) if self.mb_index is not None else 0
        self.batch_sizes = tuple(batches)
        self.dynamic: str | None = "batch" if batches else None
        gears: list[tuple[int, ...]] = []
        if self.mb_index is not None and not batches:
            hw = unwrap(acl, "acl.mdl.get_dynamic_hw", acl.mdl.get_dynamic_hw(desc, -1))
            if hw["hwCount"]:
                self.dynamic, gears = "hw", [tuple(int(v) for v in g) for g in hw["hw"][: hw["hwCount"]]]
            else:
                n = unwrap(acl, "acl.mdl.get_input_dynamic_gear_count", acl.mdl.get_input_dynamic_gear_count(desc, -1))
                if n:
                    dl = unwrap(acl, "acl.mdl.get_input_dynamic_dims", acl.mdl.get_input_dynamic_dims(desc, -1, n))
                    self.dynamic, gears = "dims", [tuple(int(v) for v in g["dims"][: g["dimCount"]]) for g in dl]
                else:
                    raise ValueError(f"the infer graph has an {ACL_DYNAMIC_TENSOR_NAME} input but reports no dynamic "
                                     "batch sizes, image sizes or dims gears")
        n_in = acl.mdl.get_num_inputs(desc)
        ins = [tensor_info(acl, desc, i, False) for i in range(n_in) if i != self.mb_index]
        outs = [tensor_info(acl, desc, i, True) for i in range(acl.mdl.get_num_outputs(desc))]
        if batches:
            # Output dims are documented as those of the largest batch ("maximum profile");
            # the batch dim is dim 0 (ATC --dynamic_batch_size). -1 marks it publicly; each
            # batch size's real dims come from get_cur_output_dims when its buffers are built.
            outs = [
                (
                    TensorInfo(t.name, (-1,) + t.shape[1:], t.dtype)
                    if t.shape and t.shape[0] in (-1, batches[-1])
                    else t,
                    n,
                )
                for t, n in outs
            ]
        self.inputs = tuple(t for t, _ in ins)
        self.outputs = tuple(t for t, _ in outs)
        self.in_sizes = [n for _, n in ins]
        self.out_sizes = [n for _, n in outs]
        if not self.outputs:  # also catches a runtime whose bare getter failed (it answers 0)
            raise ValueError(
                "the infer graph reports no outputs; is this bundle's graph order [infer, init, update]? pass roles="
            )
        for t in self.inputs + self.outputs:
            if self.dynamic in ("hw", "dims"):
                bad = [d for d in t.shape if d < -1 or (d == -1 and t in self.outputs)]
            else:
                bad = [d for d in t.shape if d < 0 and not (d == -1 and batches and t.shape[0] == -1)]
                bad += [d for d in t.shape[1:] if d == -1]
            if bad:
                raise ValueError(f"tensor {t.name!r} has dims {t.shape} that this model's dynamic shapes "
                                 f"({self.dynamic or 'none'}) do not explain")
        # Per input: (dtype, {accepted shape: batch it implies, 0 = none}), so the common
        # case of infer() validates with one dict lookup per input.
        self._accept: Sequence[tuple[np.dtype, dict[tuple[int, ...], int]]] = [
            (t.dtype, {t.shape_for(b): b for b in batches} if t.shape and t.shape[0] == -1 else {t.shape: 0})
            for t in self.inputs
        ] if self.dynamic in (None, "batch") else ()
        self._default_batch = batches[-1] if batches else 0
        # Image-size and dims gears: each selects one full set of input shapes.
        self.profiles: dict[Any, list[tuple[int, ...]]] = {}
        for g in gears:
            self.profiles[g] = self._gear_shapes(g)
        self._by_shapes = {tuple(shapes): g for g, shapes in self.profiles.items()}

    def _gear_shapes(self, gear: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The input shapes a gear selects: ``hw`` fills each image input's two -1 dims with
        (height, width); ``dims`` lists every data input's dims in order (ATC --dynamic_dims)."""
        if self.dynamic == "hw":
            out = []
            for t in self.inputs:
                it = iter(gear)
                out.append(tuple(next(it) if d == -1 else d for d in t.shape))
            return out
        shapes, k = [], 0
        for t in self.inputs:
            shape = gear[k: k + len(t.shape)]
            k += len(t.shape)
            if len(shape) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, shape)):
                raise ValueError(f"dims gear {list(gear)} does not fit input {t.name!r} {t.shape}")
            shapes.append(tuple(shape))
        if k != len(gear):
            raise ValueError(f"dims gear {list(gear)} has {len(gear)} dims; the inputs have {k}")
        return shapes

    def mark_dynamic_outputs(self, shapes: Mapping[Any, list[tuple[int, ...]]]) -> None:
        """At load, for image-size/dims models: output dims that differ between gears become -1."""
        if self.dynamic not in ("hw", "dims"):
            return
        per = list(shapes.values())
        self.outputs = tuple(
            TensorInfo(
                t.name, tuple(d if all(s[i][k] == d for s in per) else -1 for k, d in enumerate(per[0][i])), t.dtype
            )
            for i, t in enumerate(self.outputs)
        )

    def _check_gear_inputs(self, arrays: list[np.ndarray]) -> Any:
        key = self._by_shapes.get(tuple(a.shape for a in arrays))
        if key is None:
            listing = "; ".join(f"{list(k)}: {[list(s) for s in v]}" for k, v in self.profiles.items())
            raise ValueError(
                f"input shapes {[a.shape for a in arrays]} match none of the model's "
                f"{'image sizes' if self.dynamic == 'hw' else 'dims gears'} (gear: input shapes): {listing}"
            )
        return key

    def _read_variables(self, acl: Any, desc: int, manifest_vars: list[ManifestVariable] | None) -> None:
        n = acl.mdl.get_num_inputs(desc)
        raw = []
        for i in range(n):
            info, size = tensor_info(acl, desc, i, False)
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
                        problems.append(
                            f"{name!r}: manifest {m.dtype} {m.shape} ({nbytes} B) vs bundle {dt} ({size} B)"
                        )
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
        self.variables = tuple(variables)
        self._var_by_name = {v.name: v for v in variables}
        if len(self._var_by_name) != len(variables):
            raise ValueError("the update graph names two variables alike")

    # -------------------------------------------------------------- checks
    @property
    def accept(self) -> Sequence[tuple[np.dtype, dict[tuple[int, ...], int]]]:
        """Per input: (dtype, {exact shape: the batch size it implies, 0 = static}) — the plain case of
        infer(); empty for image-size / dims gears."""
        return self._accept

    @property
    def default_batch(self) -> int:
        """The batch size that runs inputs without a batch dim (0: static batch)."""
        return self._default_batch

    def check_inputs(self, inputs: tuple[Any, ...]) -> tuple[list[np.ndarray], int]:
        """``infer``'s arguments as arrays in input order, and their row count (0: static batch)."""
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
                raise KeyError(
                    f"infer inputs by name: unknown {unknown}, missing {missing}; the model's inputs are {names}"
                )
            inputs = tuple(given[n] for n in names)
        if len(inputs) != len(specs):
            raise TypeError(
                f"infer takes {len(specs)} input(s) {[t.name for t in specs]} (positionally or as one mapping), got "
                f"{len(inputs)}"
            )
        arrays = [check_array(a, t, f"input {t.name!r}", self._batches) for a, t in zip(inputs, specs)]
        if self.profiles:
            return arrays, self._check_gear_inputs(arrays)
        batch = 0
        if self.batch_sizes:
            batches = {a.shape[0] for a, t in zip(arrays, specs) if t.shape and t.shape[0] == -1}
            if len(batches) > 1:
                raise ValueError(f"all inputs must share one batch size, got {sorted(batches)}")
            batch = batches.pop() if batches else self.batch_sizes[-1]
        return arrays, batch

    def variable(self, key: Any) -> Variable | None:
        """The variable a weight key (index or name) names, or None.

        A name matches with or without TensorFlow's ``:0`` output suffix, so both
        ``{var.name: value}`` from a TF session (``dense/kernel:0``) and checkpoint keys
        (``dense/kernel``) name the same variable, whichever spelling the bundle uses.
        """
        if isinstance(key, str):
            v = self._var_by_name.get(key)
            if v is None:
                v = self._var_by_name.get(key[:-2] if key.endswith(":0") else key + ":0")
            return v
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(self.variables):
            return self.variables[int(key)]
        return None

    def check_weights(self, weights: Any) -> dict[int, np.ndarray]:
        """``update``'s mapping as {variable index: array}; every problem found is reported at once."""
        if not isinstance(weights, Mapping):
            raise TypeError(
                f"update expects a mapping of variable index or name to numpy array, got {type(weights).__name__}"
            )
        if not weights:
            raise ValueError("update got an empty mapping; name at least one variable")
        changed: dict[int, np.ndarray] = {}
        problems: list[tuple[type, str]] = []
        unknown: list[Any] = []  # reported once, where the first one was met, however many there are
        for key, value in weights.items():
            var = self.variable(key)
            if var is None:
                if not unknown:
                    problems.append((UnknownVariableError, ""))
                unknown.append(key)
                continue
            if var.index in changed:
                problems.append((ValueError, f"variable {var.name!r} (index {var.index}) is named twice"))
                continue
            try:
                changed[var.index] = check_weight(value, var)
            except (TypeError, ValueError) as e:
                problems.append((type(e), str(e)))
        if unknown:
            at = next(i for i, (t, m) in enumerate(problems) if t is UnknownVariableError and not m)
            problems[at] = (UnknownVariableError, self._unknown(unknown))
        if problems:
            if len(problems) == 1:
                raise problems[0][0](problems[0][1])
            more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise problems[0][0](
                f"{len(problems)} problems in update: " + "; ".join(m for _, m in problems[:_SHOWN]) + more
            )
        return changed

    def _unknown(self, keys: list[Any]) -> str:
        """One bounded message for every unknown key, with a ``strip_prefix`` hint when a prefix hides the names."""
        names = list(self._var_by_name)
        what = f"unknown variable {keys[0]!r}" if len(keys) == 1 else f"{len(keys)} unknown variables {_shown(keys)}"
        msg = f"{what}; expected an index 0..{len(self.variables) - 1} or one of {_shown(names)}"
        first = next((k for k in keys if isinstance(k, str) and "." in k), None)
        if first is not None:
            prefix = first[: first.index(".") + 1]
            hits = sum(
                1 for k in keys if isinstance(k, str) and k.startswith(prefix) and k[len(prefix) :] in self._var_by_name
            )
            if hits * 2 >= len(keys):
                msg += (f"; {hits} of them match once the prefix {prefix!r} is removed "
                        f"(e.g. load_checkpoint(..., strip_prefix={prefix!r}))")
        return msg
