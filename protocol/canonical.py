"""Canonical msgpack: one byte string per value, checked on decode.

Only nil, bool, int, str, bytes and arrays are used on the wire (no maps, no
floats), so `msgpack.packb` with `use_bin_type=True` is canonical by itself;
`unpack_canonical` re-encodes what it decoded and rejects any other spelling,
which makes signatures over these bytes unambiguous.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import (
    DecodeError,
    NonCanonicalError,
    OversizedError,
    TruncatedError,
    WrongTypeError,
)

WireValue = Any  # None | bool | int | str | bytes | list[WireValue]


def pack(value: WireValue) -> bytes:
    """Encode `value` canonically (lists, never tuples or maps, on the wire)."""
    return msgpack.packb(value, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


def unpack(data: bytes, *, max_bytes: int, max_bin_len: int, max_array_len: int = 4096,
           max_str_len: int = 256, canonical: bool = True) -> WireValue:
    """Decode one msgpack value under caps; raise a typed `DecodeError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WrongTypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise OversizedError(f"message of {len(data)} bytes exceeds cap {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bin_len,
            max_str_len=max_str_len,
            max_array_len=max_array_len,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the message") from exc
    except (TypeError, UnicodeDecodeError, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"malformed msgpack: {type(exc).__name__} {exc}") from exc
    except (msgpack.OutOfData, msgpack.exceptions.BufferFull) as exc:
        raise TruncatedError("message ends early") from exc
    except ValueError as exc:
        # msgpack signals a broken cap with ValueError("... exceeds max_..._len")
        text = str(exc)
        if "exceeds max" in text:
            raise OversizedError(text) from exc
        if "truncated" in text.lower() or "incomplete" in text.lower():
            raise TruncatedError(text) from exc
        raise DecodeError(text) from exc
    if canonical and pack(value) != bytes(data):
        raise NonCanonicalError("bytes are not the canonical encoding of their value")
    return value


def expect_list(value: WireValue, length: int, what: str) -> list[WireValue]:
    if not isinstance(value, list) or len(value) != length:
        raise WrongTypeError(f"{what}: expected an array of {length} items")
    return value


def expect_int(value: WireValue, what: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    # bool is an int subclass; reject it explicitly
    if not isinstance(value, int) or isinstance(value, bool):
        raise WrongTypeError(f"{what}: expected an integer")
    if not lo <= value <= hi:
        raise WrongTypeError(f"{what}: {value} outside [{lo}, {hi}]")
    return value


def expect_bytes(value: WireValue, what: str, *, length: int | None = None,
                 max_len: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise WrongTypeError(f"{what}: expected bytes")
    if length is not None and len(value) != length:
        raise WrongTypeError(f"{what}: expected {length} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise OversizedError(f"{what}: {len(value)} bytes exceeds cap {max_len}")
    return value


def expect_str(value: WireValue, what: str, *, max_len: int) -> str:
    if not isinstance(value, str):
        raise WrongTypeError(f"{what}: expected a string")
    if len(value) > max_len:
        raise OversizedError(f"{what}: {len(value)} characters exceeds cap {max_len}")
    return value
