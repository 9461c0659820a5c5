"""The serve suite's fixtures; its helpers (server processes, weights, ports) are in ``helpers.serve``."""
from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("tritonclient.http")
pytest.importorskip("uvicorn")

from helpers.serve import serve_process  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a module's tests (dynamic batch sizes 1,2,4,8; updates enabled with TOKEN)."""
    with serve_process(tmp_path_factory.mktemp("serve"), "--max-queue-delay-us", "2000") as srv:
        yield srv
