"""``acl-bundle serve``: an Open Inference Protocol (KServe v2 / Triton) server for a bundle.

REST (uvicorn + Starlette) and gRPC (grpcio, Triton's ``GRPCInferenceService``) on one
event loop; live weight updates over the model-repository ``load`` route or a plain
``PUT /v2/models/{name}/weights``; dynamic batching; Prometheus metrics.  Needs the
optional extra ``serve`` (``pip install -e '.[serve]'`` in a checkout).  See docs/serving.md.

::

    from acl_bundle.serve import ServeConfig, Server
    with Server(ServeConfig("bundle.om", http_port=0, grpc_port=0)) as s:
        ...   # http://127.0.0.1:{s.http_port}/v2/models/bundle/infer
"""
from __future__ import annotations

from .protocol import ServeError
from .server import ServeConfig, Server

__all__ = ["ServeConfig", "Server", "ServeError"]
