"""Window and head records: round trips, and typed errors for anything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.runtime.records import BadRecordValueError, HeadRecord, WindowRecord, head_key, window_key
from protocol import canonical


def test_window_record_round_trip() -> None:
    record = WindowRecord(7, b"\1" * 32, ((b"\2" * 20, b"\3" * 32), (b"\4" * 20, b"\5" * 32)))
    assert WindowRecord.decode(record.encode()) == record


def test_head_record_round_trip_including_none_values() -> None:
    head = HeadRecord(-1, b"\1" * 32, -1, b"", "16Uiu2HAm", ("/ip4/127.0.0.1/tcp/1/p2p/x",))
    assert HeadRecord.decode(head.encode()) == head
    full = HeadRecord(12, b"\1" * 32, 12, bytes([9]) * 32, "peer", ())
    assert HeadRecord.decode(full.encode()) == full


def test_keys_are_distinct_per_window_and_the_head_slot() -> None:
    a = b"\7" * 20
    assert window_key("r", 3, a).path() != head_key("r", a).path()


@pytest.mark.parametrize("value", [
    [2, 1, b"\0" * 32, []],  # unknown version
    [1, 1, b"\0" * 31, []],  # short digest
    [1, 1, b"\0" * 32, [[b"\0" * 20]]],  # input without a hash
    [1, -1, b"\0" * 32, []],
])
def test_malformed_window_records_are_typed_errors(value: list[object]) -> None:
    with pytest.raises(BadRecordValueError):
        WindowRecord.decode(canonical.pack(value))  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for codec in (WindowRecord, HeadRecord):
        with contextlib.suppress(BadRecordValueError):  # anything else fails the test
            codec.decode(data)  # type: ignore[attr-defined]
