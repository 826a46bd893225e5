"""A model's whole life on one machine: train a BPE tokenizer on part of the embedded
corpus, prepare shards with it, train a few windows on them (the simulator's miners,
the daemons' outer step), export θ_global for Hugging Face, load it with
`transformers`, and import it back bit for bit. A node whose tokenizer or data differ
from the run spec refuses to start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from node.engine.data import stdlib_files
from node.engine.hf import export_model, import_model
from node.engine.model import build_model, get_config
from node.engine.prepare import prepare_shards
from node.engine.tokenizer import BPETokenizer, train_bpe
from node.runtime.runspec import RunAssets, RunMismatchError
from node.sim.simulate import SimConfig, Swarm
from tests.support.threads import one_thread  # noqa: F401

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")

VOCAB = 512



@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SimConfig]:
    root = tmp_path_factory.mktemp("lifecycle")
    sources = [path for rel, path in stdlib_files() if rel.startswith(("json/", "email/"))][:40]
    assert len(sources) >= 10, "the embedded corpus lacks the json and email packages"
    tokenizer_file = root / "tokenizer.json"
    tokenizer = train_bpe(sources, VOCAB, tokenizer_file)
    data = root / "shards"
    manifest = prepare_shards(sources, data, tokenizer=tokenizer, heldout_fraction=0.3)
    cfg = SimConfig.build(miners=2, rounds=2, inner_steps=3, batch_size=2, seq_len=64,
                          eval_batches=2, warmup_steps=1, inner_lr=3e-3, data=data,
                          vocab_size=VOCAB, tokenizer_sha256=tokenizer.sha256,
                          data_sha256=manifest.manifest_sha256)
    return tokenizer_file, data, cfg


def test_train_on_bpe_shards_export_load_and_import(run: tuple[Path, Path, SimConfig],
                                                    tmp_path: Path) -> None:
    tokenizer_file, _, cfg = run
    swarm = Swarm(cfg)
    before = swarm.heldout_loss()
    for window in range(cfg.rounds):
        swarm.run_round(window)
    assert len({m.engine.digest() for m in swarm.miners}) == 1
    assert swarm.heldout_loss() < before
    theta = swarm.miners[0].engine.full_params()
    model_cfg = get_config("tiny", VOCAB)
    out = export_model(theta, model_cfg, tmp_path / "hf", tokenizer_file=tokenizer_file,
                       card={"run": cfg.spec.run, "windows": cfg.rounds})

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = build_model(model_cfg, seed=0).eval()
    with torch.no_grad():
        for p, t in zip(ours.parameters(), theta, strict=True):
            p.copy_(t)
        batch = swarm.assets.eval_batches[0][:, :32]
        diff = (hf(batch).logits - ours(batch)).abs().max()
    assert float(diff) < 1e-4
    generated = hf.generate(batch[:1, :8], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 12)

    text = "def dumps(obj):\n    return encode(obj)\n"
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == BPETokenizer.from_file(tokenizer_file).encode(text).tolist()
    assert tok.decode(ids) == text

    back = import_model(out, model_cfg)
    assert all(torch.equal(a, b) for a, b in zip(back, theta, strict=True))


@pytest.mark.parametrize(("field", "value", "says"), [
    ("tokenizer_sha256", "0" * 64, "tokenizer differs"),
    ("data_sha256", "f" * 64, "data differs"),
    ("vocab_size", 256, "only 256"),
])
def test_a_node_with_other_data_refuses_to_start(run: tuple[Path, Path, SimConfig], field: str,
                                                value: object, says: str) -> None:
    spec = dataclasses.replace(run[2].spec, **{field: value})
    with pytest.raises(RunMismatchError, match=says):
        RunAssets(spec)
