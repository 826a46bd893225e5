"""The evaluator's device copy of θ: made once per θ, remade when θ changes."""

from __future__ import annotations

import torch

from node.engine.evaluator import DeviceCopy, on_device
from protocol.sparse import compress, decompress
from protocol.spec import CodecSpec


def test_an_unchanged_theta_is_copied_once() -> None:
    theta = [torch.ones(3, 4), torch.zeros(5)]
    cache = DeviceCopy(torch.device("cpu"))
    first = cache.of(theta)
    for a, b in zip(first, theta, strict=True):
        assert torch.equal(a, b)
        assert a.data_ptr() != b.data_ptr()
    assert all(a is b for a, b in zip(cache.of(theta), first, strict=True))
    again = cache.of(list(theta))  # the same tensors in a new list
    assert all(a is b for a, b in zip(again, first, strict=True))


def test_an_in_place_write_or_new_tensors_make_a_new_copy() -> None:
    theta = [torch.ones(3, 4), torch.zeros(5)]
    cache = DeviceCopy(torch.device("cpu"))
    first = cache.of(theta)
    theta[1].add_(2.0)
    second = cache.of(theta)
    assert second[1] is not first[1]
    assert torch.equal(second[1], torch.full((5,), 2.0))
    fresh = [t.clone() for t in theta]
    assert all(a is not b for a, b in zip(cache.of(fresh), second, strict=True))


def test_a_sparse_tensor_moved_decompresses_to_the_same_values() -> None:
    spec = CodecSpec()
    x = torch.randn(128, 96, generator=torch.Generator().manual_seed(0))
    st = compress(x, spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    moved = decompress(on_device(st, device), (128, 96), spec)
    assert moved.device.type == device.type
    assert torch.equal(moved.cpu(), decompress(st, (128, 96), spec))
