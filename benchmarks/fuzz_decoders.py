"""Decoder robustness: mutated and random inputs through every wire decoder.

Each input is fed to `open_envelope` (signature, header, limits) and its payload,
whatever the envelope check said, to the sparse decoder (fixed12 and gap-coded)
and the dense decoder. A typed `ProtocolError` is the expected answer to bad
bytes; anything else (another exception, a hang, a crash of the interpreter) is
a defect and is counted with the input's hex saved. Seeded: the same
`--seed` replays the same inputs. Not part of the test run (it takes minutes).

    .venv/bin/python benchmarks/fuzz_decoders.py --inputs 100000 [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from protocol.dense import decode_dense, encode_dense
from protocol.envelope import BaseModel, Expectation, open_envelope, read_unverified, seal
from protocol.errors import ProtocolError
from protocol.identity import Identity
from protocol.sparse import compress, decode_payload, encode_payload
from protocol.spec import CodecSpec, TensorSpec

MANIFEST = (TensorSpec("embed.weight", (256, 64)), TensorSpec("norm.weight", (64,)),
            TensorSpec("out.weight", (64, 100)))
CODECS = (CodecSpec(index_coding="fixed12"), CodecSpec(index_coding="gap"))
DENSE = CodecSpec(name="dense")
KEY = Identity.from_secret(bytes(range(1, 33)))


def seeds() -> list[bytes]:
    """Valid envelopes: one per codec, the mutation starting points."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s.shape, generator=gen) for s in MANIFEST]
    out = []
    for codec in CODECS:
        payload = encode_payload([compress(t, codec) for t in tensors], MANIFEST, codec)
        out.append(seal(KEY, run_id="fuzz", window=3, base=BaseModel(1, bytes(32)),
                        codec=codec, manifest=MANIFEST, payload=payload))
    out.append(seal(KEY, run_id="fuzz", window=3, base=BaseModel(1, bytes(32)), codec=DENSE,
                    manifest=MANIFEST, payload=encode_dense(tensors, MANIFEST)))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Byte flips, inserted and deleted runs, truncation, or plain random bytes."""
    kind = rng.randrange(5)
    buf = bytearray(data)
    if kind == 0:  # a few bytes set
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # a run inserted
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 2:  # a run deleted
        at = rng.randrange(len(buf))
        del buf[at:at + rng.randint(1, 64)]
    elif kind == 3:  # truncated
        del buf[rng.randrange(len(buf) + 1):]
    else:
        return rng.randbytes(rng.randint(0, 600))
    return bytes(buf)


def decoders() -> list[tuple[str, Callable[[bytes], object]]]:
    expects = [Expectation("fuzz", 3, c, MANIFEST) for c in (*CODECS, DENSE)]
    out: list[tuple[str, Callable[[bytes], object]]] = [
        (f"envelope/{e.codec.name}-{e.codec.index_coding}",
         lambda b, e=e: open_envelope(b, e)) for e in expects]
    out += [(f"sparse/{c.index_coding}", lambda b, c=c: decode_payload(
        read_unverified(b)[2], MANIFEST, c)) for c in CODECS]
    out.append(("dense", lambda b: decode_dense(read_unverified(b)[2], MANIFEST)))
    return out


def run(inputs: int, seed: int, out: Path) -> dict[str, object]:
    rng = random.Random(seed)
    starts = seeds()
    targets = decoders()
    crashes: dict[str, int] = {name: 0 for name, _ in targets}
    accepted = 0
    began = time.perf_counter()
    for i in range(inputs):
        data = mutate(rng, starts[i % len(starts)])
        for name, decode in targets:
            try:
                decode(data)
                accepted += 1
            except ProtocolError:
                pass
            except Exception as exc:
                crashes[name] += 1
                out.mkdir(parents=True, exist_ok=True)
                (out / f"crash-{name.replace('/', '_')}-{i}.hex").write_text(
                    f"{type(exc).__name__}: {exc}\n{data.hex()}\n")
    seconds = time.perf_counter() - began
    return {"inputs": inputs, "decoder_calls": inputs * len(targets), "seconds": round(seconds, 1),
            "inputs_per_s": round(inputs / seconds), "accepted_calls": accepted,
            "crashes": crashes, "crashes_total": sum(crashes.values()), "seed": seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-crashes"))
    args = ap.parse_args()
    print(json.dumps(run(args.inputs, args.seed, args.out), indent=2))


if __name__ == "__main__":
    main()
