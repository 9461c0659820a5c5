"""An update's checks: weight checks before staging, golden checks inside the commit (undone if refused).

See :mod:`acl_bundle.checks` for the checks themselves; this arms them on a staged update.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..checks import Check, Golden, WeightsRefused, run_check
from .buffers import Ledger, Slot, build_slot
from .context import ModelContext
from .description import Description
from .updater import StagedUpdate, Updater

log = logging.getLogger("acl_bundle")


class UnknownPreviousError(ValueError):
    """A golden-checked update changes a variable whose current value is not known on the host."""

    def __init__(self, message: str, variables: list[str]) -> None:
        super().__init__(message)
        self.variables = variables


class Guard:
    """Stages an update with its checks armed; owns the slots golden checks run on (one per batch size)."""

    def __init__(self, ctx: ModelContext, ledger: Ledger, desc: Description, infer_id: int,
                 out_shapes: dict[Any, list[tuple[int, ...]]], updater: Updater) -> None:
        self._ctx, self._acl, self._ledger, self._desc = ctx, ctx.acl, ledger, desc
        self._infer_id, self._out_shapes, self._updater = infer_id, out_shapes, updater
        self._golden_slots: dict[int, Slot] = {}  # under the update lock

    def stage(self, changed: dict[int, np.ndarray], step: int | None, plain: list[Check],
                       goldens: list[Golden], source: str | None) -> StagedUpdate:
        """Weight checks, then stage; arm the golden verify, its undo and the history copy. Update lock held."""
        updater = self._updater
        history = updater.history
        if plain:
            named = {self._desc.variables[i].name: a for i, a in changed.items()}
            try:
                for c in plain:
                    run_check(c, named)
            except WeightsRefused as e:
                updater.count("refused_updates")
                log.info("update%s refused before staging: %s", f" from {source}" if source else "", e)
                raise
        verify = undo = None
        if goldens:
            if not history.enabled:
                raise ValueError("a golden check needs the model's history to undo a refused update: "
                                 "open the model with BundleModel(..., history=N)")
            unknown = history.unknown(changed)
            if unknown:
                raise UnknownPreviousError(
                    f"cannot guard this update with a golden check: the current value of {len(unknown)} variable(s) "
                    f"{unknown[:10]} is not known on the host (no update has set it since load), so a refusal could "
                    "not be undone; apply those variables once without the golden check first", unknown)
            undo = history.current(changed)
            verify = self._verify(goldens)
        kept = history.copy(changed) if history.enabled else None
        staged = updater.stage(changed, step)
        staged.verify, staged.undo, staged.kept, staged.source = verify, undo, kept, source
        return staged

    def _verify(self, goldens: list[Golden]) -> Callable[[], None]:
        """Check each golden input now and build its slot (outside the commit); return the in-commit verify."""
        runs = []
        for g in goldens:
            given = g.inputs if isinstance(g.inputs, (tuple, list)) else (g.inputs,)
            arrays, batch = self._desc.check_inputs(tuple(given))
            slot = self._golden_slots.get(batch)
            if slot is None:
                slot = build_slot(self._acl, self._ledger, self._desc, self._infer_id, batch,
                                  self._out_shapes[batch if self._desc.mb_index is not None else 0])
                self._golden_slots[batch] = slot
            runs.append((g, slot, [np.array(a, copy=True) for a in arrays]))
        ctx, infer_id = self._ctx, self._infer_id

        def verify() -> None:  # inside the commit: the update graph ran, no reader is admitted
            for g, slot, arrays in runs:
                outs = slot.run(ctx, infer_id, arrays)
                g.judge(outs[0] if len(outs) == 1 else tuple(outs))

        return verify
