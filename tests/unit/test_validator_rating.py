"""OpenSkill rating, final score, weights (ramp + reserve) and sampling."""

from __future__ import annotations

from chain.client import WEIGHT_SCALE
from validator import rating
from validator.rating import WeightPolicy


def test_rate_window_orders_by_score() -> None:
    new = rating.rate_window({}, {1: 0.3, 2: 0.1, 3: -0.2})
    assert new[1][0] > new[2][0] > new[3][0]
    assert rating.rate_window({}, {1: 0.3}) == {1: (rating.MU0, rating.SIGMA0)}
    tied = rating.rate_window({}, {1: 0.1, 2: 0.1, 3: 0.0})
    assert abs(tied[1][0] - tied[2][0]) < 1e-9


def test_scores_within_the_tolerance_share_a_rank() -> None:
    scores = {1: 0.0100, 2: 0.0090, 3: 0.0070, 4: 0.0040, 5: -0.01, 6: float("nan")}
    assert rating.tiers(scores, 0.0) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}
    # the median positive score is 0.009 (width 0.00225): 1 and 2 tie, 3 starts a tier
    assert rating.tiers(scores, 0.25) == {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
    fair = rating.rate_window({}, {1: 0.0100, 2: 0.0092, 3: -0.01}, tolerance=0.25)
    assert fair[1] == fair[2]
    assert fair[2][0] > fair[3][0]


def test_final_score_and_slash() -> None:
    assert rating.final_score(30, 2, 0.0, 1.0) == 0.0
    assert rating.final_score(30, 2, 0.5, 1.0) > rating.final_score(20, 2, 0.5, 1.0) > 0
    assert rating.slash(1.0) == 0.75


def test_weights_ramp_reserve_and_fixed_point() -> None:
    scores = {u: 10.0 - u * 0.1 for u in range(35)}
    scores[40] = 0.0
    scores[41] = float("nan")
    w = dict(rating.weights(scores))
    assert len(w) == 30  # 20 top + 10 reserve; zero and nan scorers get nothing
    assert sum(w.values()) <= WEIGHT_SCALE
    assert all(0 < v <= WEIGHT_SCALE for v in w.values())
    top = sum(w[u] for u in range(20))
    assert abs(top / WEIGHT_SCALE - 0.9) < 1e-3
    assert all(w[u] >= w[u + 1] for u in range(29))
    alone = dict(rating.weights({1: 2.0, 2: 1.0}, WeightPolicy(top_n=20)))
    assert sum(alone.values()) > WEIGHT_SCALE - 3  # empty reserve: top tier takes all


def test_sample_by_bins_is_seeded_and_covers_tiers() -> None:
    ordinals = {u: float(u) for u in range(40)}
    a = rating.sample_by_bins(ordinals, 8, seed=3)
    assert a == rating.sample_by_bins(ordinals, 8, seed=3)
    assert len(a) == 8
    assert min(a) < 10
    assert max(a) >= 30
    assert rating.sample_by_bins(ordinals, 100, seed=3) == list(range(40))
