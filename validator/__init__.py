"""gradmesh validator: cheap checks, seeded LossScore, OpenSkill rating, commit-reveal.

Public entry points: `Validator` (service.py), `ValidatorConfig`, `GlobalView`,
`ValidatorState` (state.py), `ContributionSource`/`BoardSource`/`Arrival`
(source.py) and the pure scoring functions in `validator.scoring`.
"""

from validator.errors import Rejection, ValidatorError
from validator.scorer import GlobalView, Validator, ValidatorConfig, WindowReport
from validator.source import Arrival, BoardSource, ContributionSource
from validator.state import ValidatorState

__all__ = [
    "Arrival",
    "BoardSource",
    "ContributionSource",
    "GlobalView",
    "Rejection",
    "Validator",
    "ValidatorConfig",
    "ValidatorError",
    "ValidatorState",
    "WindowReport",
]
