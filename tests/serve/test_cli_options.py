"""``acl-bundle serve`` offers the watcher options its messages mention, and phrases them as options (issue 23)."""

from __future__ import annotations

import json
import time

import numpy as np

from acl_bundle import write_checkpoint
from helpers import reference
from helpers.serve import build_bundle, new_weights, serve_process


def _wait_for(srv, text, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return text in srv.log()


def _infer(srv, x):
    req = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, raw, _ = srv.request("POST", f"/v2/models/{srv.name}/infer", json.dumps(req).encode())
    assert status == 200, raw
    reply = json.loads(raw)
    return np.array(reply["outputs"][0]["data"], np.float32).reshape(x.shape[0], -1), reply["parameters"]


def test_strip_prefix_and_rename_reach_the_watcher_and_hints_name_the_options(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _, w0 = build_bundle(tmp_path, "probe")
    w = new_weights(w0, seed=7)
    # a DataParallel-style checkpoint: every name under "module.", and one more renamed (after the prefix is stripped)
    named = {f"module.{k}": v for k, v in w.items() if k != "fc1.bias"} | {"module.head.b": w["fc1.bias"]}
    write_checkpoint(ckpts, named, step=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve_process(tmp_path / "a", "--watch", str(ckpts), "--poll-interval", "0.05") as srv:
        assert _wait_for(srv, "skipping"), srv.log()
        log = srv.log()
        # the hint is for this interface: options, not Python keyword arguments
        assert "--strip-prefix" in log or "--rename" in log, log
        assert "strip_prefix=" not in log and "rename=" not in log, log
    with serve_process(
        tmp_path / "b",
        "--watch",
        str(ckpts),
        "--poll-interval",
        "0.05",
        "--require-weights",
        "--strip-prefix",
        "module.",
        "--rename",
        "head.b=fc1.bias",
    ) as srv:
        x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
        y, params = _infer(srv, x)
        assert params == {"weight_version": 1, "checkpoint_step": 4}
        np.testing.assert_allclose(y, reference(x, w), rtol=1e-5, atol=1e-5)


def test_a_step_reset_warning_names_the_option(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _, w0 = build_bundle(tmp_path, "probe")
    write_checkpoint(ckpts, new_weights(w0, seed=1), step=8)
    with serve_process(tmp_path, "--watch", str(ckpts), "--poll-interval", "0.05", "--require-weights") as srv:
        write_checkpoint(ckpts, new_weights(w0, seed=2), step=2)  # a restarted trainer
        assert _wait_for(srv, "--allow-step-reset"), srv.log()
        assert "allow_step_reset=True" not in srv.log()


def test_watch_options_without_watch_are_refused(tmp_path):
    import subprocess
    import sys

    om, _ = build_bundle(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "acl_bundle", "serve", str(om), "--strip-prefix", "module.", "--protocol", "tf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr == "acl-bundle: error: --strip-prefix, --protocol apply to --watch; give --watch DIR\n"
