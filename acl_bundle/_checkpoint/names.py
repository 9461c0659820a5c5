"""Checkpoint names onto bundle variables: variable specs, renaming, matching, selection.

Shared by :mod:`acl_bundle.checkpoint` (``.npz`` / ``.safetensors``), :mod:`acl_bundle.tf_checkpoint`
and the watcher; the public names are re-exported by :mod:`acl_bundle.checkpoint`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._archive import Archive, CheckpointError

log = logging.getLogger("acl_bundle")

DEFAULT_MAX_BYTES = 4 << 30  # data file / decoded bytes when no model bounds them
TF_BOUND_FACTOR = 4  # a TF checkpoint copied from a store may hold optimizer slots: this many times limit_for
SHOWN = 10  # names listed in one message before "... and N more"

Rename = Mapping[str, str] | Callable[[str], "str | None"] | None


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's names do not cover the model's variables (or name unknown ones).

    ``unmatched``: checkpoint names (after renaming) that match no variable;
    ``missing``: variable names the checkpoint lacks.
    """

    def __init__(self, message: str, unmatched: list[str], missing: list[str]) -> None:
        super().__init__(message)
        self.unmatched = unmatched
        self.missing = missing


@dataclass(frozen=True)
class NameMatch:
    """How checkpoint names map onto variables.

    ``mapping``: checkpoint name -> variable name for every matched entry;
    ``unmatched``: checkpoint names (as in the file) that match no variable, with what
    they were renamed to; ``missing``: variables the checkpoint lacks.
    """

    mapping: dict[str, str]
    unmatched: list[tuple[str, str]]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.unmatched and not self.missing



def show_names(names: list[str]) -> str:
    """A bounded rendering of a name list."""
    if len(names) <= SHOWN:
        return repr(names)
    return f"{names[:SHOWN]!r} and {len(names) - SHOWN} more"


Spec = tuple["tuple[int, ...] | None", "np.dtype | None"]


class VariableSpecs(dict):
    """{name: (shape, dtype)}, already normalised."""


def variable_specs(variables: Any) -> VariableSpecs:
    """Normalise a model, Variable list or name list to {name: (shape, dtype)}."""
    if isinstance(variables, VariableSpecs):
        return variables
    if hasattr(variables, "variables") and not isinstance(variables, (str, bytes)):
        variables = variables.variables
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Iterable):
        raise TypeError(
            f"variables must be a BundleModel, a list of Variable or a list of names, got {type(variables).__name__}"
        )
    specs = VariableSpecs()
    for v in variables:
        if isinstance(v, str):
            specs[v] = (None, None)
        elif hasattr(v, "name"):
            shape = getattr(v, "shape", None)
            dtype = getattr(v, "dtype", None)
            specs[v.name] = (
                tuple(shape) if shape is not None else None,
                np.dtype(dtype) if dtype is not None else None,
            )
        else:
            raise TypeError(f"variables must hold names or Variable objects, got {type(v).__name__}")
    return specs


def limit_for(variables: Any) -> int:
    """The default size bound for a checkpoint of ``variables``: twice their bytes + 64 MiB.

    (Room for headers, names and some extra entries; ``DEFAULT_MAX_BYTES`` when a
    variable's size is unknown.)
    """
    total = 0
    for shape, dtype in variable_specs(variables).values():
        if shape is None or dtype is None:
            return DEFAULT_MAX_BYTES
        total += math.prod(shape) * dtype.itemsize
    return 2 * total + (64 << 20)


def renamer(rename: Rename, strip_prefix: str | None) -> Callable[[str], str | None]:
    if strip_prefix is not None and not isinstance(strip_prefix, str):
        raise TypeError(f"strip_prefix must be a str, got {type(strip_prefix).__name__}")
    if rename is None:
        fn: Callable[[str], str | None] = lambda n: n  # noqa: E731
    elif isinstance(rename, Mapping):
        table = dict(rename)
        fn = lambda n: table.get(n, n)  # noqa: E731
    elif callable(rename):
        fn = rename
    else:
        raise TypeError(f"rename must be a mapping, a callable or None, got {type(rename).__name__}")

    def apply(name: str) -> str | None:
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix):]
        new = fn(name)
        if new is not None and not isinstance(new, str):
            raise TypeError(f"rename returned {type(new).__name__} for {name!r}; expected a str or None (drop)")
        return new

    return apply


def match_names(
    names: Iterable[str],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
) -> NameMatch:
    """Map checkpoint ``names`` onto ``variables`` (a model, Variables or names).

    ``strip_prefix`` is removed first from names that start with it; ``rename`` then
    maps the result (a mapping: names it lacks stay as they are; a callable: may return
    None to drop the entry on purpose).  Raises CheckpointError if two checkpoint
    names land on one variable.
    """
    specs = variable_specs(variables)
    apply = renamer(rename, strip_prefix)
    mapping: dict[str, str] = {}
    unmatched: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for name in names:
        new = apply(name)
        if new is None:
            continue
        if new not in specs:
            unmatched.append((name, new))
            continue
        if new in taken:
            raise CheckpointError(f"checkpoint names {taken[new]!r} and {name!r} both map to variable {new!r}")
        taken[new] = name
        mapping[name] = new
    missing = [v for v in specs if v not in taken]
    return NameMatch(mapping, unmatched, missing)


def prefix_hint(unmatched: list[tuple[str, str]], specs: Mapping[str, Any]) -> str:
    """``strip_prefix='module.'`` when stripping one leading component makes the names match."""
    for _, renamed in unmatched[:1]:
        if "." in renamed:
            prefix = renamed[: renamed.index(".") + 1]
            hits = sum(1 for _, r in unmatched if r.startswith(prefix) and r[len(prefix):] in specs)
            if hits and hits >= len(unmatched) // 2:
                return f"strip_prefix={prefix!r}"
    return ""


def describe(match: NameMatch, total: int) -> str:
    parts = []
    if match.unmatched:
        shown = [n if n == r else f"{n} (as {r})" for n, r in match.unmatched]
        parts.append(f"{len(shown)} checkpoint name(s) match no variable: {show_names(shown)}")
    if match.missing:
        parts.append(
            f"{len(match.missing)} of {total} variable(s) missing from the checkpoint: {show_names(match.missing)}"
        )
    return "; ".join(parts)


def select_weights(
    arrays: Mapping[str, np.ndarray],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
    allow_partial: bool = False,
    allow_unmatched: bool = False,
    source: str = "checkpoint",
) -> dict[str, np.ndarray]:
    """Return ``{variable name: array}`` from checkpoint ``arrays`` (see :func:`load_checkpoint`).

    With an archive from :func:`verify_checkpoint` (``lazy=True``) the dtypes and
    shapes are checked from the headers and only the matched arrays are read.
    """
    specs = variable_specs(variables)
    match = match_names(arrays, specs, rename=rename, strip_prefix=strip_prefix)
    hint = prefix_hint(match.unmatched, specs)
    if not match.mapping:
        raise CheckpointMismatchError(
            f"{source}: no name matches a variable ({describe(match, len(specs))}); the variables are "
            f"{show_names(list(specs))} "
            f"(use {hint or 'rename= or strip_prefix='} for another naming scheme)",
            [n for n, _ in match.unmatched],
            match.missing,
        )
    bad = (match.missing and not allow_partial) or (match.unmatched and not allow_unmatched)
    if bad:
        hints = []
        if match.missing and not allow_partial:
            hints.append("allow_partial=True to update only the variables present")
        if match.unmatched and not allow_unmatched:
            hints.append(hint or "allow_unmatched=True to ignore extra names, or rename=/strip_prefix=")
        raise CheckpointMismatchError(
            f"{source}: {describe(match, len(specs))} (pass {' or '.join(hints)})",
            [n for n, _ in match.unmatched], match.missing,
        )
    if match.missing or match.unmatched:
        log.warning("%s: %s", source, describe(match, len(specs)))
    problems = []
    lazy = isinstance(arrays, Archive)
    for ck_name, var_name in match.mapping.items():
        if lazy:
            member = arrays.members[ck_name]  # type: ignore[attr-defined]
            got_shape, got_dtype = member.shape, member.dtype
        else:
            a = np.asarray(arrays[ck_name])
            got_shape, got_dtype = a.shape, a.dtype
        shape, dtype = specs[var_name]
        what = var_name if ck_name == var_name else f"{var_name} (checkpoint name {ck_name!r})"
        if dtype is not None and got_dtype != dtype:
            problems.append(f"{what}: dtype {got_dtype}, expected {dtype}")
        elif shape is not None and got_shape != shape:
            problems.append(f"{what}: shape {got_shape}, expected {shape}")
    if problems:
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems[:SHOWN]) + more)
    return {var_name: np.asarray(arrays[ck_name]) for ck_name, var_name in match.mapping.items()}

