"""`gradmesh tokenizer train`, `gradmesh data prepare` and `gradmesh data verify`.

Most tests drive the commands in-process through a parser built with
`add_data_commands` (answering errors as `gradmesh` does); the subprocess test
runs the real `gradmesh` once it registers these commands.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.data import add_data_commands
from node.engine.data import stdlib_files
from node.engine.prepare import prepare_shards
from node.engine.tokenizer import train_bpe
from node.errors import NodeError

ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradmesh")
    add_data_commands(p.add_subparsers(dest="command", required=True))
    return p


def run(*argv: str) -> int:
    """What `gradmesh ARGV` returns, with node errors answered like main() answers them."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NodeError as exc:
        print(f"gradmesh: error: {exc}", file=sys.stderr)
        return 2


def registered() -> bool:
    """Whether `gradmesh` itself has these commands (node/cli/main.py calls add_data_commands)."""
    from node.cli.main import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["tokenizer", "train", "x", "--vocab-size", "300",
                                       "--out", "y"])
    except SystemExit:
        return False
    return True


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~250 KB of stdlib sources as text files and one .jsonl of the same documents."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "src").mkdir()
    used, lines = 0, []
    for rel, path in stdlib_files():
        if used > 250_000:
            break
        text = path.read_bytes().decode("utf-8", errors="replace")
        (root / "src" / rel.replace("/", "_")).write_text(text)
        lines.append(json.dumps({"content": text}))
        used += len(text)
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_the_parser_keeps_the_old_prepare_flags_and_adds_the_new(tmp_path: Path) -> None:
    args = parser().parse_args(["data", "prepare", "a", "b", "--out", "o", "--shard-mib", "2",
                                "--heldout-fraction", "0.1", "--suffix", "txt", "--suffix",
                                "md", "--tokenizer", "t.json", "--text-field", "body",
                                "--workers", "3", "--skip-bad-records"])
    assert args.inputs == [Path("a"), Path("b")]
    assert (args.out, args.shard_mib, args.heldout_fraction) == (Path("o"), 2.0, 0.1)
    assert args.suffix == ["txt", "md"]
    assert (args.tokenizer, args.text_field, args.workers) == (Path("t.json"), "body", 3)
    assert args.skip_bad_records
    defaults = parser().parse_args(["data", "prepare", "a", "--out", "o"])
    assert (defaults.tokenizer, defaults.text_field, defaults.workers) == (None, "text", 0)
    train = parser().parse_args(["tokenizer", "train", "f", "--vocab-size", "500", "--out", "t"])
    assert (train.files, train.vocab_size, train.out) == ([Path("f")], 500, Path("t"))
    assert parser().parse_args(["data", "verify", "d"]).dir == Path("d")


def test_tokenizer_flag_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADMESH_TOKENIZER", "/x/tok.json")
    monkeypatch.setenv("GRADMESH_DATA_WORKERS", "4")
    args = parser().parse_args(["data", "prepare", "a", "--out", "o"])
    assert (args.tokenizer, args.workers) == (Path("/x/tok.json"), 4)


def test_train_prepare_verify(tmp_path: Path, corpus: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    tok = tmp_path / "tok.json"
    assert run("tokenizer", "train", str(corpus / "src"), "--vocab-size", "600",
               "--out", str(tok)) == 0
    out, err = capsys.readouterr()
    assert out.strip() == hashlib.sha256(tok.read_bytes()).hexdigest()
    assert "600" in err  # the summary table
    # the same documents through .jsonl give the same tokenizer
    assert run("tokenizer", "train", str(corpus / "docs.jsonl"), "--text-field", "content",
               "--vocab-size", "600", "--out", str(tmp_path / "tok2.json")) == 0
    assert capsys.readouterr().out == out

    shards = tmp_path / "shards"
    assert run("data", "prepare", str(corpus / "docs.jsonl"), "--tokenizer", str(tok),
               "--text-field", "content", "--workers", "1", "--shard-mib", "0.02",
               "--out", str(shards)) == 0
    prepared, err = capsys.readouterr()
    manifest = json.loads((shards / "manifest.json").read_text())
    assert prepared.strip() == manifest["manifest_sha256"]
    for word in ("documents", "tokens", "shards", manifest["manifest_sha256"]):
        assert word in err
    assert manifest["tokenizer"]["sha256"] == out.strip()
    assert manifest["dtype"] == "<u2"

    assert run("data", "verify", str(shards)) == 0
    verified, err = capsys.readouterr()
    assert verified == prepared
    assert "verified" in err

    shard = shards / "train-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0x40
    shard.write_bytes(bytes(raw))
    assert run("data", "verify", str(shards)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gradmesh: error:")
    assert "train-00001.bin" in err


def test_bad_inputs_are_one_line_errors(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    assert run("data", "prepare", str(bad), "--out", str(tmp_path / "o")) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert run("data", "prepare", str(bad), "--skip-bad-records", "--heldout-fraction", "0.01",
               "--out", str(tmp_path / "o")) == 0
    capsys.readouterr()
    assert run("data", "prepare", str(bad), "--tokenizer", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "o")) == 2
    assert str(tmp_path / "none.json") in capsys.readouterr().err
    assert run("data", "verify", str(tmp_path / "nowhere")) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert run("tokenizer", "train", str(bad), "--vocab-size", "100",
               "--out", str(tmp_path / "t.json")) == 2
    assert "vocab_size" in capsys.readouterr().err


@pytest.mark.skipif(not registered(), reason="node/cli/main.py does not register "
                                             "add_data_commands yet")
def test_gradmesh_subprocess_with_worker_processes(tmp_path: Path, corpus: Path) -> None:
    def gradmesh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli.main", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=240, check=False,
                              env={**os.environ, "GRADMESH_DATA_WORKERS": ""})

    tok = train_bpe(sorted((corpus / "src").iterdir()), 600, tmp_path / "tok.json")
    in_process = prepare_shards([corpus / "src"], tmp_path / "w1", tokenizer=tok, workers=1)
    prepared = gradmesh("data", "prepare", str(corpus / "src"), "--tokenizer",
                        str(tmp_path / "tok.json"), "--workers", "2",
                        "--out", str(tmp_path / "w2"))
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.strip() == in_process.manifest_sha256  # 2 workers as 1
    manifest = tmp_path / "w2" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["sources"] += 1
    manifest.write_text(json.dumps(body))
    broken = gradmesh("data", "verify", str(tmp_path / "w2"))
    assert broken.returncode == 2
    assert broken.stderr.startswith("gradmesh: error:")
    assert "Traceback" not in broken.stderr
