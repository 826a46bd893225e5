"""A miner's economics before joining: memory per GPU, bytes and seconds per window.

Pure arithmetic from the model's shape, the run's codec and the operator's box
(`gradmesh plan`). Memory assumes FSDP2 sharding of θ, gradients, AdamW state
and error feedback over the GPUs (fp32 each), bf16 activations; compute assumes
6·N FLOPs per token plus attention at the given utilisation. Estimates, stated
as such: the GPU check (benchmarks/gpu_check.py) measures the real figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from node.engine.model import ModelConfig, get_config, param_count, parameter_shapes
from node.errors import ConfigError
from protocol.sparse import payload_cap
from protocol.spec import CodecSpec, TensorSpec

GIB = 2**30
FP32 = 4
BF16 = 2


@dataclass(frozen=True)
class Box:
    """The operator's machine, link and settings."""

    gpus: int = 8
    gpu_mem_gib: float = 80.0
    bandwidth_mbit: float = 500.0  # each way
    gpu_tflops: float = 989.0  # dense bf16 peak per GPU (H100 SXM)
    mfu: float = 0.4  # model FLOPs utilisation reached
    micro_batch: int = 1  # sequences per GPU per forward/backward
    activation_checkpointing: bool = True
    offload_error_feedback: bool = False

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.micro_batch < 1:
            raise ConfigError("gpus >= 1 and micro_batch >= 1")
        if min(self.gpu_mem_gib, self.bandwidth_mbit, self.gpu_tflops) <= 0:
            raise ConfigError("GPU memory, bandwidth and TFLOPs must be positive")
        if not 0.0 < self.mfu <= 1.0:
            raise ConfigError("mfu in (0, 1]")


@dataclass(frozen=True)
class Workload:
    """The run's share: H inner steps of `batch_size` sequences per window, the codec,
    and how many contributions every peer gathers."""

    inner_steps: int = 30
    batch_size: int = 192  # sequences per miner per inner step
    seq_len: int = 2048
    codec: CodecSpec = field(default_factory=lambda: CodecSpec("sparseloco", 64, 64, 2, "gap"))
    gathered: int = 16  # contributions fetched per window (the aggregation set)


def activation_bytes(cfg: ModelConfig, seq_len: int, micro_batch: int,
                     checkpointing: bool) -> int:
    """bf16 activations kept for backward at one micro-batch: with checkpointing each
    block's input plus one block recomputed in full; without, every block in full
    (~34·s·b·d + 5·heads·s²·b bytes per block), plus the fp32 logits."""
    s, b, d = seq_len, micro_batch, cfg.d_model
    full_block = 34 * s * b * d + 5 * cfg.n_heads * s * s * b
    logits = FP32 * s * b * cfg.vocab_size
    if checkpointing:
        return cfg.n_layers * BF16 * s * b * d + full_block + logits
    return cfg.n_layers * full_block + logits


def plan(model: str, box: Box, work: Workload, vocab_size: int | None = None
         ) -> dict[str, Any]:
    """Memory per GPU (GiB), bytes per window, and seconds of compute and communication."""
    cfg = get_config(model, vocab_size)
    n = param_count(cfg)
    shard = n / box.gpus
    memory = {
        "parameters": FP32 * shard / GIB,
        "gradients": FP32 * shard / GIB,
        "adamw_state": 2 * FP32 * shard / GIB,
        "error_feedback": 0.0 if box.offload_error_feedback else FP32 * shard / GIB,
        "activations": activation_bytes(cfg, work.seq_len, box.micro_batch,
                                        box.activation_checkpointing) / GIB,
    }
    memory["total"] = sum(memory.values())
    manifest = tuple(TensorSpec(name, shape, "float32") for name, shape in parameter_shapes(cfg))
    published = payload_cap(manifest, work.codec)
    tokens = work.inner_steps * work.batch_size * work.seq_len
    flops = tokens * (6 * n + 12 * cfg.n_layers * cfg.d_model * work.seq_len)
    compute_s = flops / (box.gpus * box.gpu_tflops * 1e12 * box.mfu)
    bits_per_s = box.bandwidth_mbit * 1e6
    upload_once_s = 8 * published / bits_per_s
    download_s = 8 * published * work.gathered / bits_per_s
    return {
        "model": model, "parameters": n, "box": asdict(box),
        "workload": {**asdict(work), "codec": asdict(work.codec)},
        "memory_gib_per_gpu": memory,
        "fits": memory["total"] <= box.gpu_mem_gib,
        "micro_batches_per_step": -(-work.batch_size // (box.micro_batch * box.gpus)),
        "window": {
            "tokens": tokens,
            "bytes_published": published,
            "bytes_gathered": published * work.gathered,
            "compression_ratio": FP32 * n / published,
            "compute_s": compute_s,
            "upload_once_s": upload_once_s,  # swarming: the author's upload spent once
            "upload_to_each_s": upload_once_s * work.gathered,  # one by one, no swarming
            "download_s": download_s,
            "communication_s": upload_once_s + download_s,
            "communication_share": (upload_once_s + download_s)
            / (compute_s + upload_once_s + download_s),
        },
    }  # fmt: skip
