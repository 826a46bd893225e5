"""`gradmesh plan` (node/engine/plan.py): a box's memory, bytes and seconds per window."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from node.engine.model import get_config, param_count, parameter_shapes
from node.engine.plan import Box, Workload, plan
from node.errors import ConfigError
from protocol.sparse import compress, encode_payload, payload_cap
from protocol.spec import CodecSpec, TensorSpec


def test_memory_shards_over_gpus_and_offload_frees_the_error_feedback() -> None:
    one = plan("1b", Box(gpus=1), Workload())
    eight = plan("1b", Box(gpus=8), Workload())
    n = param_count(get_config("1b"))
    assert one["parameters"] == n
    assert one["memory_gib_per_gpu"]["adamw_state"] == pytest.approx(8 * n / 2**30)
    assert eight["memory_gib_per_gpu"]["parameters"] == pytest.approx(
        one["memory_gib_per_gpu"]["parameters"] / 8)
    offloaded = plan("1b", Box(gpus=8, offload_error_feedback=True), Workload())
    assert offloaded["memory_gib_per_gpu"]["error_feedback"] == 0.0
    recompute = plan("1b", Box(activation_checkpointing=True), Workload())
    keep = plan("1b", Box(activation_checkpointing=False), Workload())
    assert recompute["memory_gib_per_gpu"]["activations"] < keep["memory_gib_per_gpu"][
        "activations"]


def test_bytes_per_window_are_the_codec_cap_and_time_follows_bandwidth() -> None:
    work = Workload(gathered=16)
    slow = plan("1b", Box(bandwidth_mbit=100), work)["window"]
    fast = plan("1b", Box(bandwidth_mbit=1000), work)["window"]
    cfg = get_config("1b")
    manifest = tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(cfg))
    assert slow["bytes_published"] == payload_cap(manifest, work.codec)
    assert slow["bytes_gathered"] == 16 * slow["bytes_published"]
    assert slow["download_s"] == pytest.approx(10 * fast["download_s"])
    assert slow["compression_ratio"] > 200  # gap-coded indices, k = 64 per 4096
    assert slow["compute_s"] == pytest.approx(fast["compute_s"])


def test_the_cap_bounds_a_real_payload_tightly() -> None:
    import torch

    spec = CodecSpec("sparseloco", 64, 64, 2, "gap")
    manifest = tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(get_config("tiny")))
    gen = torch.Generator().manual_seed(0)
    payload = encode_payload([compress(torch.randn(t.shape, generator=gen), spec)
                              for t in manifest], manifest, spec)
    assert 0.9 * payload_cap(manifest, spec) < len(payload) <= payload_cap(manifest, spec)


def test_bad_boxes_are_refused() -> None:
    for bad in ({"gpus": 0}, {"mfu": 0.0}, {"bandwidth_mbit": -1.0}):
        with pytest.raises(ConfigError):
            Box(**bad)  # type: ignore[arg-type]


def test_the_72b_plan_from_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "node.cli", "plan", "--model", "72b", "--gpus",
                          "8", "--gpu-mem", "80", "--bandwidth", "500", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout)
    mem, win = r["memory_gib_per_gpu"], r["window"]
    assert set(mem) == {"parameters", "gradients", "adamw_state", "error_feedback",
                        "activations", "total"}
    assert r["fits"] is False  # fp32 state for 71.5B over 8 × 80 GiB does not fit
    assert 1.2 * 2**30 < win["bytes_published"] < 1.4 * 2**30
    assert win["communication_s"] > 0
    assert win["compute_s"] > 0
