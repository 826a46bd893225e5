"""Checkpoints: parameter bytes, the signed manifest, chunk checks and the local store."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.engine.model import Decoder, build_model, get_config, model_manifest
from node.engine.store import CheckpointStore
from node.errors import ConfigError, CorruptCheckpointError
from node.runtime.checkpoint import (
    MAX_TOTAL_BYTES,
    MIN_CHUNK_SIZE,
    BadManifestError,
    CheckpointError,
    CheckpointManifest,
    ChunkMismatchError,
    DigestMismatchError,
    ShapeMismatchError,
    assemble,
    deserialize_params,
    make_checkpoint,
    restore_params,
    serialize_params,
    sha256,
    verify_chunk,
)
from protocol import canonical
from tests.support.keys import identity
from tests.support.models import model_digest

KIB = 1024


@pytest.fixture(scope="module")
def model() -> Decoder:
    return build_model(get_config("tiny"), seed=0)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def _make(model: Decoder, chunk_size: int = 64 * KIB, signer: int = 1
          ) -> tuple[CheckpointManifest, list[bytes]]:
    return make_checkpoint(identity(signer), run="run-a", window=7, model="tiny",
                           manifest=model_manifest(model), params=_params(model),
                           chunk_size=chunk_size)


def _small_manifest(**overrides: object) -> CheckpointManifest:
    fields: dict[str, object] = {
        "run": "r", "window": 3, "model": "tiny", "manifest_digest": sha256(b"m"),
        "param_digest": sha256(b"p"), "total_bytes": 2 * MIN_CHUNK_SIZE + 4,
        "chunk_size": MIN_CHUNK_SIZE, "chunk_hashes": [sha256(bytes([i])) for i in range(3)],
    }
    fields.update(overrides)
    return CheckpointManifest.create(identity(1), **fields)  # type: ignore[arg-type]


VALID_WIRE = _small_manifest().encode()


# --- parameter bytes ---------------------------------------------------------------


def test_serialized_bytes_hash_to_the_theta_digest(model: Decoder) -> None:
    data = serialize_params(_params(model))
    assert hashlib.sha256(data).digest() == model_digest(model)
    assert len(data) == 4 * sum(p.numel() for p in model.parameters())


def test_deserialize_round_trips_into_writable_owned_tensors(model: Decoder) -> None:
    buffer = bytearray(serialize_params(_params(model)))
    shapes = [tuple(p.shape) for p in model.parameters()]
    tensors = deserialize_params(buffer, shapes)
    buffer[:] = bytes(len(buffer))  # the caller reusing its buffer must not change them
    for original, copy in zip(model.parameters(), tensors, strict=True):
        assert copy.dtype == torch.float32
        assert torch.equal(original.detach(), copy)
    tensors[0].add_(1.0)  # writable, and not aliasing the model
    assert not torch.equal(tensors[0], next(model.parameters()).detach())


def test_serialize_converts_other_dtypes_and_layouts_to_fp32() -> None:
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).T  # non-contiguous bf16
    [back] = deserialize_params(serialize_params([t]), [(3, 2)])
    assert torch.equal(back, t.float())


@pytest.mark.parametrize("size", [0, 11, 12, 16, 17])
def test_deserialize_refuses_size_mismatches(size: int) -> None:
    if size == 12:
        assert deserialize_params(bytes(size), [(3,)])[0].shape == (3,)
        return
    with pytest.raises(ShapeMismatchError):
        deserialize_params(bytes(size), [(3,)])


def test_deserialize_refuses_negative_dims() -> None:
    with pytest.raises(ShapeMismatchError):
        deserialize_params(b"", [(-1, 0)])


# --- manifest, chunks, assembly ----------------------------------------------------


def test_checkpoint_round_trip_restores_the_exact_model(model: Decoder) -> None:
    manifest, chunks = _make(model)
    decoded = CheckpointManifest.decode(manifest.encode())
    assert decoded == manifest
    assert decoded.signer == identity(1).address
    assert decoded.chunk_count == len(chunks) > 1
    assert len(chunks[-1]) == decoded.chunk_length(decoded.chunk_count - 1) <= 64 * KIB
    params = restore_params(decoded, chunks, model_manifest(model))
    fresh = build_model(get_config("tiny"), seed=1)
    with torch.no_grad():
        for target, value in zip(fresh.parameters(), params, strict=True):
            target.copy_(value)
    assert model_digest(fresh) == model_digest(model) == decoded.param_digest


def test_default_chunk_size_fits_the_default_manifest_cap(model: Decoder) -> None:
    manifest, chunks = make_checkpoint(identity(1), run="r", window=0, model="tiny",
                                       manifest=model_manifest(model), params=_params(model))
    assert manifest.chunk_size == 1024 * KIB
    assert assemble(CheckpointManifest.decode(manifest.encode()), chunks) == b"".join(chunks)


def test_tampered_chunks_are_blamed_by_index(model: Decoder) -> None:
    manifest, chunks = _make(model)
    bad = bytearray(chunks[2])
    bad[100] ^= 1
    with pytest.raises(ChunkMismatchError) as info:
        verify_chunk(manifest, 2, bytes(bad))
    assert info.value.index == 2
    with pytest.raises(ChunkMismatchError):
        assemble(manifest, [*chunks[:2], bytes(bad), *chunks[3:]])
    with pytest.raises(ChunkMismatchError):
        verify_chunk(manifest, 0, chunks[0][:-4])  # right prefix, wrong length
    with pytest.raises(ChunkMismatchError):
        verify_chunk(manifest, 1, chunks[0])  # a valid chunk in the wrong place
    with pytest.raises(ChunkMismatchError):
        verify_chunk(manifest, len(chunks), b"")
    with pytest.raises(ChunkMismatchError):
        assemble(manifest, chunks[:-1])


def test_signed_but_wrong_param_digest_fails_assembly(model: Decoder) -> None:
    manifest, chunks = _make(model)
    lying = CheckpointManifest.create(
        identity(1), **{f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest)
                        if f.name not in ("signer", "signature", "param_digest")},
        param_digest=sha256(b"something else"))
    with pytest.raises(DigestMismatchError):
        assemble(lying, chunks)


def test_parameters_must_match_the_tensor_manifest(model: Decoder) -> None:
    with pytest.raises(ShapeMismatchError):
        make_checkpoint(identity(1), run="r", window=0, model="tiny",
                        manifest=model_manifest(model), params=_params(model)[:-1])
    manifest, chunks = _make(model)
    other = model_manifest(build_model(get_config("small"), seed=0))
    with pytest.raises(BadManifestError):
        restore_params(manifest, chunks, other)


def test_forged_or_altered_manifests_are_refused() -> None:
    manifest = _small_manifest()
    claims_other = dataclasses.replace(manifest, signer=identity(2).address)
    with pytest.raises(BadManifestError, match="not signed by its signer"):
        CheckpointManifest.decode(claims_other.encode())
    altered = dataclasses.replace(manifest, window=manifest.window + 1)
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(altered.encode())
    # a real signature by key 2 over a manifest that names key 1 as signer
    forged = dataclasses.replace(manifest, signature=identity(2).sign_hash(
        manifest.signing_hash()))
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(forged.encode())


def test_expect_checks_run_model_shape_and_trusted_signers() -> None:
    manifest = _small_manifest()
    digest = sha256(b"m")
    manifest.expect(run="r", model="tiny", manifest_digest=digest, signers={identity(1).address})
    with pytest.raises(BadManifestError):
        manifest.expect(run="x", model="tiny", manifest_digest=digest)
    with pytest.raises(BadManifestError):
        manifest.expect(run="r", model="small", manifest_digest=digest)
    with pytest.raises(BadManifestError):
        manifest.expect(run="r", model="tiny", manifest_digest=sha256(b"x"))
    with pytest.raises(BadManifestError, match="not trusted"):
        manifest.expect(run="r", model="tiny", manifest_digest=digest,
                        signers={identity(2).address})


@pytest.mark.parametrize("overrides", [
    {"chunk_size": MIN_CHUNK_SIZE - 1},
    {"chunk_size": 16 * 1024 * KIB + 1, "total_bytes": 4, "chunk_hashes": [sha256(b"")]},
    {"total_bytes": 2 * MIN_CHUNK_SIZE},  # implies 2 chunks, 3 hashes given
    {"total_bytes": 2 * MIN_CHUNK_SIZE + 5},  # not a whole number of fp32 values
    {"total_bytes": 0, "chunk_hashes": []},
    {"total_bytes": MAX_TOTAL_BYTES + 4},
    {"chunk_hashes": [b"short", sha256(b""), sha256(b"")]},
    {"run": ""},
    {"run": "é" * 33},  # 33 characters but 66 bytes: over the wire cap
    {"model": "m" * 33},
    {"manifest_digest": b"\x00" * 31},
])
def test_inconsistent_manifests_are_neither_signed_nor_accepted(
        overrides: dict[str, object]) -> None:
    with pytest.raises(BadManifestError):
        _small_manifest(**overrides)
    unsigned = dataclasses.replace(_small_manifest(), signature=b"",
                                   **overrides)  # type: ignore[arg-type]
    if isinstance(unsigned.chunk_hashes, list):
        unsigned = dataclasses.replace(unsigned, chunk_hashes=tuple(unsigned.chunk_hashes))
    signed = dataclasses.replace(unsigned, signature=identity(1).sign_hash(
        unsigned.signing_hash()))
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(signed.encode(), max_bytes=10**6)


def test_oversized_and_truncated_manifests() -> None:
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(VALID_WIRE, max_bytes=len(VALID_WIRE) - 1)
    for cut in range(len(VALID_WIRE)):
        with pytest.raises(BadManifestError):
            CheckpointManifest.decode(VALID_WIRE[:cut])
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(VALID_WIRE + b"\x00")
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(b"\x00" * (64 * KIB + 1))


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_bad_manifest(data: bytes) -> None:
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(data)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=12),
    max_leaves=30,
)  # fmt: skip


@given(wire_values)
@settings(max_examples=300, deadline=None)
def test_well_formed_msgpack_of_the_wrong_shape_raises_only_bad_manifest(value: object) -> None:
    with pytest.raises(BadManifestError):
        CheckpointManifest.decode(canonical.pack(value))


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_mutated_valid_manifests_raise_only_bad_manifest(data: st.DataObject) -> None:
    wire = bytearray(VALID_WIRE)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, len(wire)), label="pos")
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and pos < len(wire):
            wire[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del wire[pos:pos + data.draw(st.integers(1, 8))]
        else:
            del wire[pos:]
    try:
        decoded = CheckpointManifest.decode(bytes(wire))
    except BadManifestError:
        return
    # canonical bytes plus a signature: only the untouched encoding can decode
    assert bytes(wire) == VALID_WIRE
    assert decoded == _small_manifest()


# --- local store ---------------------------------------------------------------------


def _small_params(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]


def test_store_round_trips_model_extra_tensors_and_meta(tmp_path: Path, model: Decoder) -> None:
    store = CheckpointStore(tmp_path)
    error_feedback = {"ef.0": torch.randn(8, 8, dtype=torch.bfloat16), "ef.scalar": torch.ones(())}
    meta: dict[str, str | int | float] = {
        "lr": 3e-4, "step": 120, "neg": -(2**63), "run": "run-a", "nan": float("nan")}
    path = store.save(5, _params(model), extra=error_feedback, meta=meta)
    loaded = store.latest()
    assert loaded is not None
    assert (loaded.window, loaded.path) == (5, path)
    assert {k: v for k, v in loaded.meta.items() if k != "nan"} == {
        k: v for k, v in meta.items() if k != "nan"}
    assert loaded.meta["nan"] != loaded.meta["nan"]  # NaN survives bit-exactly
    assert hashlib.sha256(serialize_params(loaded.params)).digest() == model_digest(model)
    assert set(loaded.extra) == set(error_feedback)
    for name, tensor in error_feedback.items():
        assert loaded.extra[name].dtype == torch.float32  # stored as fp32
        assert torch.equal(loaded.extra[name], tensor.float())
    loaded.params[0].add_(1.0)  # writable
    assert store.load(path).window == 5


def test_store_ignores_leftover_temp_files_and_strangers(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _small_params(1))
    (tmp_path / ".ckpt-abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "ckpt-000000000009.gmck.tmp").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("hello")
    latest = store.latest()
    assert latest is not None
    assert latest.window == 1
    assert store.paths() == [store.path_for(1)]


def test_failed_save_leaves_no_temp_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError):
        store.save(1, _small_params(1), meta={"flag": True})
    with pytest.raises(CheckpointError):
        store.save(1, _small_params(1), meta={"big": 2**64})
    with pytest.raises(CheckpointError):
        store.save(1, _small_params(1), extra={"": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []
    assert store.latest() is None


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[:-5]
    elif how == "body":
        data[-1] ^= 0x10
    elif how == "header":
        data[20] ^= 0x01  # inside the msgpack header (window / meta region)
    elif how == "garbage":
        data = bytearray(b"not a checkpoint at all")
    else:  # "extend"
        data += b"\x00\x00\x00\x00"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "body", "header", "garbage", "extend"])
def test_damaged_newest_file_falls_back_to_the_previous_one(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _small_params(1), meta={"step": 1})
    newest = store.save(2, _small_params(2), meta={"step": 2})
    _corrupt(newest, how)
    with caplog.at_level(logging.WARNING, logger="node.engine.store"):
        latest = store.latest()
    assert latest is not None
    assert (latest.window, latest.meta) == (1, {"step": 1})
    assert torch.equal(latest.params[0], _small_params(1)[0])
    assert "skipping damaged checkpoint" in caplog.text
    with pytest.raises(CorruptCheckpointError):
        store.load(newest)


def test_renamed_file_is_refused_and_all_damaged_gives_none(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _small_params(1))
    store.path_for(1).rename(store.path_for(3))  # claims a newer window than it holds
    with pytest.raises(CorruptCheckpointError, match="holds window 1"):
        store.load(store.path_for(3))
    assert store.latest() is None
    assert CheckpointStore(tmp_path / "missing").latest() is None


def test_pruning_keeps_the_newest_files(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for window in (3, 1, 5, 4, 2):
        store.save(window, _small_params(window))
    assert store.paths() == [store.path_for(5), store.path_for(4)]
    with pytest.raises(ConfigError):
        CheckpointStore(tmp_path, keep=0)


@given(st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_single_byte_change_to_a_file_is_detected(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = CheckpointStore(Path(directory))
        path = store.save(4, _small_params(4), extra={"ef": torch.ones(2)}, meta={"x": 1.5})
        raw = bytearray(path.read_bytes())
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
        with pytest.raises(CorruptCheckpointError):
            store.load(path)


@given(st.binary(max_size=512))
@settings(max_examples=100, deadline=None)
def test_random_files_raise_only_corrupt_checkpoint(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ckpt-000000000001.gmck"
        path.write_bytes(data)
        with pytest.raises(CorruptCheckpointError):
            CheckpointStore(Path(directory)).load(path)
