"""The statistics extension: per-model request and execution counters in Triton's schema.

``GET /v2/models[/{m}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics`` answer what
:class:`ModelStats` has recorded since the server started, as Triton's
``model_statistics`` extension does (``tritonclient``'s ``get_inference_statistics``
and ``perf_analyzer`` read it):

- ``inference_stats.success`` / ``fail``: infer requests answered / refused after they
  named this model, with their duration in the server (from the request read and parsed
  to its outputs ready; the front end's encoding of the response is not in it);
- ``queue``: waiting for a batch slot; ``compute_input``: decoding the request's tensors
  and stacking its batch; ``compute_infer``: the ``BundleModel.infer`` call of its batch;
  ``compute_output``: splitting that batch's outputs back to the requests;
- ``inference_count``: rows inferred (a request of batch 4 counts 4), ``execution_count``:
  model executions (one per batch);
- ``batch_stats``: per executed batch size (padding included; 1 for a model without a
  batch dimension), the batch's input / infer / output time, counted once per execution.

Durations are nanoseconds summed over the counted events, as in Triton.
"""
from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["DURATIONS", "ModelStats"]

#: The InferStatistics durations a request contributes to, in Triton's order.
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH = ("compute_input", "compute_infer", "compute_output")


class ModelStats:
    """Counters of one served model (updated on the event loop, read from any thread)."""

    def __init__(self, name: str, version: str = "1") -> None:
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self._d = {k: [0, 0] for k in DURATIONS}  # name -> [count, ns]
        self._batches: dict[int, dict[str, list[int]]] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def request(self, ok: bool, seconds: float, *, rows: int = 0, queue: float = 0.0, compute_input: float = 0.0,
                compute_infer: float = 0.0, compute_output: float = 0.0) -> None:
        """One infer request ended (``ok``: answered); the compute parts only for answered ones."""
        with self._lock:
            d = self._d
            _add(d["success" if ok else "fail"], seconds)
            if ok:
                _add(d["queue"], queue)
                _add(d["compute_input"], compute_input)
                _add(d["compute_infer"], compute_infer)
                _add(d["compute_output"], compute_output)
                self.inference_count += max(rows, 1)
            self.last_inference_ms = int(time.time() * 1e3)

    def execution(self, size: int, compute_input: float, compute_infer: float, compute_output: float) -> None:
        """One model execution (a batch of padded ``size``; 0 = no batch dimension, reported as 1)."""
        with self._lock:
            self.execution_count += 1
            b = self._batches.get(max(size, 1))
            if b is None:
                b = self._batches[max(size, 1)] = {k: [0, 0] for k in _BATCH}
            _add(b["compute_input"], compute_input)
            _add(b["compute_infer"], compute_infer)
            _add(b["compute_output"], compute_output)

    def as_json(self) -> dict[str, Any]:
        """This model's entry of ``model_stats`` (Triton's JSON schema; uint64 fields as integers)."""
        with self._lock:
            return {
                "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self._d.items()},
                "batch_stats": [{"batch_size": size, **{k: {"count": c, "ns": ns} for k, (c, ns) in b.items()}}
                                for size, b in sorted(self._batches.items())],
                "memory_usage": [],
            }


def _add(slot: list[int], seconds: float) -> None:
    slot[0] += 1
    slot[1] += int(seconds * 1e9)
