"""The reliability suite's fixture: bundle files built once per session (helpers in ``helpers.reliability``)."""
from __future__ import annotations

import pytest

from helpers.reliability import Bundle, build, build_dims, build_hw


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Bundle]:
    """Bundle files: 3-graph with init, 2-graph without init, dynamic batch, no manifest, wider."""
    d = tmp_path_factory.mktemp("reliability_bundles")
    return {
        "init": build(d, "init"),
        "noinit": build(d, "noinit", init=False),
        "dynamic": build(d, "dynamic", batch_sizes=[1, 2, 4]),
        "nomanifest": build(d, "nomanifest", manifest=False),
        "wide": build(d, "wide", sizes=(8, 64, 64, 4)),
        "wide_dynamic": build(d, "wide_dynamic", sizes=(8, 64, 64, 4), batch_sizes=[1, 2, 4]),
        "hw": build_hw(d),
        "dims": build_dims(d),
    }
