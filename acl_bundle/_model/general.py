"""infer's general path: padding, mappings, a batch size's first call, a commit pending — as the gate's reader.

It never runs in the main thread (``BundleModel`` hands a main-thread call to its worker),
so it may use the gate's condition; it claims the slot it uses, as the fast path does.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .buffers import Ledger, Slot, build_slot
from .context import ModelContext, restore_context
from .description import Description
from .gate import Gate
from .updater import Updater, WeightVersion


class GeneralPath:
    """The general infer of one model (the fast path is :mod:`.fastinfer`)."""

    def __init__(self, ctx: ModelContext, ledger: Ledger, d: Description, infer_id: int,
                 out_shapes: dict[Any, list[tuple[int, ...]]], updater: Updater, gate: Gate) -> None:
        self._ctx, self._ledger, self._d, self._infer_id = ctx, ledger, d, infer_id
        self._out_shapes, self._updater, self._gate = out_shapes, updater, gate

    def read(
        self, job: Any, batch: int, arrays: list[np.ndarray], rows: int
    ) -> tuple[list[np.ndarray], WeightVersion]:
        """infer's general path as a reader of the gate (never in the main thread: BundleModel._protect)."""
        gate = self._gate
        slot = gate.begin_read(batch)
        ctx, restore, held = self._ctx, 0, None
        try:
            restore = ctx.enter()
            if slot is None:
                slot = self._new_slot(batch)  # claimed
            else:
                gate.claim(slot, sys._getframe())  # a fast-path reader may still be on it
            held = slot
            if rows == batch:
                outs = slot.run(ctx, self._infer_id, arrays)
            else:
                outs = slot.run_padded(ctx, self._infer_id, arrays, rows)
            slot.reads += 1
            version = self._updater.current  # inside the reader section: no commit can run
        finally:
            if restore:
                restore_context(ctx.acl, restore)
            if held is not None:
                gate.release(held)
            gate.end_read(batch, slot)
        return outs, version

    def _new_slot(self, batch: int) -> Slot:
        """A freed slot of ``batch``, or a new one while fewer than ``max_concurrency`` exist (claimed)."""
        gate = self._gate
        slot = gate.acquire_slot(batch)
        if slot is not None:
            gate.claim(slot, sys._getframe(1))
            return slot
        try:
            slot = build_slot(self._ctx.acl, self._ledger, self._d, self._infer_id, batch,
                              self._out_shapes[batch if self._d.mb_index is not None else 0])
        except BaseException:
            gate.build_failed(batch)
            raise
        gate.claim(slot, sys._getframe(1))  # the reader's frame (_read), which releases it
        gate.register(batch, slot)
        return slot
