"""The end of a devnet run: one JSON summary and the tables printed from it."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from node.cli.report import human_bytes
from node.sim.devnet import Devnet


def _common_digest(devnet: Devnet) -> tuple[int | None, bool]:
    """The last window every node applied, and whether they all hold the same θ there."""
    per_node = [{p["window"]: p["param_digest"] for p in n.history} for n in devnet.nodes()]
    common = set.intersection(*(set(d) for d in per_node)) if per_node else set()
    if not common:
        return None, False
    last = max(common)
    return last, len({d[last] for d in per_node}) == 1


def summarize(devnet: Devnet) -> dict[str, Any]:
    first = devnet.miners[0].history[: devnet.cfg.windows]  # the windows the run promised
    ratios = [p["compression_ratio"] for m in devnet.miners for p in m.history
              if p["compression_ratio"]]
    sent = [p["bytes_out"] for m in devnet.miners for p in m.history]
    last, identical = _common_digest(devnet)
    chain = devnet.final_chain
    balances = chain["balances"] if chain else []
    late = devnet.miners[devnet.cfg.miners:] if len(devnet.miners) > devnet.cfg.miners else []
    return {
        "windows": [p["window"] for p in first],
        "initial_loss": devnet.initial_loss,
        "heldout_loss": [p["heldout_loss"] for p in first],
        "compression_ratio": sum(ratios) / len(ratios) if ratios else None,
        "bytes_out_per_miner_window": sum(sent) / len(sent) if sent else 0,
        "params_identical": identical,
        "compared_window": last,
        "param_digests": {n.cfg.name: n.digest.hex() for n in devnet.nodes()},
        "rewards": {b["address"]: b["claimable_wei"] for b in balances if b["role"] == "miner"},
        "validator_rewards": {b["address"]: b["claimable_wei"] for b in balances
                              if b["role"] == "validator"},
        "miners": {m.cfg.name: {"address": m.identity.address_hex, "uid": m.uid,
                                "windows": [p["window"] for p in m.history],
                                "published": sum(1 for p in m.history
                                                 if p["compression_ratio"])}
                   for m in devnet.miners},
        "late_joiner": late[0].cfg.name if late else None,
        "dashboard_url": devnet.dashboard_url,
        "chain": devnet.cfg.chain,
        "contract": devnet.contract,
    }


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def devnet_tables(summary: dict[str, Any]) -> list[Table]:
    losses = Table(title="held-out loss per window (θ_global)")
    for col in ("window", "held-out loss", "change"):
        losses.add_column(col, justify="right")
    previous = summary["initial_loss"]
    losses.add_row("start", f"{previous:.4f}", "")
    for window, loss in zip(summary["windows"], summary["heldout_loss"], strict=True):
        change = "" if loss is None or math.isnan(previous) else f"{loss - previous:+.4f}"
        losses.add_row(str(window), f"{loss:.4f}" if loss is not None else "-", change)
        previous = loss if loss is not None else previous

    rewards = Table(title="rewards credited by the contract (claimable)")
    for col in ("node", "address", "windows published", "reward (1e18 wei)"):
        rewards.add_column(col, justify="right")
    for name, m in summary["miners"].items():
        rewards.add_row(name, _short(m["address"]), str(m["published"]),
                        f"{summary['rewards'].get(m['address'], 0) / 1e18:.6f}")
    for address, amount in summary["validator_rewards"].items():
        rewards.add_row("validator", _short(address), "", f"{amount / 1e18:.6f}")

    totals = Table(title="network")
    totals.add_column("metric")
    totals.add_column("value", justify="right")
    ratio = summary["compression_ratio"]
    totals.add_row("bytes on the wire / miner / window",
                   human_bytes(summary["bytes_out_per_miner_window"]))
    totals.add_row("compression vs dense fp32", f"{ratio:.0f}x" if ratio else "-")
    totals.add_row("θ identical on every node",
                   f"{summary['params_identical']} (window {summary['compared_window']})")
    totals.add_row("chain", summary["chain"])
    totals.add_row("contract", summary["contract"])
    totals.add_row("dashboard (while running)", summary["dashboard_url"] or "-")
    return [losses, rewards, totals]
