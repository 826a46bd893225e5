"""Untrusted snapshot JSON against the `node.status` schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from node.dashboard.errors import DashboardError, SchemaMismatch
from node.dashboard.sample import sample_snapshot
from node.dashboard.validate import MAX_STRING, check_snapshot


def _good() -> dict[str, Any]:
    good: dict[str, Any] = json.loads(json.dumps(sample_snapshot(windows=3)))
    return good


def test_a_good_snapshot_passes_unchanged() -> None:
    good = _good()
    assert check_snapshot(copy.deepcopy(good)) == good


def test_ints_widen_to_float_and_unknown_keys_drop() -> None:
    snap = _good()
    snap["generated_at"] = 5
    snap["extra"] = "<script>"
    snap["nodes"][0]["history"][0]["future_field"] = 1
    out = check_snapshot(snap)
    assert out["generated_at"] == 5.0
    assert isinstance(out["generated_at"], float)
    assert "extra" not in out
    assert "future_field" not in out["nodes"][0]["history"][0]


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda s: s["nodes"][0].__setitem__("peers", True), "$.nodes[0].peers"),
    (lambda s: s["nodes"][0].__setitem__("peers", "3"), "$.nodes[0].peers"),
    (lambda s: s["nodes"][1].__setitem__("role", "admin"), "$.nodes[1].role"),
    (lambda s: s["nodes"][0]["history"][1].__setitem__("heldout_loss", "low"),
     "$.nodes[0].history[1].heldout_loss"),
    (lambda s: s["nodes"][0].pop("address"), "$.nodes[0].address"),
    (lambda s: s.__setitem__("nodes", {}), "$.nodes"),
    (lambda s: s["chain"].__setitem__("aggregation_set", [1, None]),
     "$.chain.aggregation_set[1]"),
    (lambda s: s["chain"]["balances"][0].__setitem__("stake_wei", 1.5),
     "$.chain.balances[0].stake_wei"),
    (lambda s: s["nodes"][3]["scores"][0].__setitem__("reason", "x" * (MAX_STRING + 1)),
     "$.nodes[3].scores[0].reason"),
    (lambda s: s.__setitem__("run", None), "$.run"),
])
def test_bad_fields_are_located(mutate: Any, path: str) -> None:
    snap = _good()
    mutate(snap)
    with pytest.raises(SchemaMismatch) as info:
        check_snapshot(snap)
    assert info.value.path == path
    assert isinstance(info.value, DashboardError)


def test_nullable_fields_accept_null() -> None:
    snap = _good()
    snap["chain"] = None
    snap["nodes"][0]["history"][0]["heldout_loss"] = None
    assert check_snapshot(snap)["chain"] is None


@pytest.mark.parametrize("value", [[], "snapshot", 1, None, {"schema": 2}])
def test_wrong_top_level_or_schema(value: Any) -> None:
    with pytest.raises(SchemaMismatch):
        check_snapshot(value)
