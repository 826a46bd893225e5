"""Hugging Face adapter: our decoder as a `LlamaForCausalLM` folder, and back.

Our model (node/engine/model.py) is a Llama: RMSNorm, SwiGLU, tied embeddings,
no biases, and RoPE with the half-split pairing (x[i], x[i + hd/2]) and the
inverse frequencies theta^(-2i/hd) that HF's `rotate_half` uses, so the
mapping is a renaming plus two row splits and needs no permutation:

    embed.weight                  -> model.embed_tokens.weight (lm_head tied to it)
    layers.N.attn_norm.weight     -> model.layers.N.input_layernorm.weight
    layers.N.attn.wqkv.weight     -> rows [q | k | v] -> self_attn.{q,k,v}_proj.weight
    layers.N.attn.wo.weight       -> model.layers.N.self_attn.o_proj.weight
    layers.N.ffn_norm.weight      -> model.layers.N.post_attention_layernorm.weight
    layers.N.ffn.w13.weight       -> rows [gate | up] -> mlp.{gate,up}_proj.weight
    layers.N.ffn.w2.weight        -> model.layers.N.mlp.down_proj.weight
    norm.weight                   -> model.norm.weight

Weights are written with safetensors and read back with safetensors: no
pickle, and `import_model(export_model(...))` is bit-identical. The engine
owns θ, so this module hands tensors in and out; it never reaches a hub.
docs/export.md describes the folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from node.engine.model import ModelConfig, parameter_shapes
from node.errors import NodeError

__all__ = ["ExportError", "byte_level_alphabet", "byte_tokenizer_json", "export_model",
           "from_hf_state", "hf_config", "import_model", "read_config", "to_hf_state"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_TIED_HEAD = "lm_head.weight"
# special tokens a tokenizer.json may carry, by the names common tokenizers give them
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|bos|>")
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
# config.json fields that decide the function the weights compute (import checks them)
_CHECKED_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads",
                   "num_key_value_heads", "num_hidden_layers", "head_dim", "vocab_size",
                   "max_position_embeddings", "rms_norm_eps", "hidden_act",
                   "tie_word_embeddings", "attention_bias", "mlp_bias")


class ExportError(NodeError):
    """A model cannot be exported to, or imported from, a Hugging Face folder."""


# --- config ------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, *, bos_token_id: int | None = None,
              eos_token_id: int | None = None) -> dict[str, Any]:
    """The `LlamaConfig` fields (transformers 5 reads `rope_parameters`; 4 `rope_theta`)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        # explicit nulls: LlamaConfig's defaults (1, 2) are real byte tokens here
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
        "torch_dtype": "float32", "dtype": "float32",
    }


def check_config(found: Mapping[str, Any], cfg: ModelConfig) -> None:
    """Raise `ExportError` naming the first config.json field that differs from `cfg`."""
    want = hf_config(cfg)
    for field in _CHECKED_FIELDS:
        if field == "head_dim" and found.get(field) is None:
            continue  # LlamaConfig derives it from hidden_size / num_attention_heads
        if found.get(field) != want[field]:
            raise ExportError(f"config.json: {field} is {found.get(field)!r}, "
                              f"model {cfg.name} needs {want[field]!r}")
    theta = _rope_theta(found)
    if theta != cfg.rope_theta:
        raise ExportError(f"config.json: rope_theta is {theta!r}, "
                          f"model {cfg.name} needs {cfg.rope_theta!r}")


def _rope_theta(found: Mapping[str, Any]) -> object:
    rope = found.get("rope_parameters") or found.get("rope_scaling")
    if isinstance(rope, Mapping):
        if rope.get("rope_type", "default") != "default":
            raise ExportError(f"config.json: rope_type {rope.get('rope_type')!r} "
                              "is not the default RoPE")
        if "rope_theta" in rope:
            return rope["rope_theta"]
    return found.get("rope_theta", 10000.0)


# --- weights -----------------------------------------------------------------------------


def _layer_names(i: int) -> dict[str, str]:
    """Our per-layer names -> HF names, for the tensors that map one to one."""
    p, h = f"layers.{i}.", f"model.layers.{i}."
    return {p + "attn_norm.weight": h + "input_layernorm.weight",
            p + "attn.wo.weight": h + "self_attn.o_proj.weight",
            p + "ffn_norm.weight": h + "post_attention_layernorm.weight",
            p + "ffn.w2.weight": h + "mlp.down_proj.weight"}


def _splits(cfg: ModelConfig, name: str) -> list[tuple[str, int]]:
    """(HF name, rows) of the pieces a fused tensor of ours splits into; [] if not fused."""
    if not name.startswith("layers."):
        return []
    h = f"model.layers.{name.split('.')[1]}."
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    if name.endswith("attn.wqkv.weight"):
        return [(h + "self_attn.q_proj.weight", q_rows), (h + "self_attn.k_proj.weight", kv_rows),
                (h + "self_attn.v_proj.weight", kv_rows)]
    if name.endswith("ffn.w13.weight"):
        return [(h + "mlp.gate_proj.weight", cfg.ffn_dim), (h + "mlp.up_proj.weight", cfg.ffn_dim)]
    return []


@cache
def _renames(cfg: ModelConfig) -> dict[str, str]:
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layers):
        names.update(_layer_names(i))
    return names


def _pieces(cfg: ModelConfig, name: str) -> list[tuple[str, int]]:
    """Every (HF name, rows) that our tensor `name` becomes (one piece when not fused)."""
    rows = dict(parameter_shapes(cfg))[name][0]
    return _splits(cfg, name) or [(_renames(cfg)[name], rows)]


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of model `cfg` (lm_head excluded: it is tied)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in parameter_shapes(cfg):
        for hf_name, rows in _pieces(cfg, name):
            shapes[hf_name] = (rows, *shape[1:])
    return shapes


def _check_params(params: Sequence[Tensor], cfg: ModelConfig) -> None:
    expected = parameter_shapes(cfg)
    if len(params) != len(expected):
        raise ExportError(f"model {cfg.name} has {len(expected)} tensors, got {len(params)}")
    for (name, shape), tensor in zip(expected, params, strict=True):
        if tuple(tensor.shape) != shape:
            raise ExportError(f"{name}: shape {tuple(tensor.shape)}, model {cfg.name} "
                              f"expects {shape}")
        if not tensor.is_floating_point():
            raise ExportError(f"{name}: dtype {tensor.dtype} is not floating point")


def to_hf_state(params: Sequence[Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our tensors (manifest order) -> HF's state dict: contiguous fp32 CPU copies."""
    _check_params(params, cfg)
    state: dict[str, Tensor] = {}
    for (name, _), tensor in zip(parameter_shapes(cfg), params, strict=True):
        pieces = _pieces(cfg, name)
        parts = torch.split(tensor.detach().to("cpu", torch.float32), [r for _, r in pieces])
        for (hf_name, _), part in zip(pieces, parts, strict=True):
            state[hf_name] = part.clone(memory_format=torch.contiguous_format)
    return state


def _check_state(state: Mapping[str, Tensor], cfg: ModelConfig) -> None:
    shapes = hf_shapes(cfg)
    extra = sorted(set(state) - set(shapes) - {_TIED_HEAD})
    missing = sorted(set(shapes) - set(state))
    if extra or missing:
        raise ExportError(f"weights do not fit model {cfg.name}: missing {missing[:4]}, "
                          f"unexpected {extra[:4]}")
    for name, shape in shapes.items():
        tensor = state[name]
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise ExportError(f"{name}: {tensor.dtype} {tuple(tensor.shape)}, "
                              f"expected floating point {shape}")
    head = state.get(_TIED_HEAD)
    if head is not None and not torch.equal(head, state["model.embed_tokens.weight"]):
        raise ExportError("lm_head.weight differs from the embedding: our head is tied")


def from_hf_state(state: Mapping[str, Tensor], cfg: ModelConfig) -> list[Tensor]:
    """HF's state dict -> our tensors in manifest order (fp32): the exact inverse."""
    _check_state(state, cfg)
    params = []
    for name, _ in parameter_shapes(cfg):
        parts = [state[hf_name].to(torch.float32) for hf_name, _ in _pieces(cfg, name)]
        params.append(torch.cat(parts, dim=0) if len(parts) > 1 else parts[0].clone())
    return params


# --- tokenizer ---------------------------------------------------------------------------


@cache
def byte_level_alphabet() -> tuple[str, ...]:
    """The character `tokenizers`' ByteLevel stage maps byte b to, indexed by b (GPT-2's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    unprintable = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(unprintable)})
    return tuple(chars[b] for b in range(256))


def byte_tokenizer_json() -> str:
    """A `tokenizers` tokenizer whose ids are the UTF-8 bytes: our default tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in enumerate(byte_level_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    sample = "gradmesh: héllo, wörld\n\t✓ 🎉"
    if tokenizer.encode(sample).ids != list(sample.encode("utf-8")):
        raise ExportError("the synthesized byte tokenizer does not encode to UTF-8 bytes")
    text: str = tokenizer.to_str()
    return text


def _special_ids(tokenizer_text: str) -> tuple[int | None, int | None]:
    """(bos, eos) ids among a tokenizer.json's special added tokens, by common names."""
    try:
        added = json.loads(tokenizer_text).get("added_tokens") or []
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ExportError(f"tokenizer.json is not a JSON object: {exc}") from exc
    specials = {t.get("content"): t.get("id") for t in added if t.get("special")}
    bos = next((specials[n] for n in _BOS_NAMES if n in specials), None)
    eos = next((specials[n] for n in _EOS_NAMES if n in specials), None)
    return bos, eos


def _tokenizer_vocab_size(tokenizer_text: str) -> int:
    from tokenizers import Tokenizer

    try:
        size: int = Tokenizer.from_str(tokenizer_text).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # tokenizers raises bare Exceptions on malformed files
        raise ExportError(f"tokenizer.json cannot be loaded: {exc}") from exc
    return size


def _tokenizer_config(cfg: ModelConfig, tokenizer_text: str) -> dict[str, Any]:
    names = {t["id"]: t["content"] for t in json.loads(tokenizer_text).get("added_tokens") or []}
    bos, eos = _special_ids(tokenizer_text)
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "model_max_length": cfg.max_seq_len,
                              "clean_up_tokenization_spaces": False}
    for key, token_id in (("bos_token", bos), ("eos_token", eos)):
        if token_id is not None:
            config[key] = names[token_id]
    return config


# --- the folder --------------------------------------------------------------------------


def _card_value(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(cfg: ModelConfig, card: Mapping[str, object], param_total: int) -> str:
    """README.md: front matter for the Hub, then the run's facts as given in `card`."""
    title = card.get("run", card.get("run id", "gradmesh model"))
    rows = [("model config", cfg.name), ("parameters", f"{param_total:,}"),
            *((str(k), v) for k, v in card.items())]
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [gradmesh, llama, decentralized-training]", "---", "",
             f"# {_card_value(title)}", "",
             "A Llama-style decoder pre-trained permissionlessly with gradmesh.", "",
             "| fact | value |", "|---|---|",
             *(f"| {_card_value(k)} | {_card_value(v)} |" for k, v in rows), "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             'model = AutoModelForCausalLM.from_pretrained("PATH")',
             'tokenizer = AutoTokenizer.from_pretrained("PATH")', "```", ""]
    return "\n".join(lines)


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} is not empty (overwrite to replace its files)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _read_tokenizer(tokenizer_file: Path | None, cfg: ModelConfig) -> str:
    if tokenizer_file is None:
        text = byte_tokenizer_json()
    else:
        try:
            # bytes, not read_text: the copy keeps the file's exact bytes (line ends too)
            text = Path(tokenizer_file).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"tokenizer {tokenizer_file}: unreadable: {exc}") from exc
    size = _tokenizer_vocab_size(text)
    if size > cfg.vocab_size:
        raise ExportError(f"tokenizer has {size} tokens, model {cfg.name} only "
                          f"{cfg.vocab_size} embeddings")
    return text


def _write_configs(out_dir: Path, cfg: ModelConfig, tokenizer_text: str) -> None:
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json."""
    bos, eos = _special_ids(tokenizer_text)
    _write_json(out_dir / CONFIG_FILE, hf_config(cfg, bos_token_id=bos, eos_token_id=eos))
    _write_json(out_dir / "generation_config.json",
                {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None,
                 "do_sample": False})
    (out_dir / TOKENIZER_FILE).write_bytes(tokenizer_text.encode("utf-8"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(cfg, tokenizer_text))


def export_model(params: Sequence[Tensor], cfg: ModelConfig, out_dir: Path, *,
                 tokenizer_file: Path | None = None, card: Mapping[str, object] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a folder `transformers.AutoModelForCausalLM.from_pretrained` loads; returns it.

    `tokenizer_file` is a `tokenizers` tokenizer.json (None: our byte tokenizer);
    `card` holds the run's facts for README.md (run id, windows, tokens, loss, ...).
    """
    out_dir = Path(out_dir)
    state = to_hf_state(params, cfg)  # validates before anything touches the disk
    tokenizer_text = _read_tokenizer(tokenizer_file, cfg)
    _prepare_dir(out_dir, overwrite)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    _write_configs(out_dir, cfg, tokenizer_text)
    total = sum(t.numel() for t in state.values())
    (out_dir / "README.md").write_text(model_card(cfg, card or {}, total), encoding="utf-8")
    return out_dir


def read_config(hf_dir: Path) -> dict[str, Any]:
    """config.json of a Hugging Face folder as a dict (`ExportError` when unreadable)."""
    try:
        found = json.loads((hf_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{hf_dir / CONFIG_FILE}: unreadable: {exc}") from exc
    if not isinstance(found, dict):
        raise ExportError(f"{hf_dir / CONFIG_FILE}: not a JSON object")
    return found


def _read_weights(hf_dir: Path) -> dict[str, Tensor]:
    path = hf_dir / WEIGHTS_FILE
    if not path.is_file():
        sharded = (hf_dir / f"{WEIGHTS_FILE}.index.json").is_file()
        raise ExportError(f"{path}: missing" + (" (sharded weights are not supported)"
                                                if sharded else ""))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"{path}: not a safetensors file: {exc}") from exc


def import_model(hf_dir: Path, cfg: ModelConfig) -> list[Tensor]:
    """Our tensors (manifest order) from a folder `export_model` (or HF) wrote."""
    hf_dir = Path(hf_dir)
    check_config(read_config(hf_dir), cfg)
    return from_hf_state(_read_weights(hf_dir), cfg)

