"""The decoder: parameter layout, size arithmetic, causality, determinism, trainability."""

from __future__ import annotations

import math

import pytest
import torch

from node.engine.model import (
    MODEL_CONFIGS,
    Decoder,
    ModelConfig,
    build_model,
    get_config,
    model_manifest,
    param_count,
)
from node.errors import ConfigError


@pytest.fixture(scope="module")
def tiny() -> Decoder:
    return build_model(get_config("tiny"), seed=0)


def expected_names(n_layers: int) -> list[str]:
    names = ["embed.weight"]
    for i in range(n_layers):
        names += [f"layers.{i}.{s}.weight" for s in
                  ("attn_norm", "attn.wqkv", "attn.wo", "ffn_norm", "ffn.w13", "ffn.w2")]
    return [*names, "norm.weight"]


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_param_count_matches_real_model(name: str) -> None:
    cfg = get_config(name)
    model = build_model(cfg, seed=1)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_param_counts_of_named_configs() -> None:
    assert param_count(get_config("tiny")) == 885_888
    assert 20.5e6 < param_count(get_config("small")) < 20.7e6
    assert 0.13e9 < param_count(get_config("150m")) < 0.16e9
    assert 0.95e9 < param_count(get_config("1b")) < 1.15e9
    assert 7.0e9 < param_count(get_config("8b")) < 8.1e9
    assert 65e9 < param_count(get_config("72b")) < 80e9


def test_dims_are_multiples_of_64() -> None:
    for name in ("tiny", "small", "150m", "1b", "8b", "72b"):
        cfg = MODEL_CONFIGS[name]
        dims = (cfg.vocab_size, cfg.d_model, cfg.ffn_dim, cfg.qkv_dim)
        assert all(d % 64 == 0 for d in dims), (name, dims)


def test_unknown_config_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        get_config("huge")


def test_bad_config_rejected() -> None:
    with pytest.raises(ConfigError):
        ModelConfig("bad", vocab_size=256, d_model=100, n_layers=1, n_heads=3, n_kv_heads=1,
                    ffn_dim=64, max_seq_len=8)


def test_parameter_names_and_shapes(tiny: Decoder) -> None:
    cfg = get_config("tiny")
    named = list(tiny.named_parameters())
    assert [n for n, _ in named] == expected_names(cfg.n_layers)
    shapes = dict((n, tuple(p.shape)) for n, p in named)
    d, hd = cfg.d_model, cfg.head_dim
    assert shapes["embed.weight"] == (cfg.vocab_size, d)
    assert shapes["layers.0.attn.wqkv.weight"] == ((cfg.n_heads + 2 * cfg.n_kv_heads) * hd, d)
    assert shapes["layers.0.attn.wo.weight"] == (d, d)
    assert shapes["layers.0.ffn.w13.weight"] == (2 * cfg.ffn_dim, d)
    assert shapes["layers.0.ffn.w2.weight"] == (d, cfg.ffn_dim)
    assert shapes["norm.weight"] == (d,)
    assert all(p.dtype == torch.float32 for _, p in named)


def test_manifest_follows_parameter_order(tiny: Decoder) -> None:
    manifest = model_manifest(tiny)
    assert [t.name for t in manifest] == [n for n, _ in tiny.named_parameters()]
    assert all(t.dtype == "float32" for t in manifest)
    assert sum(t.numel for t in manifest) == param_count(get_config("tiny"))


def test_gqa_model_runs() -> None:
    cfg = ModelConfig("gqa", vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2,
                      ffn_dim=64, max_seq_len=16)
    model = build_model(cfg, seed=0)
    assert dict(model.named_parameters())["layers.0.attn.wqkv.weight"].shape == (128, 64)
    assert model(torch.randint(0, 64, (2, 16))).shape == (2, 16, 64)


def test_forward_shape_and_too_long(tiny: Decoder) -> None:
    tokens = torch.randint(0, 256, (3, 17))
    assert tiny(tokens).shape == (3, 17, 256)
    with pytest.raises(ConfigError):
        tiny(torch.zeros(1, 129, dtype=torch.long))


def test_causality(tiny: Decoder) -> None:
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 7) % 256
    with torch.no_grad():
        a, b = tiny(tokens), tiny(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_same_seed_identical_parameters() -> None:
    cfg = get_config("tiny")
    a, b, c = build_model(cfg, 5), build_model(cfg, 5), build_model(cfg, 6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_initial_loss_near_uniform(tiny: Decoder) -> None:
    batch = torch.randint(0, 256, (4, 65), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(tiny.loss(batch))
    assert abs(loss - math.log(256)) < 0.15


def test_adamw_steps_reduce_loss() -> None:
    model = build_model(get_config("tiny"), seed=0)
    batch = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model.loss(batch)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
    assert losses[-1] < losses[0] - 0.5
