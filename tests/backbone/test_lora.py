"""LoRA wrapping: exact at initialisation, the low-rank update matches a float64 reference, merging is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbone.lora import LoRALinear, wrap_linears


def test_fresh_adapter_changes_nothing() -> None:
    base = nn.Linear(60, 33)
    x = torch.randn(5, 7, 60)
    expected = base(x)
    assert torch.equal(LoRALinear(base, rank=4)(x), expected)


def test_update_matches_float64_reference_and_merge_is_equivalent() -> None:
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(64, 48), rank=8, alpha=16)
    nn.init.normal_(lora.lora_b)
    x = torch.randn(3, 63, 64)
    w = lora.base.weight.double() + (lora.lora_b.double() @ lora.lora_a.double()) * 2.0
    reference = x.double() @ w.t() + lora.base.bias.double()
    out = lora(x)
    assert torch.allclose(out.double(), reference, atol=1e-5)
    lora.merge()
    assert torch.allclose(lora(x).double(), reference, atol=1e-5)


def test_only_adapters_train_and_wrap_finds_nested_layers() -> None:
    block = nn.Module()
    block.attn = nn.Module()
    block.attn.q_proj, block.attn.o_proj, block.mlp = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
    wrapped = wrap_linears(block, ("q_proj", "o_proj"), rank=2, alpha=4)
    assert len(wrapped) == 2 and isinstance(block.attn.q_proj, LoRALinear)
    assert not isinstance(block.mlp, LoRALinear)
    trainable = {n for n, p in block.named_parameters() if p.requires_grad}
    assert trainable == {"attn.q_proj.lora_a", "attn.q_proj.lora_b", "attn.o_proj.lora_a", "attn.o_proj.lora_b",
                         "mlp.weight", "mlp.bias"}


def test_rank_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0)
