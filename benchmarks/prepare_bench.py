"""Data-preparation throughput: `prepare_shards` against `tokenizers`' own encode_batch.

The input is the running interpreter's standard library cut into documents of
about --doc-kib KiB, written as one .jsonl file of about --mib MiB. A byte-level
BPE (--vocab ids) is trained on the first MiB of it (or --tokenizer is loaded).
Measured in the same run, on the same documents:

* baseline: `tokenizers.Tokenizer.encode_batch(texts)` on the texts already in
  memory (its own rayon threads; no file reading, no JSON, no output);
* `encode_batch_fast` likewise (no offsets): the library's quickest path;
* `prepare_shards` end to end (read and parse the .jsonl, hash for the split,
  tokenize in --workers processes, write shards and manifest), once per worker
  count.

Each row is the fastest of --repeat runs (shared machines are noisy).

Throughput is tokens/s (prepare_shards' count includes one end-of-text id per
document; the baselines' does not), and each row's ratio is to the baseline.

    python benchmarks/prepare_bench.py --mib 8 --workers 1,2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def build_input(path: Path, mib: float, doc_kib: float) -> int:
    """Write about `mib` MiB of stdlib-source documents as .jsonl; returns the count."""
    from node.engine.data import stdlib_files

    budget, size, count = int(mib * 2**20), int(doc_kib * 1024), 0
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        for _, source in stdlib_files():
            text = source.read_bytes().decode("utf-8", errors="replace")
            for start in range(0, len(text), size):
                line = json.dumps({"text": text[start:start + size]}) + "\n"
                fh.write(line)
                written += len(line)
                count += 1
                if written >= budget:
                    return count
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=8.0, help="size of the .jsonl input")
    parser.add_argument("--doc-kib", type=float, default=4.0, help="document size")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary to train")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json to use")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from node.engine.prepare import prepare_shards
    from node.engine.tokenizer import BPETokenizer, read_text_file, train_bpe

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "input.jsonl"
        documents = build_input(data, args.mib, args.doc_kib)
        texts = [json.loads(line)["text"] for line in data.open(encoding="utf-8")]
        if args.tokenizer is not None:
            tokenizer = BPETokenizer.from_file(args.tokenizer)
        else:
            sample = tmp / "sample.txt"
            sample.write_text("".join(texts)[: 2**20], encoding="utf-8")
            t0 = time.perf_counter()
            tokenizer = train_bpe([sample], args.vocab, tmp / "tokenizer.json",
                                  read=read_text_file)
            print(f"trained a {tokenizer.vocab_size}-id BPE on 1 MiB in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        hf = tokenizer._hf  # the wrapped tokenizers.Tokenizer: the library's own calls

        def best(run: Callable[[], int]) -> tuple[int, float]:
            """(tokens, fastest seconds) of `--repeat` runs (a shared machine is noisy)."""
            times, tokens = [], 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                tokens = run()
                times.append(time.perf_counter() - t0)
            return tokens, min(times)

        def prepare(workers: int) -> int:
            manifest = prepare_shards([data], tmp / f"out{workers}", tokenizer=tokenizer,
                                      workers=workers)
            hashes.add(manifest.manifest_sha256)
            return manifest.tokens

        hashes: set[str] = set()
        rows = [
            ("tokenizers encode_batch (in memory)", *best(lambda: sum(
                len(e.ids) for e in hf.encode_batch(texts, add_special_tokens=False)))),
            ("tokenizers encode_batch_fast (in memory)", *best(lambda: sum(
                len(e.ids) for e in hf.encode_batch_fast(texts, add_special_tokens=False)))),
        ]
        for workers in (int(w) for w in args.workers.split(",")):
            rows.append((f"prepare_shards workers={workers} (.jsonl → shards)",
                         *best(lambda w=workers: prepare(w))))
        base_rate = rows[0][1] / rows[0][2]
        summary = {
            "input_mib": data.stat().st_size / 2**20, "documents": documents,
            "vocab_size": tokenizer.vocab_size, "manifest_hashes_equal": len(hashes) == 1,
            "rows": [{"what": what, "tokens": n, "seconds": round(s, 3),
                      "tokens_per_s": round(n / s), "ratio_to_encode_batch": round(
                          (n / s) / base_rate, 3)} for what, n, s in rows],
        }  # fmt: skip
    print(f"input {summary['input_mib']:.1f} MiB .jsonl, {documents:,} documents, "
          f"vocabulary {tokenizer.vocab_size:,}")
    print(f"{'':46} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'ratio':>7}")
    for row in summary["rows"]:
        print(f"{row['what']:46} {row['tokens']:>12,} {row['seconds']:>8.2f} "
              f"{row['tokens_per_s']:>12,} {row['ratio_to_encode_batch']:>7.2f}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
