"""A fleet of serving replicas on Ray that switch to new weights together (optional extra ``ray``: ``pip install -e
'.[ray]'`` in a checkout).

::

    fleet = Fleet("bundle.om", replicas=4, npus_per_replica=1)
    fleet.publish({"fc0.weight": w}, step=1200)      # two-phase: all stage, then all commit
    y, step, replica = fleet.infer(x)                 # which step produced y, and where

Each replica is a Ray actor (its own process) owning one :class:`~acl_bundle.BundleModel`.
``publish`` puts the weights into the Ray object store once, asks every ready replica to
*stage* them (validate + host->device copy while serving goes on), and only when every
one has staged asks all to *commit*.  If any replica fails or times out while staging,
all abort and the fleet keeps the previous step.

Failure policy (docs/fleet.md): a replica that dies, fails, or does not answer within
the timeout of a publish phase, a catch-up or ``replica_steps`` is *evicted*: reported by name in the error, killed
(``ray.kill``, so a slow one cannot come back serving a stale step), and left out of
routing and of every later publish.  ``add_replica`` starts a new one (same name or a
new one), which is not routed until it has applied the fleet's latest weights from
the object store.  A stage failure aborts the publish; a replica lost *after* every
replica staged (the decision to commit is taken) does not: the others commit, and
the error says the fleet is at the new step.
"""
from __future__ import annotations

from .coordinator import Fleet, Inference, PublishResult
from .errors import FleetError, NoReadyReplicaError, PublishError
from .publisher import Publisher
from .replica import ReplicaActor as ReplicaActor
from .transport import ObjectStoreTransport, Transport

__all__ = ["Fleet", "FleetError", "Inference", "NoReadyReplicaError", "ObjectStoreTransport", "PublishError",
           "PublishResult", "Publisher", "Transport"]
# ReplicaActor (the actor body, which the fleet benchmark starts alone) stays importable here, not in __all__.
