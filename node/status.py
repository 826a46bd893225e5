"""What a running node reports about itself: the JSON the dashboard shows.

Services build these dictionaries (plain JSON types, no secrets: addresses and
peer ids only, never keys); the dashboard renders them, serves them at
`/api/snapshot`, and turns them into Prometheus metrics. Fields may be added;
none is ever renamed without a version bump of `SCHEMA`.
"""

from __future__ import annotations

from typing import Literal, TypedDict

SCHEMA = 1

NodeRole = Literal["miner", "validator"]


class WindowPoint(TypedDict):
    """One finished window as one node saw it."""

    window: int
    heldout_loss: float | None  # θ_global after the window on held-out batches (None: not run)
    train_loss: float | None  # mean inner loss of this node's own training (miners)
    bytes_out: int  # bytes this node sent on the mesh during the window
    bytes_in: int
    contributions: int  # contributions aggregated into θ at the end of the window
    compression_ratio: float | None  # dense fp32 bytes / this node's envelope bytes
    seconds: float  # wall time of the window's work on this node
    param_digest: str  # hex SHA-256 of θ after the window (equal on every honest node)


class TimelineEvent(TypedDict):
    t: float  # unix seconds
    window: int
    event: str  # e.g. "trained", "published", "gathered 3", "applied", "checkpoint", "caught up"


class ScoreRow(TypedDict):
    """A validator's view of one miner (validators only)."""

    uid: int
    address: str
    status: str  # "scored" | "rejected" | "missing" | "skipped"
    reason: str
    score: float
    mu: float
    sigma: float
    weight: float  # share of this validator's planned weights, 0..1


class NodeSnapshot(TypedDict):
    name: str
    role: NodeRole
    address: str  # checksummed chain address
    peer_id: str
    state: str  # "starting" | "catching-up" | "training" | "gathering" | "idle" | "stopped"
    window: int  # the window the node is working on
    peers: int  # connected mesh peers
    bytes_in: int  # mesh totals since start
    bytes_out: int
    history: list[WindowPoint]
    timeline: list[TimelineEvent]  # most recent last, bounded
    scores: list[ScoreRow]  # empty for miners


class BalanceRow(TypedDict):
    address: str
    role: str  # "miner" | "validator"
    uid: int
    stake_wei: int
    claimable_wei: int  # rewards credited by the contract, not yet claimed


class ChainSnapshot(TypedDict):
    kind: str  # "embedded" | "anvil" | "rpc"
    contract: str
    block: int
    window: int
    epoch: int
    blocks_per_window: int
    windows_per_epoch: int
    aggregation_set: list[int]  # uids named by the last settled epoch
    balances: list[BalanceRow]


class Snapshot(TypedDict):
    schema: int
    run: str
    generated_at: float  # unix seconds
    chain: ChainSnapshot | None  # None while the chain cannot be read
    nodes: list[NodeSnapshot]
