"""Read a llama-architecture model saved in the Hugging Face layout: config.json, *.safetensors, tokenizer.json.

This lets a larger llama-family model (SmolLM2-360M or -1.7B, for example) be the teacher without a GGUF
file. Hugging Face checkpoints already keep the rotary halves split the way `backbone.model` expects, so
tensors only need new names. What the `Transformer` cannot run (rotary scaling, biases, another
activation) and tokenizers whose bytes it cannot stream (anything but byte-level BPE) are refused with
the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from backbone.config import ModelConfig
from backbone.tokenizer import CHATML_TEMPLATE, ChatTokenizer

log = logging.getLogger(__name__)

LAYER_NAMES = {
    "input_layernorm": "attention_norm",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.o_proj": "attention.o_proj",
    "post_attention_layernorm": "mlp_norm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
TOP_NAMES = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; a Hugging Face model folder needs it.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}).") from exc


def config_from_hf(values: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from config.json, or a ValueError naming what this model runs differently."""
    if values.get("model_type") != "llama":
        raise ValueError(f"Only llama-architecture models are supported; config.json says model_type "
                         f"{values.get('model_type')!r}.")
    rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"This model scales its rotary embeddings ({rope_type!r}); plain rotary embeddings and "
                         "Llama 3's scaling are supported.")
    unsupported = {key: values[key] for key in ("attention_bias", "mlp_bias") if values.get(key)}
    if values.get("hidden_act", "silu") != "silu":
        unsupported["hidden_act"] = values["hidden_act"]
    if unsupported:
        raise ValueError(f"config.json asks for {unsupported}, which this llama implementation does not have.")
    try:
        dim, num_heads = int(values["hidden_size"]), int(values["num_attention_heads"])
        head_dim = int(values.get("head_dim") or dim // num_heads)
        theta = float(rope.get("rope_theta", values.get("rope_theta", 10_000.0)))
        factors = llama3_freq_factors(rope, head_dim, theta) if rope_type == "llama3" else None
        return ModelConfig(
            vocab_size=int(values["vocab_size"]),
            dim=dim,
            num_layers=int(values["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(values.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            ffn_dim=int(values["intermediate_size"]),
            max_context=int(values["max_position_embeddings"]),
            rope_theta=theta,
            norm_eps=float(values.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(values.get("tie_word_embeddings", False)),
            rope_freq_factors=factors,
        )
    except KeyError as exc:
        raise ValueError(f"config.json lacks {exc.args[0]!r}; the folder is incomplete.") from None


def llama3_freq_factors(rope: dict[str, Any], head_dim: int, theta: float) -> tuple[float, ...]:
    """Llama 3's rotary scaling as divisors of each inverse frequency: wavelengths longer than the original
    context / low_freq_factor are stretched by `factor`, those shorter than context / high_freq_factor kept,
    and the band between interpolated smoothly in frequency."""
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    original = float(rope["original_max_position_embeddings"])
    divisors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength > original / low:
            divisors.append(factor)
        elif wavelength < original / high:
            divisors.append(1.0)
        else:
            smooth = (original / wavelength - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(divisors)


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: those of the shard index, else model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(_read_json(index)["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise FileNotFoundError(f"{folder} has no model.safetensors (nor a shard index); found {found or 'none'}. "
                            "Save the model with save_pretrained(..., safe_serialization=True).")


def hf_to_state_dict(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face tensors to `Transformer` parameter names; refuse missing or foreign ones."""
    state = {}
    for name, tensor in tensors.items():
        stem, _, suffix = name.rpartition(".")
        if stem.startswith("model.layers."):
            layer, _, kind = stem.removeprefix("model.layers.").partition(".")
            if kind == "self_attn.rotary_emb":  # older checkpoints store the rotary frequencies; recomputed
                continue
            if kind not in LAYER_NAMES:
                raise ValueError(f"Unexpected tensor {name}: not part of a llama layer.")
            state[f"layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"] = tensor
        elif stem in TOP_NAMES:
            state[f"{TOP_NAMES[stem]}.{suffix}"] = tensor
        else:
            raise ValueError(f"Unexpected tensor {name} in the checkpoint (not a llama model).")
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    expected = {"embed.weight", "norm.weight", *(() if config.tie_embeddings else ("lm_head.weight",))}
    expected |= {f"layers.{i}.{ours}.weight" for i in range(config.num_layers) for ours in LAYER_NAMES.values()}
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"The checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}; it is incomplete.")
    extra = sorted(state.keys() - expected)
    if extra:
        raise ValueError(f"The checkpoint has tensors beyond config.json's {config.num_layers} layers: {extra[:3]}.")
    return state


def _token(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        log.warning("%s has no chat template; using ChatML", folder)
        return CHATML_TEMPLATE
    return template


def read_tokenizer(folder: Path) -> ChatTokenizer:
    """tokenizer.json plus the chat template and end tokens of tokenizer_config.json."""
    spec = _read_json(folder / "tokenizer.json")
    decoders = spec.get("decoder") or {}
    decoder_types = {d.get("type") for d in decoders.get("decoders", [decoders])}
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in decoder_types:
        raise ValueError(f"{folder / 'tokenizer.json'} is not a byte-level BPE tokenizer (model "
                         f"{spec.get('model', {}).get('type')!r}, decoder {sorted(map(str, decoder_types))}); "
                         "only those (as in SmolLM2 and Llama 3) can be streamed byte-exactly.")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer_config = _read_json(folder / "tokenizer_config.json") \
        if (folder / "tokenizer_config.json").is_file() else {}
    eos = _token(tokenizer_config.get("eos_token"))
    eos_id = tokenizer.token_to_id(eos) if eos else None
    if eos_id is None:
        raise ValueError(f"tokenizer_config.json in {folder} names no end-of-sequence token in the vocabulary "
                         f"(eos_token={eos!r}); add one.")
    end_of_turn_id = next((i for t in END_OF_TURN_TOKENS if (i := tokenizer.token_to_id(t)) is not None), eos_id)
    return ChatTokenizer(tokenizer, _chat_template(folder, tokenizer_config), eos_id, end_of_turn_id)


def read_hf_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], ChatTokenizer, str]:
    """Config, weights named for `Transformer` (in their stored dtype), tokenizer, and a sha256 fingerprint of
    the weight files and the config."""
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json in it).")
    config = config_from_hf(_read_json(folder / "config.json"))
    tokenizer = read_tokenizer(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size}.")
    digest, tensors = hashlib.sha256(), {}
    for path in weight_files(folder):
        log.info("reading %s", path)
        try:
            tensors |= load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc}).") from exc
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    weights = hf_to_state_dict(tensors, config)
    identity = json.dumps({"weights": digest.hexdigest(), "config": config.to_dict()}, sort_keys=True)
    return config, weights, tokenizer, hashlib.sha256(identity.encode()).hexdigest()
