"""Exceptions and the one helper that checks every ACL return code."""
from __future__ import annotations

from typing import Any

from ._constants import CODES, error_name

#: What a bare ``create_*`` call's NULL handle is reported as (its only failure signal).
NULL_HANDLE = CODES["ACL_ERROR_BAD_ALLOC"]


class AclError(RuntimeError):
    """An ACL call returned a non-zero code.

    Attributes: ``func`` (dotted pyACL name, e.g. ``"acl.mdl.execute"``), ``code``
    (the integer ``aclError``), ``name`` (its symbolic name) and ``detail`` (the
    runtime's own message from ``acl.get_recent_err_msg()`` when it has one).
    """

    def __init__(self, func: str, code: int, detail: str = "") -> None:
        self.func = func
        self.code = int(code)
        self.name = error_name(self.code)
        self.detail = detail
        super().__init__(code_message(func, self.code, detail))


class BackendNotFoundError(ImportError):
    """Neither pyACL nor a selected simulator backend is available."""


class ModelClosedError(RuntimeError):
    """The BundleModel was closed; no further calls are possible."""


class InterpreterShutdownError(ModelClosedError):
    """A model load was refused because the Python interpreter is shutting down (its models are being released)."""


class UnknownVariableError(KeyError):
    """A weight key names no variable of the bundle."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AclCleanupWarning(RuntimeWarning):
    """Releasing an ACL resource failed during teardown; the resource may be leaked."""


def code_message(func: str, code: int, detail: str = "") -> str:
    """The one way a return code becomes text: ``func returned CODE (NAME)[: detail]``."""
    msg = f"{func} returned {code} ({error_name(code)})"
    return f"{msg}: {detail}" if detail else msg


def null_handle(acl: Any, func: str) -> AclError:
    """The error for a ``create_*`` call that returned a NULL handle."""
    detail = recent_error(acl)
    return AclError(func, NULL_HANDLE, "returned a NULL handle" + (f": {detail}" if detail else ""))


def extra_hint(extra: str) -> str:
    """How to get an optional extra: acl_bundle is installed from its repository (it is not on PyPI)."""
    return f"install acl_bundle with its '{extra}' extra from a checkout of the repository: pip install -e '.[{extra}]'"


def recent_error(acl: Any) -> str:
    """Return ``acl.get_recent_err_msg()`` or ``""`` if the runtime has none."""
    get = getattr(acl, "get_recent_err_msg", None)
    if get is None:
        return ""
    try:
        msg = get()
    except Exception:  # a diagnostics helper must never mask the real error
        return ""
    return msg.strip() if isinstance(msg, str) else ""


def check(acl: Any, func: str, ret: int) -> None:
    """Raise :class:`AclError` unless ``ret`` is 0."""
    if ret != 0:
        raise AclError(func, ret, recent_error(acl))


def unwrap(acl: Any, func: str, result: tuple) -> Any:
    """Split a pyACL ``(value..., ret)`` tuple: raise on error, else return the value(s)."""
    *values, ret = result
    if ret != 0:
        raise AclError(func, ret, recent_error(acl))
    return values[0] if len(values) == 1 else tuple(values)
