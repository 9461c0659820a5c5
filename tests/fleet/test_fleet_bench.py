"""fleet-bench's publish modes: what each sets on the fleet, and a clear refusal of a bad one."""
from __future__ import annotations

import pytest

from acl_bundle.bench.fleet import mode_settings


def test_modes_set_the_commit_lead():
    assert mode_settings("calls") == {"commit_lead": 0.0}
    assert mode_settings("barrier") == {"commit_lead": 0.004}
    assert mode_settings("barrier:15") == {"commit_lead": 0.015}


@pytest.mark.parametrize("bad", ["barrier:0", "barrier:x", "barrier:2000", "compiled", "calls:3"])
def test_a_bad_mode_is_refused_naming_what_is_expected(bad):
    with pytest.raises(ValueError, match=rf"unknown publish mode '{bad}': expected one of \['barrier', 'calls'\] "
                                         r"or barrier:MS"):
        mode_settings(bad)
