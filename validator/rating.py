"""OpenSkill Plackett-Luce rating, the final score and the weight vector.

* each window, the evaluated miners are ranked by LossScore (mean of the own and
  random relative gains) and rated with `openskill.models.PlackettLuce`; scores
  within a tolerance of their tier's best tie (`tiers`), so equally good updates
  do not drift apart on measurement noise;
* positive score = T·softplus(ordinal / T) (T = 4): monotone in the ordinal
  (μ − 3σ) and > 0 even for fresh ratings, so the data and sync factors decide
  whether a miner earns at all;
* final = positive × data_factor(BMA, age) × sync (0 during the warm-up); a miss
  (missing, late, invalid, copy) multiplies the running score by 0.75 instead;
* weights: the top `top_n` positive scorers share `1 − reserve_share` in proportion
  to score × a linear ramp (1.0 at rank 0 down to 0.5 at rank top_n−1), the next
  `reserve_m` share `reserve_share` in proportion to score; an empty reserve
  leaves everything to the top tier. Fixed point, floor, each ≤ WEIGHT_SCALE.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from openskill.models import PlackettLuce

from chain.client import WEIGHT_SCALE

MU0 = 25.0
SIGMA0 = MU0 / 3.0
SOFTPLUS_T = 4.0


@dataclass(frozen=True)
class WeightPolicy:
    top_n: int = 20
    reserve_m: int = 10
    reserve_share: float = 0.1
    ramp_floor: float = 0.5
    min_score: float = 1e-9


def tiers(scores: Mapping[int, float], tolerance: float) -> dict[int, int]:
    """Rank (1 = best) per uid, where scores closer than `tolerance` × the median
    positive score to the best of their tier share it: equal work measured with noise
    ties instead of ranking by the noise. Pure: sorted by (−score, uid), one pass."""
    positive = sorted(v for v in scores.values() if v > 0.0 and math.isfinite(v))
    width = tolerance * positive[len(positive) // 2] if positive else 0.0
    out: dict[int, int] = {}
    top: float | None = None
    rank = 0
    worst_last = {u: -v if math.isfinite(v) else math.inf for u, v in scores.items()}
    for uid in sorted(scores, key=lambda u: (worst_last[u], u)):
        value = scores[uid]
        if top is None or not value >= top - width or not math.isfinite(value):
            rank, top = rank + 1, value
        out[uid] = rank
    return out


def rate_window(ratings: Mapping[int, tuple[float, float]], scores: Mapping[int, float],
                tolerance: float = 0.0) -> dict[int, tuple[float, float]]:
    """New (μ, σ) of every uid in `scores`, ranked by score (higher is better; scores
    within `tolerance` of their tier's best share its rank, see `tiers`). Uids absent
    from `ratings` start at (25, 25/3)."""
    if len(scores) < 2:
        return {uid: ratings.get(uid, (MU0, SIGMA0)) for uid in scores}
    model = PlackettLuce()
    rank_of = tiers(scores, tolerance)
    uids = sorted(scores, key=lambda u: (rank_of[u], u))
    teams = [[model.rating(mu=ratings.get(u, (MU0, SIGMA0))[0],
                           sigma=ratings.get(u, (MU0, SIGMA0))[1])] for u in uids]
    ranks = [float(rank_of[u]) for u in uids]
    rated = model.rate(teams, ranks=ranks)
    return {u: (float(team[0].mu), float(team[0].sigma)) for u, team in zip(uids, rated,
                                                                           strict=True)}


def ordinal(mu: float, sigma: float) -> float:
    return mu - 3.0 * sigma


def positive_score(mu: float, sigma: float) -> float:
    x = ordinal(mu, sigma) / SOFTPLUS_T
    return SOFTPLUS_T * (x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x)))


def final_score(mu: float, sigma: float, data: float, sync: float) -> float:
    return positive_score(mu, sigma) * data * sync


def slash(score: float, factor: float = 0.75) -> float:
    return score * factor


def weights(scores: Mapping[int, float], policy: WeightPolicy = WeightPolicy()
            ) -> list[tuple[int, int]]:
    """(uid, fixed-point weight) for every uid with a positive weight, by uid."""
    ranked = sorted((u for u, s in scores.items() if s > policy.min_score and math.isfinite(s)),
                    key=lambda u: (-scores[u], u))
    top, reserve = ranked[: policy.top_n], ranked[policy.top_n: policy.top_n + policy.reserve_m]
    raw: dict[int, float] = {}
    span = max(1, policy.top_n - 1)
    top_share = 1.0 - policy.reserve_share if reserve else 1.0
    top_raw = {u: scores[u] * (1.0 - (1.0 - policy.ramp_floor) * r / span)
               for r, u in enumerate(top)}
    total = math.fsum(top_raw.values())
    for u, v in top_raw.items():
        raw[u] = top_share * v / total
    if reserve:
        rtotal = math.fsum(scores[u] for u in reserve)
        for u in reserve:
            raw[u] = policy.reserve_share * scores[u] / rtotal
    out = [(u, min(WEIGHT_SCALE, math.floor(w * WEIGHT_SCALE))) for u, w in raw.items()]
    return sorted((u, w) for u, w in out if w > 0)


def sample_by_bins(ordinals: Mapping[int, float], budget: int, seed: int,
                   bins: int = 4) -> list[int]:
    """At most `budget` uids: rating bins (by ordinal) are visited round-robin, a
    seeded random pick from each, so every tier gets evaluated."""
    uids = sorted(ordinals, key=lambda u: (-ordinals[u], u))
    if budget >= len(uids):
        return sorted(uids)
    size = max(1, -(-len(uids) // bins))
    groups = [uids[i:i + size] for i in range(0, len(uids), size)]
    rng = random.Random(seed)
    for g in groups:
        rng.shuffle(g)
    picked: list[int] = []
    while len(picked) < budget:
        for g in groups:
            if g and len(picked) < budget:
                picked.append(g.pop())
    return sorted(picked)
