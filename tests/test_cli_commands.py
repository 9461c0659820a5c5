"""The command registry and the first-contact defects of issue 23's item 6 (each test fails on the old CLI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acl_bundle.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("acl-bundle: error: "), err
    return lines[0]


def test_every_command_module_is_registered_and_its_docstring_is_its_help(capsys):
    from acl_bundle.cli import registry

    names = [name for _module, _cls, name in registry.COMMANDS]
    modules = sorted(
        p.stem for p in (ROOT / "acl_bundle" / "cli").glob("*.py") if p.stem not in ("__init__", "base", "registry")
    )
    assert sorted(m for m, _c, _n in registry.COMMANDS) == modules  # one module per command, all registered
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in registry.load_commands():
        assert command.name in names and command.summary() in " ".join(top.split())


def test_a_command_whose_extra_is_missing_is_listed_and_says_why(monkeypatch, capsys):
    from acl_bundle.cli import base

    real = base.missing_extra
    monkeypatch.setattr(
        base,
        "missing_extra",
        lambda extra: "needs the 'serve' extra (uvicorn is not installed)" if extra == "serve" else real(extra),
    )
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "with live weight updates [needs the 'serve' extra (uvicorn is not installed)]" in text
    assert main(["serve", "--help"]) == 0
    assert "pip install -e '.[serve]'" in capsys.readouterr().out


def test_a_command_module_that_fails_to_import_is_listed_with_the_reason(monkeypatch, capsys):
    from acl_bundle.cli import registry

    monkeypatch.setattr(registry, "COMMANDS", registry.COMMANDS + [("no_such_module", "X", "broken")])
    assert main(["--help"]) == 0
    assert "broken" in capsys.readouterr().out
    assert main(["broken"]) == 2
    assert "broken is unavailable: ModuleNotFoundError" in _error_line(capsys)


@pytest.mark.parametrize(
    "argv, what", [(["serve", "{om}"], "acl-bundle serve"), (["serve-bench", "--quick"], "serve-bench")]
)
def test_serve_without_the_extra_names_the_extra(argv, what, make_bundle, monkeypatch, capsys):
    om, _ = make_bundle()
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.setitem(sys.modules, "acl_bundle.serve.server", None)
    from acl_bundle.cli import base

    real = base.missing_extra
    monkeypatch.setattr(base, "missing_extra", lambda extra: "x" if extra == "serve" else real(extra))
    assert main([a.format(om=om) for a in argv]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"acl-bundle: error: {what} needs the 'serve' extra") and "pip install -e '.[serve]'" in line
    assert "No module named 'uvicorn'" not in line.split(":", 2)[2].split("(")[0]


def test_bench_help_lists_exactly_the_scenarios_bench_runs(capsys):
    from acl_bundle import bench
    from acl_bundle.cli.bench import SCENARIO_HELP

    assert sorted(SCENARIO_HELP) == sorted(bench.SCENARIOS)
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    lo, hi = min(bench.SCENARIOS), max(bench.SCENARIOS)
    assert f"scenarios {lo}-{hi}" in " ".join(text.split()) and f"({lo}-{hi})" in text
    listed = [int(m) for m in re.findall(r"^\s+(\d+)\s{2}", text, re.M)]
    assert listed == sorted(bench.SCENARIOS)


def test_every_option_of_every_command_has_help(capsys):
    from acl_bundle.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"acl-bundle {name} {action.option_strings[0]} has no help"


def test_demo_dir_and_plot_treat_a_missing_parent_alike(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert main(["demo", "--ticks", "20", "--fast", "--dir", str(missing)]) == 2
    assert f"--dir {missing}: directory {missing.parent} does not exist" in _error_line(capsys)
    assert not missing.parent.exists()
    assert main(["demo", "--ticks", "20", "--fast", "--plot", str(missing / "x.png")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_bench_from_the_folder_holding_a_clone_named_acl_bundle(tmp_path):
    """The clone's folder (no __init__.py) in the working directory used to shadow the package in the bench's
    child interpreters: 'cannot import name __version__'."""
    (tmp_path / "acl_bundle").symlink_to(ROOT, target_is_directory=True)
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
        f"sys.path.insert(0, {str(ROOT)!r}); from acl_bundle.cli import main; "
        "sys.exit(main(['bench', '--quick', '--only', '9', '--no-progress']))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ACL_BUNDLE_BACKEND")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cannot import name" not in r.stderr and "acl-bundle --help vs python -c pass" in r.stdout


def test_library_hints_are_phrased_for_the_command_line():
    from acl_bundle.cli.serve import CONFIG_NAMES, cli_phrasing

    assert (
        cli_phrasing("use rename= or strip_prefix= for another naming scheme")
        == "use --rename or --strip-prefix for another naming scheme"
    )
    assert cli_phrasing("try strip_prefix='module.'") == "try --strip-prefix 'module.'"
    assert cli_phrasing("(pass allow_step_reset=True)") == "(pass --allow-step-reset)"
    assert (
        cli_phrasing("choose one with protocol='tf' or 'acl_bundle'")
        == "choose one with --protocol 'tf' or 'acl_bundle'"
    )
    assert cli_phrasing("http_port must be 0..65535", CONFIG_NAMES) == "--http-port must be 0..65535"
    assert cli_phrasing("the instances of a class") == "the instances of a class"  # bare words only for config errors


def test_a_tf_metagraph_given_as_a_checkpoint_is_named_for_what_it_is(make_bundle, tmp_path):
    from acl_bundle import BundleModel, CheckpointError, load_checkpoint

    om, _ = make_bundle()
    meta = tmp_path / "model.ckpt-40.meta"
    meta.write_bytes(b"\x0a\x00")
    with BundleModel(om) as m, pytest.raises(CheckpointError) as ei:
        load_checkpoint(meta, m)
    msg = str(ei.value)
    assert "is a TensorFlow MetaGraph" in msg and "model.ckpt-40'" in msg and ".npz" not in msg


def test_python_warnings_are_one_line_each_and_printed_once(make_bundle, monkeypatch, capsys):
    import warnings

    from acl_bundle import AclCleanupWarning
    from acl_bundle.cli import inspect as inspect_cmd

    om, _ = make_bundle()
    real = inspect_cmd.describe

    def noisy(*a, **k):
        for _ in range(2):
            warnings.warn(
                "BundleModel.close: acl.rt.free returned 507899\nsecond line", AclCleanupWarning, stacklevel=1
            )
        return real(*a, **k)

    monkeypatch.setattr(inspect_cmd, "describe", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["inspect", str(om)]) == 0
    err = capsys.readouterr().err
    assert err == "acl-bundle: warning: BundleModel.close: acl.rt.free returned 507899 second line\n", err


def test_serve_names_a_missing_bundle_before_choosing_a_backend(tmp_path, monkeypatch, capsys):
    pytest.importorskip("uvicorn")
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "acl", None)
    assert main(["serve", str(tmp_path / "missing.om")]) == 2
    assert _error_line(capsys) == f"acl-bundle: error: no such bundle file: {tmp_path / 'missing.om'}"
