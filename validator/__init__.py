"""gradmesh validator: cheap checks, seeded LossScore, OpenSkill rating, commit-reveal.

The per-window scorer is `validator.scorer.Validator` (with `ValidatorConfig`,
`GlobalView`, `WindowReport`); the async service that follows θ_global like a
miner and posts weights is `validator.service.ValidatorService`; state in
`validator.state`, the pure scoring functions in `validator.scoring`. It may
import the runtime, engine, outer, mesh, chain and protocol, never sim or cli,
and scores through the engine's evaluator: it never touches θ itself.

Names are loaded on first use, so `import validator.errors` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Rejection": "validator.errors", "ValidatorError": "validator.errors",
    "GlobalView": "validator.scorer", "Validator": "validator.scorer",
    "ValidatorConfig": "validator.scorer", "WindowReport": "validator.scorer",
    "Arrival": "validator.source", "BoardSource": "validator.source",
    "ContributionSource": "validator.source", "ValidatorState": "validator.state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'validator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
