"""The study-only SparseLoCo variants (node/outer/ablations.py): unquantised top-k round
trips exactly, random-k picks k distinct in-chunk positions and replays under its seed,
and both run in the simulator through `SimConfig.outer` with honest wire bytes."""

from __future__ import annotations

from functools import partial

import torch

from node.outer.ablations import (
    RandomK,
    UnquantisedTopK,
    random_indices,
    sparsity_variant,
    topk_indices,
)
from node.outer.optimizers import OuterConfig, SparseLoCo
from node.sim.simulate import SimConfig, run_simulation
from protocol.sparse import chunk_layout, decode_payload, decompress
from protocol.spec import TensorSpec

# a block-chunked matrix, a 1-D tensor and a ragged one with a partial last chunk
MANIFEST = (TensorSpec("w", (64, 128)), TensorSpec("g", (64,)), TensorSpec("r", (70, 90)))


def random_tensors(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen) for t in MANIFEST]


def test_unquantised_round_trip_is_exact_top_k() -> None:
    outer = UnquantisedTopK(OuterConfig(), MANIFEST)
    delta = random_tensors(0)
    decoded = outer.decode(outer.encode(delta))
    for d, sent, err, spec in zip(delta, decoded, outer.error, MANIFEST, strict=True):
        kept = sent != 0
        layout = chunk_layout(spec.shape, outer.codec)
        assert int(kept.sum()) == layout.n_entries
        assert torch.equal(sent[kept], d[kept])  # fp32 values, bit for bit
        assert torch.equal(err + sent, d)  # what was sent left the error buffer exactly


def test_unquantised_keeps_the_same_positions_as_sparseloco_and_costs_32_bits() -> None:
    delta = random_tensors(1)
    base, plain = SparseLoCo(OuterConfig(), MANIFEST), UnquantisedTopK(OuterConfig(), MANIFEST)
    base_payload, plain_payload = base.encode(delta), plain.encode(delta)
    positions = [decompress(st, t.shape, base.codec) != 0
                 for st, t in zip(decode_payload(base_payload, MANIFEST, base.codec), MANIFEST,
                                  strict=True)]
    for where, sent in zip(positions, plain.decode(plain_payload), strict=True):
        assert torch.equal(where, sent != 0)
    entries = sum(chunk_layout(t.shape, base.codec).n_entries for t in MANIFEST)
    # base: 2-bit codes and 16-byte tables; unquantised: 4 bytes per entry instead
    extra = len(plain_payload) - len(base_payload)
    assert abs(extra - (4 * entries - entries // 4 - 16 * len(MANIFEST))) <= 16


def test_unquantised_apply_is_the_clipped_mean() -> None:
    outer = UnquantisedTopK(OuterConfig(lr=0.5), MANIFEST)
    peers = [UnquantisedTopK(OuterConfig(), MANIFEST) for _ in range(3)]
    decoded = [p.decode(p.encode(random_tensors(10 + i))) for i, p in enumerate(peers)]
    params = [torch.zeros(t.shape) for t in MANIFEST]
    stats = outer.apply(params, [(bytes([i]) * 20, d) for i, d in enumerate(decoded)],
                        inner_step=lambda grads: None)
    assert stats.peers == 3
    for t, p in enumerate(params):
        norms = [float(d[t].double().norm()) for d in decoded]
        cap = sorted(norms)[1]
        mean = sum(d[t] * min(1.0, cap / n) for d, n in zip(decoded, norms, strict=True)) / 3
        torch.testing.assert_close(p, -0.5 * mean, rtol=1e-5, atol=1e-7)


def test_random_indices_are_k_distinct_positions_inside_each_chunk() -> None:
    gen = torch.Generator().manual_seed(0)
    for spec in MANIFEST:
        layout = chunk_layout(spec.shape, OuterConfig().codec)
        idx = random_indices(layout, gen)
        assert tuple(idx.shape) == (layout.n_chunks, layout.k)
        assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted, hence distinct
        assert int(idx.min()) >= 0
        assert int(idx.max()) < layout.chunk_len
        assert int(idx[-1].max()) < layout.last_valid  # never in the padding


def test_random_k_replays_under_its_seed_and_differs_by_miner_and_round() -> None:
    delta = random_tensors(2)
    first, again = (RandomK(OuterConfig(), MANIFEST, miner=1) for _ in range(2))
    other = RandomK(OuterConfig(), MANIFEST, miner=2)
    payloads = [first.encode(delta), first.encode(delta)]
    assert [again.encode(delta), again.encode(delta)] == payloads
    assert other.encode(delta) != payloads[0]
    assert payloads[0] != payloads[1]  # round 1 draws other positions


def test_random_k_payload_is_a_sparseloco_payload_with_error_feedback() -> None:
    outer = RandomK(OuterConfig(), MANIFEST)
    delta = random_tensors(3)
    decoded = decode_payload(outer.encode(delta), MANIFEST, outer.codec)  # the wire codec
    for st, d, err, spec in zip(decoded, delta, outer.error, MANIFEST, strict=True):
        sent = decompress(st, spec.shape, outer.codec)
        torch.testing.assert_close(err + sent, d, rtol=1e-5, atol=1e-6)
        top = topk_indices(d, chunk_layout(spec.shape, outer.codec))
        assert not torch.equal(st.indices, top)  # not the top-k positions


def test_variants_run_in_the_simulator_with_their_own_bytes() -> None:
    runs = {}
    for name in ("unquantised", "random-k", None):
        factory = partial(sparsity_variant, name) if name else None
        cfg = SimConfig.build(miners=2, rounds=2, inner_steps=2, threads=1)
        cfg = SimConfig(cfg.spec, miners=2, rounds=2, threads=1, outer=factory)
        runs[name] = run_simulation(cfg)
    assert all(r.params_identical for r in runs.values())
    base = runs[None].wire_bytes_per_miner_round
    assert runs["unquantised"].wire_bytes_per_miner_round > 3 * base
    assert abs(runs["random-k"].wire_bytes_per_miner_round / base - 1) < 0.1
    assert runs["random-k"].rounds[-1].heldout_loss != runs[None].rounds[-1].heldout_loss
