"""Posting the planned weights: the commit-reveal state machine, one plan per epoch.

A plan (uids, weights, salt) is stored before anything is sent. Each call does
what the chain's phase allows and survives `ChainError`s: a commit already on
chain (a crash right after sending) is recognised via `commitment_of`,
`AlreadyRevealed` counts as done, and a commit phase missed during an outage
carries the same weights to the current epoch. Never two votes for one epoch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from chain.client import ChainClient
from chain.commitment import weights_commitment
from chain.errors import AlreadyRevealed, ChainError, ChainUnavailableError, WrongPhase
from validator.state import Plan, ValidatorState

log = logging.getLogger(__name__)


def post_plans(chain: ChainClient, state: ValidatorState, wpe: int,
               salt_source: Callable[[int], bytes]) -> list[tuple[int, str]]:
    """Advance every unfinished plan as far as the chain allows; returns (epoch, action)."""
    done: list[tuple[int, str]] = []
    try:
        window = chain.current_window()
        reveal_windows = int(chain.params().reveal_windows)
    except ChainUnavailableError:
        return done
    for plan in state.plans(("planned", "committed")):
        try:
            action = _advance(chain, state, plan, window, wpe, reveal_windows, salt_source)
        except ChainUnavailableError:
            break  # try again on the next call; nothing recorded, nothing lost
        except ChainError as exc:
            log.warning("epoch %d: %s", plan.epoch, exc)
            action = f"error:{type(exc).__name__}"
        if action:
            done.append((plan.epoch, action))
    return done


def _advance(chain: ChainClient, state: ValidatorState, plan: Plan, window: int, wpe: int,
             reveal_windows: int, salt_source: Callable[[int], bytes]) -> str:
    if plan.status == "planned":
        return _commit(chain, state, plan, window // wpe, salt_source)
    start = (plan.epoch + 1) * wpe
    if window < start:
        return ""
    if window >= start + reveal_windows:
        state.set_status(plan.epoch, "missed")
        return "missed"
    # AlreadyRevealed: sent before a crash, the chain already holds exactly this vote
    with contextlib.suppress(AlreadyRevealed):
        chain.reveal_weights(plan.epoch, plan.uids, plan.weights, plan.salt)
    state.set_status(plan.epoch, "revealed")
    return "revealed"


def _commit(chain: ChainClient, state: ValidatorState, plan: Plan, epoch_now: int,
            salt_source: Callable[[int], bytes]) -> str:
    if epoch_now < plan.epoch:
        return ""
    if epoch_now > plan.epoch:
        _carry_over(state, plan, epoch_now, salt_source)
        return "missed"
    commitment = weights_commitment(chain.address, plan.epoch, plan.uids, plan.weights,
                                    plan.salt)
    try:
        # a crash right after committing: the chain already holds this vote
        if chain.commitment_of(plan.epoch, chain.address) != commitment:
            chain.commit_weights(plan.epoch, commitment)
    except WrongPhase:
        _carry_over(state, plan, epoch_now, salt_source)
        return "missed"
    state.set_status(plan.epoch, "committed")
    return "committed"


def _carry_over(state: ValidatorState, plan: Plan, epoch_now: int,
                salt_source: Callable[[int], bytes]) -> None:
    """A plan whose commit phase passed (e.g. chain outage): mark it missed and post the
    same weights for the current epoch instead, unless one is planned already."""
    state.set_status(plan.epoch, "missed")
    if state.plan(epoch_now) is None:
        state.add_plan(Plan(epoch_now, plan.uids, plan.weights, salt_source(32)))
