"""Dynamic shapes: the gears of a model (ATC ``--dynamic_batch_size``, ``--dynamic_image_size``,
``--dynamic_dims``) and how the ``ascend_mbatch_shape_data`` input selects one.

The ``set_dynamic_*`` calls write the chosen gear's values into that input's device buffer
the way GE does (hicann/ge ``runtime/v1/executor/ge_executor.cc``: SetDynamicBatchSize
:375, SetDynamicImageSize :434 height then width, SetDynamicDims :515 one value per
dynamic dim; each value as uint64 when the buffer holds 8 bytes per value, else uint32,
and a buffer of less than 4 bytes per value is 145012); ``execute`` reads them back.
Model descriptions report -1 for the dynamic dims, sizes of the largest gear and the output
dims of the largest gear ("maximum profile"); ``get_cur_output_dims`` those of the gear
last set or executed.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .format import ModelFile, TensorSpec


@dataclass(frozen=True)
class Dynamic:
    """The gears of one graph: ``kind`` "batch" | "hw" | "dims", ``gears`` the values each selects."""

    kind: str
    gears: tuple[tuple[int, ...], ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    gear_outputs: tuple[tuple[tuple[int, ...], ...], ...] = ()  # hw/dims: output shapes per gear

    @classmethod
    def of(cls, mf: ModelFile, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> Dynamic | None:
        if not mf.dynamic:
            return None
        go = tuple(tuple(tuple(s) for s in gear) for gear in mf.gear_outputs)
        return cls(mf.dynamic, tuple(mf.gears), inputs, outputs, go)

    @property
    def width(self) -> int:
        """Values written to the ascend_mbatch_shape_data input (1 batch, 2 height+width, n dims)."""
        return len(self.gears[0])

    def input_shapes(self, g: int) -> list[tuple[int, ...]]:
        gear = self.gears[g]
        if self.kind == "batch":
            return [tuple(gear[0] if d == -1 else d for d in t.shape) for t in self.inputs]
        if self.kind == "hw":  # every image input takes (height, width)
            return [_fill(t.shape, iter(gear)) for t in self.inputs]
        values = iter(gear)  # dims: the -1 dims of all inputs, in order
        return [_fill(t.shape, values) for t in self.inputs]

    def output_shapes(self, g: int) -> list[tuple[int, ...]]:
        if self.kind == "batch":
            b = self.gears[g][0]
            return [tuple(b if d == -1 else d for d in t.shape) for t in self.outputs]
        return [tuple(s) for s in self.gear_outputs[g]]

    def max_input_bytes(self, i: int) -> int:
        return max(self.inputs[i].nbytes_of(self.input_shapes(g)[i]) for g in range(len(self.gears)))

    def max_output_bytes(self, i: int) -> int:
        return max(self.outputs[i].nbytes_of(self.output_shapes(g)[i]) for g in range(len(self.gears)))

    def max_output_dims(self, i: int) -> list[int]:
        """Output dims of the "maximum profile": per dim the largest value over the gears (our choice)."""
        shapes = [self.output_shapes(g)[i] for g in range(len(self.gears))]
        return [max(s[k] for s in shapes) for k in range(len(shapes[0]))]

    def find(self, values: tuple[int, ...]) -> int | None:
        try:
            return self.gears.index(tuple(values))
        except ValueError:
            return None

    def dims_values(self, all_dims: list[int]) -> tuple[tuple[int, ...] | None, str]:
        """The dynamic values of a set_input_dynamic_dims ``dims`` list (all input dims, in input order).

        GE's GetCurDynamicDims (ge_executor.cc:585): the count must equal all data input dims and
        the static ones must match, else 145012.
        """
        flat = [d for t in self.inputs for d in t.shape]
        if len(all_dims) != len(flat):
            return None, f"dims has {len(all_dims)} values, the inputs have {len(flat)} dims in all"
        picked = []
        for k, (want, got) in enumerate(zip(flat, all_dims)):
            if want == -1:
                picked.append(int(got))
            elif want != got:
                return None, f"dims[{k}] is {got} but that input dim is static {want}"
        return tuple(picked), ""

    def all_dims(self, g: int) -> list[int]:
        """The full dims list of gear ``g`` as get_input_dynamic_dims reports it."""
        return [d for shape in self.input_shapes(g) for d in shape]


def _fill(shape: tuple[int, ...], values) -> tuple[int, ...]:  # noqa: ANN001 - an iterator of ints
    return tuple(next(values) if d == -1 else d for d in shape)


def write_values(addr: int, size: int, values: tuple[int, ...]) -> None:
    """Write gear values into the mbatch buffer as GE does: uint64 each when they fit, else uint32."""
    wide = size >= 8 * len(values)
    ctype = ctypes.c_uint64 if wide else ctypes.c_uint32
    for k, v in enumerate(values):
        ctype.from_address(addr + k * ctypes.sizeof(ctype)).value = v


def values_view(addr: int, size: int, n: int) -> ctypes.Array | None:
    """The ``n`` gear values of an mbatch buffer as a ctypes array over its memory (int64 if it holds 8 bytes each,
    else uint32), or None if it is too small.  ``tuple(view)`` reads the current values."""
    if size >= 8 * n:
        return (ctypes.c_int64 * n).from_address(addr)
    if size >= 4 * n:
        return (ctypes.c_uint32 * n).from_address(addr)
    return None


def read_values(addr: int, size: int, n: int) -> tuple[int, ...] | None:
    """The ``n`` gear values in an mbatch buffer (uint64 if it holds 8 bytes each, else uint32), or None."""
    view = values_view(addr, size, n)
    return None if view is None else tuple(view)
