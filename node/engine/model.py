"""Llama-style decoder with fused projections and tied embeddings.

The parameter list is deliberately short and fixed (see `parameter_names`):
the wire codec chunks every tensor separately, so fusing q/k/v and the two
SwiGLU input projections means fewer, larger tensors and less per-tensor
overhead on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from node.errors import ConfigError
from protocol.spec import Manifest, TensorSpec


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim",
                      "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"model {self.name}: {field} must be positive")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model {self.name}: d_model not divisible by n_heads")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model {self.name}: n_heads not divisible by n_kv_heads")
        if self.head_dim % 2:
            raise ConfigError(f"model {self.name}: RoPE needs an even head_dim")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def qkv_dim(self) -> int:
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim


MODEL_CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("tiny", vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4,
                    ffn_dim=384, max_seq_len=128),
        ModelConfig("small", vocab_size=256, d_model=512, n_layers=6, n_heads=8, n_kv_heads=8,
                    ffn_dim=1536, max_seq_len=256),
        # GPT-2-small-like width in a Llama block (~138M with a 32k vocabulary).
        ModelConfig("150m", vocab_size=32000, d_model=768, n_layers=12, n_heads=12,
                    n_kv_heads=12, ffn_dim=3072, max_seq_len=2048),
        # TinyLlama-like shape (~1.03B with a realistic 32k vocabulary).
        ModelConfig("1b", vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                    ffn_dim=5632, max_seq_len=2048),
        # Llama-3-8B-like shape (tied embeddings here: ~7.5B).
        ModelConfig("8b", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                    n_kv_heads=8, ffn_dim=14336, max_seq_len=8192, rope_theta=500_000.0),
        # Qwen2-72B-like shape, for size arithmetic only (tied, no biases: ~71.5B).
        ModelConfig("72b", vocab_size=151936, d_model=8192, n_layers=80, n_heads=64,
                    n_kv_heads=8, ffn_dim=29568, max_seq_len=32768, rope_theta=1_000_000.0,
                    norm_eps=1e-6),
    )
}


def get_config(name: str, vocab_size: int | None = None) -> ModelConfig:
    """A named shape; `vocab_size` replaces its vocabulary (a run's tokenizer decides it)."""
    try:
        cfg = MODEL_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_CONFIGS))
        raise ConfigError(f"unknown model config {name!r} (known: {known})") from None
    return cfg if vocab_size is None else replace(cfg, vocab_size=vocab_size)


def parameter_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of every parameter, in `named_parameters()` order."""
    d = cfg.d_model
    shapes: list[tuple[str, tuple[int, ...]]] = [("embed.weight", (cfg.vocab_size, d))]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes += [
            (p + "attn_norm.weight", (d,)),
            (p + "attn.wqkv.weight", (cfg.qkv_dim, d)),
            (p + "attn.wo.weight", (d, d)),
            (p + "ffn_norm.weight", (d,)),
            (p + "ffn.w13.weight", (2 * cfg.ffn_dim, d)),
            (p + "ffn.w2.weight", (d, cfg.ffn_dim)),
        ]
    shapes.append(("norm.weight", (d,)))
    return shapes


def param_count(cfg: ModelConfig) -> int:
    return sum(math.prod(shape) for _, shape in parameter_shapes(cfg))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 so reduced-precision activations stay stable.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FusedLinear(nn.Module):
    """Bias-free linear layer; allocated uninitialised because build_model seeds it."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


def rope_tables(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, hd) by position; half-split pairing (x[i], x[i + hd/2])."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.wqkv = FusedLinear(cfg.d_model, cfg.qkv_dim)
        self.wo = FusedLinear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        hd = self.head_dim
        q_dim, kv_dim = self.n_heads * hd, self.n_kv_heads * hd
        q, k, v = self.wqkv(x).split((q_dim, kv_dim, kv_dim), dim=-1)
        q = q.view(b, t, self.n_heads, hd).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, hd).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            # Explicit repeat rather than enable_gqa: works on every torch >= 2.3.
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        merged: Tensor = self.wo(out.transpose(1, 2).reshape(b, t, q_dim))
        return merged


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w13 = FusedLinear(cfg.d_model, 2 * cfg.ffn_dim)
        self.w2 = FusedLinear(cfg.ffn_dim, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        out: Tensor = self.w2(F.silu(gate) * up)
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        out: Tensor = x + self.ffn(self.ffn_norm(x))
        return out


class Decoder(nn.Module):
    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(
            cfg.vocab_size, cfg.d_model, _weight=torch.empty(cfg.vocab_size, cfg.d_model))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_tables(cfg)
        # Non-persistent: derived from the config, so not part of the state or the manifest.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_blocks = False  # recompute block activations in backward (memory)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ConfigError(f"tokens must be [batch, time], got shape {tuple(tokens.shape)}")
        t = tokens.shape[1]
        if t > self.cfg.max_seq_len:
            raise ConfigError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        h = self.embed(tokens)
        for layer in self.layers:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                h = checkpoint(layer, h, cos, sin, use_reentrant=False)
            else:
                h = layer(h, cos, sin)
        logits: Tensor = self.norm(h) @ self.embed.weight.T
        return logits

    def row_losses(self, batch: Tensor) -> Tensor:
        """Mean next-token cross-entropy of every row of a [B, T+1] batch, fp32 [B]."""
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ConfigError(f"batch must be [batch, time+1], got shape {tuple(batch.shape)}")
        logits = self(batch[:, :-1])
        per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                    batch[:, 1:].reshape(-1), reduction="none")
        return per_token.reshape(batch.shape[0], -1).mean(dim=1)

    def loss(self, batch: Tensor) -> Tensor:
        """Mean next-token cross-entropy of a [B, T+1] batch."""
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ConfigError(f"batch must be [batch, time+1], got shape {tuple(batch.shape)}")
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               batch[:, 1:].reshape(-1))


def init_std(name: str, cfg: ModelConfig) -> float:
    """Standard deviation used to initialise parameter `name` (norm weights excluded)."""
    if name == "embed.weight":
        # The head is tied: logit of the input token itself is ~ d_model * std, so
        # std = 1/d keeps it ~1 and the initial loss near ln(vocab).
        return min(0.02, 1.0 / cfg.d_model)
    if name.endswith(("wo.weight", "w2.weight")):
        # Residual-branch outputs shrink with depth so the stream's variance stays bounded.
        return 0.02 / math.sqrt(2 * cfg.n_layers)
    return 0.02


def build_model(cfg: ModelConfig, seed: int, *, device: torch.device | str | None = None
                ) -> Decoder:
    """A freshly initialised model; the same seed gives bit-identical parameters.

    Initialisation always runs on CPU with a private generator so the result does
    not depend on the target device or on global RNG state.
    """
    model = Decoder(cfg)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, init_std(name, cfg), generator=gen)
    return model.to(device) if device is not None else model


def model_manifest(model: nn.Module) -> Manifest:
    return tuple(TensorSpec(name, tuple(p.shape), "float32")
                 for name, p in model.named_parameters())
