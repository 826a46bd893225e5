"""Checks untrusted JSON against the TypedDicts of `node.status`.

Walking the TypedDict annotations (instead of a hand-written copy of the
schema) keeps the check in step when fields are added to `node.status`.
Unknown keys are dropped: a newer node may add fields this dashboard does not
know, and nothing it does not know should reach the page.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints

from node.dashboard.errors import SchemaMismatch
from node.status import SCHEMA, Snapshot

MAX_STRING = 4096  # no field of the schema needs more; a cap keeps the page bounded


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return get_type_hints(tp)


def check(value: Any, tp: Any, path: str = "$") -> Any:
    """`value` if it matches the type `tp` (ints widened to float where a float is
    expected), else `SchemaMismatch`."""
    origin = get_origin(tp)
    if typing.is_typeddict(tp):
        return _check_dict(value, tp, path)
    if origin in (Union, types.UnionType):
        return _check_union(value, get_args(tp), path)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaMismatch(path, f"expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool):
            raise SchemaMismatch(path, f"expected one of {get_args(tp)}")
        return value
    return _check_scalar(value, tp, path)


def _check_dict(value: Any, tp: type, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaMismatch(path, f"expected an object, got {type(value).__name__}")
    out = {}
    for key, field_tp in _hints(tp).items():
        if key not in value:
            raise SchemaMismatch(f"{path}.{key}", "missing")
        out[key] = check(value[key], field_tp, f"{path}.{key}")
    return out


def _check_union(value: Any, options: tuple[Any, ...], path: str) -> Any:
    if value is None:
        if type(None) in options:
            return None
        raise SchemaMismatch(path, "must not be null")
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return check(value, option, path)
        except SchemaMismatch as exc:
            errors.append(exc)
    raise errors[0]


def _check_scalar(value: Any, tp: Any, path: str) -> Any:
    # bool is an int subclass in Python; JSON true is never a count or a loss
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        if len(value) > MAX_STRING:
            raise SchemaMismatch(path, f"string longer than {MAX_STRING}")
        return value
    if tp is bool and isinstance(value, bool):
        return value
    raise SchemaMismatch(path, f"expected {getattr(tp, '__name__', tp)}, "
                               f"got {type(value).__name__}")


def check_snapshot(value: Any) -> Snapshot:
    """A whole `/api/snapshot` body, schema version included."""
    if isinstance(value, dict) and value.get("schema") != SCHEMA:
        raise SchemaMismatch("$.schema", f"unsupported schema {value.get('schema')!r}, "
                                         f"this dashboard reads {SCHEMA}")
    return cast(Snapshot, check(value, Snapshot))
