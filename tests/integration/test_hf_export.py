"""An exported folder is a real `LlamaForCausalLM`: HF computes our model's logits,
generates, tokenizes like us, and importing it back gives bit-identical θ.

Everything runs on files written here: nothing is fetched from a hub.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from node.cli.export import add_export_commands
from node.engine.hf import (
    ExportError,
    byte_level_alphabet,
    export_model,
    from_hf_state,
    hf_shapes,
    import_model,
    to_hf_state,
)
from node.engine.model import Decoder, ModelConfig, build_model, get_config, parameter_shapes
from node.engine.store import CheckpointStore
from node.errors import CheckpointError
from node.outer.step import params_digest
from tests.support.threads import one_thread  # noqa: F401

transformers = pytest.importorskip(
    "transformers", reason="transformers (the reference implementation) is a dev extra")

TINY = get_config("tiny")
# grouped-query attention: k and v rows of the fused qkv are fewer than q's
GQA = ModelConfig("gqa-test", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  ffn_dim=96, max_seq_len=32, rope_theta=50000.0, norm_eps=1e-6)
TEXT = "gradmesh trains one model across many machines.\n\nhéllo, wörld ✓ 🎉\t tabs  spaces"
CARD = {"run": "run-7", "windows": 12, "tokens": 1_572_864, "heldout_loss": 3.21,
        "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"}



def perturbed(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A built model nudged off its init, so norm weights are not all ones."""
    model = build_model(cfg, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def params_of(model: Decoder) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def load_hf(folder: Path) -> Any:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    assert problems == {}, "missing, unexpected or mismatched keys"
    return model.eval()


def max_logit_diff(ours: Decoder, theirs: Any, cfg: ModelConfig) -> float:
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len),
                           generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return float((ours(tokens) - theirs(tokens).logits).abs().max())


@pytest.fixture(scope="module")
def tiny() -> Decoder:
    return perturbed(TINY)


@pytest.fixture(scope="module")
def exported(tiny: Decoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(params_of(tiny), TINY, tmp_path_factory.mktemp("hf") / "tiny", card=CARD)


@pytest.fixture(scope="module")
def hf_tiny(exported: Path) -> Any:
    return load_hf(exported)


# --- the model ---------------------------------------------------------------------------


def test_the_folder_holds_what_transformers_reads(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert names == {"config.json", "model.safetensors", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "README.md"}
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"]
    assert config["bos_token_id"] is None
    assert config["eos_token_id"] is None
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(hf_shapes(TINY))  # lm_head is tied, not stored


def test_hf_llama_computes_our_logits(tiny: Decoder, hf_tiny: Any) -> None:
    diff = max_logit_diff(tiny, hf_tiny, TINY)
    print(f"tiny: max |logit diff| = {diff:.3e}")
    assert diff < 1e-4
    # tied: HF's head is the very embedding tensor
    assert hf_tiny.lm_head.weight.data_ptr() == hf_tiny.model.embed_tokens.weight.data_ptr()


def test_grouped_query_attention_maps_too(tmp_path: Path) -> None:
    ours = perturbed(GQA, seed=5)
    folder = export_model(params_of(ours), GQA, tmp_path / "gqa")
    diff = max_logit_diff(ours, load_hf(folder), GQA)
    print(f"gqa: max |logit diff| = {diff:.3e}")
    assert diff < 1e-4


def test_greedy_generate_follows_our_argmax(tiny: Decoder, hf_tiny: Any) -> None:
    prompt = torch.tensor([list(b"def main(")])
    generated = hf_tiny.generate(prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 6)
    tokens = prompt
    with torch.no_grad():
        for _ in range(6):
            tokens = torch.cat([tokens, tiny(tokens)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, tokens)


def test_import_gives_back_bit_identical_params(tiny: Decoder, exported: Path) -> None:
    back = import_model(exported, TINY)
    original = params_of(tiny)
    assert len(back) == len(original)
    assert all(a.dtype == torch.float32 and torch.equal(a, b)
               for a, b in zip(back, original, strict=True))


def test_state_round_trip_and_tied_head(tiny: Decoder) -> None:
    state = to_hf_state(params_of(tiny), TINY)
    assert {k: tuple(v.shape) for k, v in state.items()} == hf_shapes(TINY)
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in state.values())
    with_head = {**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}
    for got in (from_hf_state(state, TINY), from_hf_state(with_head, TINY)):
        assert all(torch.equal(a, b) for a, b in zip(got, params_of(tiny), strict=True))


def test_bad_states_are_refused(tiny: Decoder) -> None:
    state = to_hf_state(params_of(tiny), TINY)
    missing = {k: v for k, v in state.items() if "q_proj" not in k}
    with pytest.raises(ExportError, match="missing"):
        from_hf_state(missing, TINY)
    wrong = {**state, "model.norm.weight": torch.ones(3)}
    with pytest.raises(ExportError, match=r"model\.norm\.weight"):
        from_hf_state(wrong, TINY)
    untied = {**state, "lm_head.weight": torch.zeros_like(state["model.embed_tokens.weight"])}
    with pytest.raises(ExportError, match="tied"):
        from_hf_state(untied, TINY)
    with pytest.raises(ExportError, match="model small"):
        to_hf_state(params_of(tiny), get_config("small"))


def test_import_names_the_config_field_that_differs(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="hidden_size"):
        import_model(exported, get_config("small"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in exported.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 500000.0
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="rope_theta"):
        import_model(copy, TINY)
    (copy / "model.safetensors").write_bytes(b"not safetensors")
    config["rope_parameters"]["rope_theta"] = TINY.rope_theta
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="safetensors"):
        import_model(copy, TINY)


def test_export_refuses_a_non_empty_folder(tiny: Decoder, exported: Path) -> None:
    with pytest.raises(ExportError, match="not empty"):
        export_model(params_of(tiny), TINY, exported)


def test_the_model_card_lists_the_run(exported: Path) -> None:
    readme = (exported / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers")
    for key, value in CARD.items():
        assert f"| {key} | {value} |" in readme


# --- tokenizers --------------------------------------------------------------------------


def test_the_byte_tokenizer_is_utf8_bytes(exported: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert tok.get_vocab() == {c: b for b, c in enumerate(byte_level_alphabet())}
    points = [*range(0x800), *(c for c in range(0x800, 0x110000, 0x400)
                               if not 0xD800 <= c < 0xE000)]  # no surrogates
    every_utf8_byte = "".join(map(chr, points))
    # every byte value UTF-8 uses (all but C0, C1 and F5..FF) occurs at least once
    assert set(every_utf8_byte.encode()) == set(range(256)) - {0xC0, 0xC1, *range(0xF5, 256)}
    for text in (TEXT, every_utf8_byte):
        ids = tok(text, verbose=False)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def train_bpe(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tokenizer.train_from_iterator([TEXT] * 20, trainer=trainer)
    tokenizer.save(str(path))
    return path


def test_a_bpe_tokenizer_travels_with_the_model(tiny: Decoder, tmp_path: Path) -> None:
    tokenizer_file = train_bpe(tmp_path / "tokenizer.json")
    folder = export_model(params_of(tiny), TINY, tmp_path / "bpe", tokenizer_file=tokenizer_file)
    assert (folder / "tokenizer.json").read_bytes() == tokenizer_file.read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    text = "gradmesh trains one model across many machines."
    ids = tok(text)["input_ids"]
    assert len(ids) < len(text)
    assert max(ids) < TINY.vocab_size
    assert tok.decode(ids) == text
    config = json.loads((folder / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")


def test_a_tokenizer_larger_than_the_embedding_is_refused(tiny: Decoder, tmp_path: Path
                                                          ) -> None:
    small = ModelConfig("v64", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                        ffn_dim=64, max_seq_len=16)
    params = params_of(build_model(small, seed=0))
    with pytest.raises(ExportError, match="tokens, model v64"):
        export_model(params, small, tmp_path / "x", tokenizer_file=train_bpe(tmp_path / "t.json"))
    assert not (tmp_path / "x").exists()


# --- the command -------------------------------------------------------------------------


def run_export(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gradmesh")
    add_export_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return int(args.func(args))


def test_export_command_takes_the_newest_checkpoint_of_a_data_dir(
        tiny: Decoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = params_of(tiny)
    store = CheckpointStore(tmp_path / "data" / "checkpoints")
    stale = [torch.zeros(shape) for _, shape in parameter_shapes(TINY)]
    store.save(3, stale, meta={"run": "run-7", "digest": params_digest(stale).hex()})
    store.save(5, params, meta={"run": "run-7", "digest": params_digest(params).hex()})
    out = tmp_path / "out"
    assert run_export("--checkpoint", str(tmp_path / "data"), "--out", str(out),
                      "--card", "heldout_loss=3.5") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out)
    assert "window 5" in printed[1]
    assert "run-7" in printed[1]
    assert len(printed) == 2
    back = import_model(out, TINY)
    assert all(torch.equal(a, b) for a, b in zip(back, params, strict=True))
    readme = (out / "README.md").read_text()
    assert "| window | 5 |" in readme
    assert "| heldout_loss | 3.5 |" in readme


def test_export_command_checks_the_recorded_digest(tiny: Decoder, tmp_path: Path) -> None:
    path = CheckpointStore(tmp_path).save(1, params_of(tiny), meta={"digest": "00" * 32})
    with pytest.raises(CheckpointError, match="digest"):
        run_export("--checkpoint", str(path), "--out", str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_export("--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"))
