"""``acl-bundle inspect`` and ``acl-bundle demo``."""
from __future__ import annotations

import json

import pytest

from acl_bundle.cli import main


def test_inspect_lists_graphs_io_and_variables(make_bundle, capsys):
    om, w = make_bundle(batch_sizes=[1, 4])
    assert main(["inspect", str(om), "--sim"]) == 0
    out = capsys.readouterr().out
    assert "3 graphs: infer (model id" in out and "init graph: present" in out
    assert "batch sizes: 1, 4" in out
    assert "  x     float32  [N, 8]  -" in out
    lines = out.splitlines()
    assert "variables (4, 848 bytes; shapes from" in out
    rows = [ln.split() for ln in lines if ln.strip()[:1].isdigit()]
    assert rows == [["0", "fc0.weight", "float32", "[8,", "16]", "512"], ["1", "fc0.bias", "float32", "[16]", "64"],
                    ["2", "fc1.weight", "float32", "[16,", "4]", "256"], ["3", "fc1.bias", "float32", "[4]", "16"]]
    assert sum(v.nbytes for v in w.values()) == 848


def test_inspect_json_without_init(make_bundle, capsys):
    om, w = make_bundle(init=False)
    assert main(["inspect", str(om), "--json", "--sim"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["has_init"] is False
    assert [g["role"] for g in info["graphs"]] == ["infer", "update"]
    assert [(v["name"], v["shape"], v["nbytes"]) for v in info["variables"]] == \
           [(k, list(a.shape), a.nbytes) for k, a in w.items()]
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 8], "nbytes": 32}]


@pytest.mark.parametrize("content, pattern", [
    (None, "no such bundle file: "),
    (b"junk", "cannot load .* as a bundle \\(simulator\\): acl.mdl.bundle_load_from_file returned 145006"),
])
def test_inspect_errors_are_one_line(tmp_path, capsys, content, pattern):
    import re

    p = tmp_path / "b.om"
    if content is not None:
        p.write_bytes(content)
    assert main(["inspect", str(p), "--sim"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.match(r"^acl-bundle: error: " + pattern, err)


def test_demo_command_runs_small_and_reports(capsys):
    assert main(["demo", "--ticks", "24", "--fast", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "tick   drift  live acc" in out
    assert "-> the live model tracks the drift" in out
    assert "12 written, 12 applied, 0 skipped" in out


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--ticks", "5"]) == 2
    assert capsys.readouterr().err == "acl-bundle: error: --ticks must be at least 20, got 5\n"


def test_help_lists_new_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "demo" in out


_HEAVY = ("numpy", "onnx", "onnxruntime", "acl_bundle.model", "acl_bundle.checkpoint", "acl_bundle.watcher",
          "uvicorn", "starlette", "grpc", "tritonclient", "tensorflow")


def test_help_imports_nothing_heavy():
    # A fresh interpreter (this one has numpy loaded); every registered command, so new ones are covered.
    import subprocess
    import sys

    code = (
        "import sys\nfrom acl_bundle import cli\n"
        "names = list(cli.build_parser()._subparsers._group_actions[0].choices)\n"
        "for argv in [['--help']] + [[n, '--help'] for n in names]:\n"
        "    assert cli.main(argv) == 0, argv\n"
        f"print(len(names), sorted(m for m in {_HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n, heavy = out.stdout.rstrip().splitlines()[-1].split(" ", 1)
    assert int(n) >= 4 and heavy == "[]"


def test_package_is_light_until_a_name_is_used():
    import subprocess
    import sys

    code = ("import sys, acl_bundle\nprint('numpy' in sys.modules, 'acl_bundle.model' in sys.modules)\n"
            "acl_bundle.BundleModel\nprint('acl_bundle.model' in sys.modules, sorted(acl_bundle.__all__) == "
            "sorted(n for n in acl_bundle.__all__ if hasattr(acl_bundle, n)))\n"
            "try:\n    acl_bundle.no_such_name\nexcept AttributeError as e:\n    print(type(e).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True", "True", "AttributeError"], out.stderr
