"""The docs are tested: every ```python and ```bash example in README.md and docs/ runs, links resolve.

An HTML comment on the line right before a fence says how its block runs:

- none: the block runs as it stands, in a fresh temporary directory;
- ``<!-- setup: NAME -->``: first the setup ``NAME`` below makes the files and names the block
  uses (e.g. ``bundle``: a ``bundle.om`` of an 8-16-4 MLP built with ``acl_bundle.sim.builder``);
  a setup may also point literal addresses of the example (``127.0.0.1:8000``,
  ``https://s3.example.com``, ``s3://bucket``) at the servers it started;
- ``<!-- setup: continue -->``: the block runs after the one before it in the same file, in the
  same directory, namespace and setup (one test for both);
- ``<!-- not-run: REASON -->``: the block does not run (a reason is required); a Python one must
  still compile.

Python blocks run in this process (the root conftest's leak check applies to them); shell blocks
run with ``bash -euo pipefail`` and ``acl-bundle`` meaning this checkout's ``python -m acl_bundle``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[sim]' && .venv/bin/acl-bundle demo"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*(setup|not-run)\s*:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directive: str | None = None  # "setup" or "not-run"
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with the directive on the line before its fence."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
            j += 1
        assert j < len(lines), f"{page.name}:{i + 1}: fence never closed"
        code = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
        d = _DIRECTIVE.match(lines[i - 1]) if i else None
        out.append(Block(page, i + 1, lang, code, d.group(1) if d else None, d.group(2) if d else ""))
        i = j + 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]
EXAMPLES = [b for b in ALL if b.lang in ("python", "bash", "sh", "shell", "console")]


def _groups() -> list[list[Block]]:
    """Runnable examples, a ``setup: continue`` block joined to the one before it."""
    groups: list[list[Block]] = []
    for b in EXAMPLES:
        if b.directive == "not-run":
            continue
        if b.directive == "setup" and b.arg == "continue":
            assert groups and groups[-1][-1].page == b.page, f"{b.where}: 'setup: continue' follows no example"
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


# --------------------------------------------------------------------------- setups
@dataclass
class Env:
    """What a setup gives its block: names for Python blocks, text substitutions for any block."""

    cwd: Path
    names: dict[str, Any] = field(default_factory=dict)
    subs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _mlp_bundle(directory: Path, name: str = "bundle", *, batch_sizes=None, seed: int = 0):
    from acl_bundle.sim import builder, models

    model, weights = models.mlp((8, 16, 4), seed=seed)
    om, _ = builder.save(builder.build_bundle(model, batch_sizes=batch_sizes), directory / f"{name}.om")
    return Path(om), weights


def _new_weights(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.uniform(-0.1, 0.1, v.shape)).astype(v.dtype) for k, v in weights.items()}


@contextlib.contextmanager
def setup_bundle(e: Env) -> Iterator[None]:
    """``bundle.om`` (+ manifest): an MLP 8-16-4, variables fc0.weight, fc0.bias, fc1.weight, fc1.bias."""
    _mlp_bundle(e.cwd)
    yield


@contextlib.contextmanager
def setup_model(e: Env) -> Iterator[None]:
    """``bundle.om``, and ``m`` open on it (history=2); ``x`` (1, 8); ``w`` new weights; w0, b0, w1, b1 of them."""
    from acl_bundle import BundleModel

    _, weights = _mlp_bundle(e.cwd)
    w = _new_weights(weights, 1)
    with BundleModel(e.cwd / "bundle.om", history=2) as m:
        e.names.update(m=m, x=np.ones((1, 8), np.float32), w=w, w0=w["fc0.weight"], b0=w["fc0.bias"],
                       w1=w["fc1.weight"], b1=w["fc1.bias"])
        yield


@contextlib.contextmanager
def setup_checkpoints(e: Env) -> Iterator[None]:
    """``bundle.om``, an empty ``ckpts/``, w0/b0, and ``model.safetensors`` of a PyTorch-style ``module.`` prefix."""
    import safetensors.numpy

    _, weights = _mlp_bundle(e.cwd)
    (e.cwd / "ckpts").mkdir()
    w = _new_weights(weights, 2)
    e.names.update(w0=w["fc0.weight"], b0=w["fc0.bias"])
    safetensors.numpy.save_file({f"module.{k}": v for k, v in w.items()}, str(e.cwd / "model.safetensors"))
    yield


@contextlib.contextmanager
def setup_s3(e: Env) -> Iterator[None]:
    """A moto S3 server with a fresh bucket for ``s3://bucket``; KEY, SECRET, ``weights`` and ``m`` open."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    import s3help
    from acl_bundle import BundleModel

    _, weights = _mlp_bundle(e.cwd)
    server = s3help.MotoServer(e.cwd)
    try:
        bucket = s3help.make_bucket(server.endpoint)
        e.subs.update({"https://s3.example.com": server.endpoint, "s3://bucket/": f"s3://{bucket}/"})
        with BundleModel(e.cwd / "bundle.om") as m:
            e.names.update(KEY="testing", SECRET="testing", weights=_new_weights(weights, 3), m=m)
            yield
    finally:
        server.stop()


@contextlib.contextmanager
def setup_serve(e: Env) -> Iterator[None]:
    """``model``: a BundleModel open on an MLP bundle (the serve extra must be installed)."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("grpc")
    from acl_bundle import BundleModel

    om, _ = _mlp_bundle(e.cwd, "mlp", batch_sizes=[1, 2, 4, 8])
    with BundleModel(om) as model:
        e.names["model"] = model
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def setup_server(e: Env) -> Iterator[None]:
    """``acl-bundle serve mlp.om`` as a process on free ports (the example's 8000/8001 point at them).

    Updates on with the token in ``token`` (also the name ``token``); w0, b0, b1; ``weights.npz``.
    """
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    pytest.importorskip("uvicorn")
    import http.client
    import signal

    om, weights = _mlp_bundle(e.cwd, "mlp", batch_sizes=[1, 2, 4, 8])
    token = "docs-token-0123456789abcdef"
    (e.cwd / "token").write_text(token + "\n")
    (e.cwd / "token").chmod(0o600)
    w = _new_weights(weights, 4)
    np.savez(e.cwd / "weights.npz", **{"fc0.weight": w["fc0.weight"], "fc0.bias": w["fc0.bias"]})
    e.names.update(token=token, w0=w["fc0.weight"], b0=w["fc0.bias"], b1=w["fc1.bias"])
    http_port, grpc_port = _free_port(), _free_port()
    e.subs.update({"127.0.0.1:8000": f"127.0.0.1:{http_port}", "127.0.0.1:8001": f"127.0.0.1:{grpc_port}"})
    log = e.cwd / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "acl_bundle", "serve", str(om), "--sim", "--update-token-file",
                                 "token", "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                                stdout=f, stderr=subprocess.STDOUT, cwd=e.cwd)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"server not ready in 60 s: {log.read_text()}"
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.05)
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


@contextlib.contextmanager
def setup_ray(e: Env) -> Iterator[None]:
    """``bundle.om`` and a local Ray cluster (the session's if one is up, else one for this block)."""
    ray = pytest.importorskip("ray")
    _mlp_bundle(e.cwd)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def setup_tf(e: Env) -> Iterator[None]:
    """A TF1 trainer's graph (x:0 -> dense -> y:0) as the default graph, ``sess`` and ``tf``; ``model.om`` built
    from it with tf_builder; ``m`` open on it; TF1 ``Saver`` checkpoints in ``ckpts/`` (last: model.ckpt-1200)."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from acl_bundle import BundleModel
    from acl_bundle.sim import builder, tf_builder

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 8], name="x")
        with tf1.variable_scope("dense"):
            k = tf1.get_variable("kernel", [8, 4], initializer=tf1.glorot_uniform_initializer(seed=1))
            b = tf1.get_variable("bias", [4], initializer=tf1.constant_initializer(0.1))
        y = tf.identity(tf.matmul(x, k) + b, name="y")
        saver = tf1.train.Saver()
        sess = tf1.Session(graph=graph)
        try:
            sess.run(tf1.global_variables_initializer())
            frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [y.op.name])
            mf = tf_builder.build_bundle_from_tf(frozen, inputs=["x:0"], outputs=["y:0"], batch_sizes=[1, 4])
            builder.save(mf, e.cwd / "model.om")
            (e.cwd / "ckpts").mkdir()
            for step in (1100, 1200):
                sess.run(b.assign(b + 1.0))
                saver.save(sess, str(e.cwd / "ckpts" / "model.ckpt"), global_step=step)
            with BundleModel(e.cwd / "model.om") as m:
                e.names.update(tf=tf, sess=sess, m=m)
                yield
        finally:
            sess.close()


SETUPS: dict[str, Callable[[Env], contextlib.AbstractContextManager[None]]] = {
    "bundle": setup_bundle,
    "model": setup_model,
    "checkpoints": setup_checkpoints,
    "s3": setup_s3,
    "serve": setup_serve,
    "server": setup_server,
    "ray": setup_ray,
    "tf": setup_tf,
}


def _apply(text: str, subs: dict[str, str]) -> str:
    for a, b in subs.items():
        text = text.replace(a, b)
    return text


def _run_shell(block: Block, e: Env) -> None:
    shim = e.cwd / ".docs-bin"
    shim.mkdir(exist_ok=True)
    exe = shim / "acl-bundle"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m acl_bundle \"$@\"\n")
    exe.chmod(0o755)
    env = {**os.environ, **e.env, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", _apply(block.code, e.subs)], cwd=e.cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{block.where} exited {r.returncode}\n{r.stdout}\n{r.stderr}"


def _mark(group: list[Block]) -> list[pytest.MarkDecorator]:
    return [pytest.mark.ray] if group[0].arg == "ray" else []


@pytest.mark.parametrize("group", [pytest.param(g, id=g[0].where, marks=_mark(g)) for g in _groups()])
def test_doc_example_runs(group: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = group[0]
    name = first.arg if first.directive == "setup" else None
    assert name is None or name in SETUPS, f"{first.where}: unknown setup {name!r} (known: {sorted(SETUPS)})"
    monkeypatch.chdir(tmp_path)
    e = Env(tmp_path)
    with SETUPS[name](e) if name else contextlib.nullcontext():
        namespace: dict[str, Any] = {"__name__": "__docs__", **e.names}
        for block in group:
            if block.lang == "python":
                exec(compile(_apply(block.code, e.subs), block.where, "exec"), namespace)
            else:
                _run_shell(block, e)


# --------------------------------------------------------------------------- what cannot run says why
def test_every_example_is_python_or_shell_and_every_directive_is_well_formed() -> None:
    problems = []
    for b in ALL:
        if b.directive and b.lang not in ("python", "bash"):
            problems.append(f"{b.where}: a directive on a ```{b.lang} block, which never runs")
        if b.lang in ("sh", "shell", "console"):
            problems.append(f"{b.where}: write ```bash, not ```{b.lang}")
        if b.directive == "not-run" and len(b.arg) < 15:
            problems.append(f"{b.where}: not-run needs a reason, got {b.arg!r}")
        if b.directive == "setup" and b.arg not in SETUPS and b.arg != "continue":
            problems.append(f"{b.where}: unknown setup {b.arg!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in EXAMPLES
                                   if b.directive == "not-run" and b.lang == "python"])
def test_examples_that_do_not_run_still_compile(block: Block) -> None:
    compile(block.code, block.where, "exec")


def test_the_docs_have_examples_that_run() -> None:
    """A parser that found nothing would make every test above pass vacuously."""
    runs = [b for g in _groups() for b in g]
    assert len(runs) >= 12 and {b.lang for b in runs} == {"python", "bash"}
    assert {b.page.name for b in runs} >= {"README.md", "model.md", "checkpoints.md", "serving.md"}


# --------------------------------------------------------------------------- README, CI, links
def test_readme_is_short_and_has_the_two_commands_verbatim() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    shell = [b.code.strip() for b in blocks(ROOT / "README.md") if b.lang == "bash"]
    assert DEMO_COMMAND in shell and TEST_COMMAND in shell


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    commands = [c for c in ci if not c.startswith(("set ", "cd "))]
    assert commands == [TEST_COMMAND], commands


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return h.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            fence = not fence
        m = re.match(r"^#{1,6} (.*)", line)
        if m and not fence:
            out.add(_slug(m.group(1)))
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_resolves() -> None:
    bad = []
    for page in PAGES:
        for url in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", url):
                continue
            path, _, frag = url.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                bad.append(f"{page.name}: {url} (no such file)")
            elif frag and target.suffix == ".md" and frag not in _anchors(target):
                bad.append(f"{page.name}: {url} (no heading #{frag})")
            elif ROOT not in target.parents and target != ROOT:
                bad.append(f"{page.name}: {url} (outside the repository)")
    assert not bad, "\n".join(bad)


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[a](p.md#title) [b](p.md#nope) `[c](x.md)` [d](gone.md)\n")
    assert _links(page) == ["p.md#title", "p.md#nope", "gone.md"]
    assert _anchors(page) == {"title"}


def test_no_page_points_outside_the_project() -> None:
    for page in PAGES:
        assert "../shared" not in page.read_text(), page.name


def test_there_is_a_page_per_subsystem() -> None:
    names = {p.name for p in PAGES}
    assert names >= {"model.md", "checkpoints.md", "tensorflow.md", "serving.md", "fleet.md", "cli.md",
                     "simulator.md", "benchmarks.md", "reliability.md", "hardware.md", "development.md"}
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in names - {"README.md"} if f"(docs/{n})" not in readme]
    assert not missing, f"README's table does not link {missing}"


def test_every_path_in_the_development_tree_exists() -> None:
    text = (ROOT / "docs" / "development.md").read_text()
    tree = text[text.index("## The tree"):]
    tree = tree[tree.index("```") + 3:]
    tree = tree[:tree.index("```")]
    paths = [line.split()[0] for line in tree.strip().splitlines()]
    assert len(paths) > 30
    twice = sorted({p for p in paths if paths.count(p) > 1})
    assert not twice, f"docs/development.md lists these twice: {twice}"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/development.md names paths that do not exist: {missing}"
    listed = {p.rstrip("/") for p in paths}
    unlisted = [str(d.parent.relative_to(ROOT)) for d in sorted((ROOT / "acl_bundle").rglob("*/__init__.py"))
                if str(d.parent.relative_to(ROOT)) not in listed]
    assert not unlisted, f"packages missing from the tree in docs/development.md: {unlisted}"
