from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.window import Schedule


def test_blocks_windows_and_epochs() -> None:
    sched = Schedule(genesis_block=100, blocks_per_window=10, windows_per_epoch=4)
    assert sched.window_of_block(100) == 0
    assert sched.window_of_block(109) == 0
    assert sched.window_of_block(110) == 1
    assert sched.first_block(3) == 130
    assert sched.last_block(3) == 139
    assert sched.epoch_of_window(7) == 1
    assert list(sched.windows_of_epoch(1)) == [4, 5, 6, 7]
    for window in range(20):
        assert sched.window_of_block(sched.first_block(window)) == window
        assert sched.window_of_block(sched.last_block(window)) == window


def test_invalid_inputs_are_typed() -> None:
    with pytest.raises(ProtocolError):
        Schedule(genesis_block=0, blocks_per_window=0, windows_per_epoch=1)
    sched = Schedule(genesis_block=100, blocks_per_window=10, windows_per_epoch=4)
    with pytest.raises(ProtocolError):
        sched.window_of_block(99)
    with pytest.raises(ProtocolError):
        sched.first_block(-1)


def test_release_block_splits_a_window_into_commit_and_release() -> None:
    sched = Schedule(genesis_block=100, blocks_per_window=10, windows_per_epoch=4)
    assert sched.release_block(2, 0.5) == 125
    assert sched.release_block(2, 0.01) == 121  # at least one block to commit in
    assert sched.release_block(2, 0.99) == 129  # at least one block to release in
    assert [b for b in range(115, 135) if sched.committed_in_time(2, b, 0.5)] == list(
        range(120, 125))
    for phase in (0.0, 1.0, -0.5):
        with pytest.raises(ProtocolError):
            sched.release_block(2, phase)
    with pytest.raises(ProtocolError):
        Schedule(genesis_block=0, blocks_per_window=1, windows_per_epoch=1).release_block(0, 0.5)
