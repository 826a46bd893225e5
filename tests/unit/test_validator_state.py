"""SQLite state: one transaction per window, idempotent plans, run binding."""

from __future__ import annotations

from pathlib import Path

import pytest

from validator.errors import StateError
from validator.state import MinerState, Plan, ResultRow, ValidatorState


def test_window_round_trip_and_atomicity(tmp_path: Path) -> None:
    st = ValidatorState(tmp_path / "s.db", "run")
    miners = [MinerState(1, 26.0, 7.0, 0.05, 1, 0.4)]
    rows = [ResultRow(0, 1, "scored", "", 0.1, 0.2, 1.0, 0.4)]
    st.save_window(0, miners, rows, 3, 1, Plan(0, (1,), (1000,), b"s" * 32))
    with pytest.raises(StateError):
        st.save_window(0, miners, rows, 3, 1)
    bad = [ResultRow(1, 1, "scored", "", 0.1, 0.2, 1.0, 0.4)] * 2  # duplicate key: fails
    with pytest.raises(Exception, match="UNIQUE"):
        st.save_window(1, [MinerState(1, 99.0)], bad, 1, 1)
    st.close()
    again = ValidatorState(tmp_path / "s.db", "run")
    assert again.miners() == {1: miners[0]}  # the failed window left nothing behind
    assert not again.has_window(1)
    assert again.last_window() == 0
    assert again.results(0) == rows
    again.add_plan(Plan(0, (2,), (5,), b"x" * 32))  # an existing plan is never replaced
    assert again.plan(0) == Plan(0, (1,), (1000,), b"s" * 32)
    again.set_status(0, "committed")
    assert again.plans(("committed",))[0].epoch == 0
    with pytest.raises(StateError):
        again.set_status(0, "bogus")
    with pytest.raises(StateError):
        ValidatorState(tmp_path / "s.db", "other-run")
