"""Shared by the sharded-engine test and its rank processes."""

from __future__ import annotations

from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec

RUN = "sharded"


def engine_spec(model: str) -> EngineSpec:
    # a high lr so that the inner steps move θ well past round-off, clipping included
    return EngineSpec(model=model, seed=0, inner=InnerConfig(lr=1e-2, warmup_steps=1,
                                                             total_steps=100, grad_clip=0.5))
