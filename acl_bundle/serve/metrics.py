"""Prometheus metrics of one server (its own registry, served at ``GET /metrics``)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UPDATE = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class Metrics:
    """Every metric the server exports; names start with ``acl_bundle_``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("acl_bundle_requests", "Requests by protocol, endpoint and outcome (HTTP status code)",
                                ["protocol", "endpoint", "code"], registry=r)
        self.request_seconds = Histogram("acl_bundle_request_seconds", "Request latency in the server",
                                         ["protocol", "endpoint"], buckets=_LATENCY, registry=r)
        self.queue_seconds = Histogram(
            "acl_bundle_queue_seconds",
            "Time an infer request waited for its batch to start",
            buckets=_LATENCY,
            registry=r,
        )
        self.compute_seconds = Histogram("acl_bundle_compute_seconds", "Time of one BundleModel.infer call (one batch)",
                                         buckets=_LATENCY, registry=r)
        sizes = tuple(float(2 ** i) for i in range(11))  # 1 .. 1024
        self.batch_size = Histogram("acl_bundle_batch_size", "Batch size of each infer call (padding included)",
                                    buckets=sizes, registry=r)
        self.batch_rows = Histogram("acl_bundle_batch_rows", "Request rows in each infer call (padding excluded)",
                                    buckets=sizes, registry=r)
        self.weight_version = Gauge("acl_bundle_weight_version", "Committed weight updates since load", registry=r)
        self.checkpoint_step = Gauge("acl_bundle_checkpoint_step", "Step of the last checkpoint the watcher applied",
                                     registry=r)
        self.ready = Gauge("acl_bundle_ready", "1 when the server is ready to serve", registry=r)
        self.updates = Counter("acl_bundle_updates", "Weight updates by source and outcome",
                               ["source", "outcome"], registry=r)
        self.update_bytes = Counter("acl_bundle_update_bytes", "Weight bytes applied by committed updates", registry=r)
        self.stage_seconds = Histogram("acl_bundle_update_stage_seconds", "Update stage (validate + host->device copy)",
                                       buckets=_UPDATE, registry=r)
        self.commit_seconds = Histogram("acl_bundle_update_commit_seconds",
                                        "Update commit (the pause inference sees)", buckets=_UPDATE, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
