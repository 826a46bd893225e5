"""Prometheus view of the latest snapshot: a custom collector on a per-app registry.

A per-app registry (not the process-global default) keeps two dashboards in one
process, and the tests, from seeing each other's metrics. Wei amounts are
exported as floats: exact to about 15 significant digits, enough for a graph;
the JSON API keeps the exact integers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.status import ChainSnapshot, NodeSnapshot, Snapshot


class SnapshotCollector(Collector):
    """Yields gauges and counters for whatever snapshot was stored last."""

    def __init__(self) -> None:
        self.latest: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.latest
        if snap is None:
            return
        yield GaugeMetricFamily("gradmesh_snapshot_generated_seconds",
                                "When the snapshot was taken (unix seconds)",
                                value=snap["generated_at"])
        yield from _node_metrics(snap["nodes"])
        if snap["chain"] is not None:
            yield from _chain_metrics(snap["chain"])


def _node_metrics(nodes: list[NodeSnapshot]) -> Iterator[Metric]:
    info = GaugeMetricFamily("gradmesh_node_info", "Always 1; role and state as labels",
                             labels=["node", "role", "state", "address", "peer_id"])
    window = GaugeMetricFamily("gradmesh_window", "Window the node works on", labels=["node"])
    peers = GaugeMetricFamily("gradmesh_peers", "Connected mesh peers", labels=["node"])
    loss = GaugeMetricFamily("gradmesh_heldout_loss", "Latest measured held-out loss",
                             labels=["node"])
    wire = CounterMetricFamily("gradmesh_mesh_bytes", "Mesh bytes since start",
                               labels=["node", "direction"])
    score = GaugeMetricFamily("gradmesh_validator_score", "Validator's score of a miner",
                              labels=["validator", "uid"])
    weight = GaugeMetricFamily("gradmesh_validator_weight", "Validator's planned weight share",
                               labels=["validator", "uid"])
    for node in nodes:
        name = node["name"]
        info.add_metric([name, node["role"], node["state"], node["address"], node["peer_id"]], 1)
        window.add_metric([name], node["window"])
        peers.add_metric([name], node["peers"])
        wire.add_metric([name, "in"], node["bytes_in"])
        wire.add_metric([name, "out"], node["bytes_out"])
        measured = [p["heldout_loss"] for p in node["history"] if p["heldout_loss"] is not None]
        if measured:
            loss.add_metric([name], measured[-1])
        for row in node["scores"]:
            score.add_metric([name, str(row["uid"])], row["score"])
            weight.add_metric([name, str(row["uid"])], row["weight"])
    yield from (info, window, peers, loss, wire, score, weight)


def _chain_metrics(chain: ChainSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("gradmesh_chain_block", "Chain head block", value=chain["block"])
    yield GaugeMetricFamily("gradmesh_chain_window", "Chain window", value=chain["window"])
    yield GaugeMetricFamily("gradmesh_chain_epoch", "Chain epoch", value=chain["epoch"])
    stake = GaugeMetricFamily("gradmesh_stake_wei", "Stake per address", labels=["address"])
    claim = GaugeMetricFamily("gradmesh_claimable_wei", "Rewards credited, not yet claimed",
                              labels=["address"])
    for row in chain["balances"]:
        stake.add_metric([row["address"]], float(row["stake_wei"]))
        claim.add_metric([row["address"]], float(row["claimable_wei"]))
    yield from (stake, claim)


class Metrics:
    """The registry and collector of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)

    def render(self, snap: Snapshot) -> bytes:
        # set-then-generate with no await between: concurrent scrapes cannot interleave
        self.collector.latest = snap
        return generate_latest(self.registry)
