"""Non-causal token mixers for bidirectional encoding only: Linformer and FNet.

Both mix every position with every other one in a way that cannot be cut at "now": Linformer projects
keys and values along the whole sequence, FNet takes a Fourier transform over it. So they have no causal
form and no recurrent state; asking for one raises `CausalMixingError`, which says why. They take the
same (B, Hq, T, D) queries and (B, Hkv, T, D) keys/values as the causal attentions, so the approximation
benchmark can set them side by side.
"""

from __future__ import annotations

import torch
from torch import nn

from backbone.attention.linear import check_qkv


class CausalMixingError(ValueError):
    """A non-causal mixer was asked to run causally or to decode token by token."""


def _refuse_causal(name: str, reason: str) -> CausalMixingError:
    return CausalMixingError(
        f"{name} cannot be used for causal attention or decoding: {reason}, so position t would see later "
        f"tokens. Use linear or hybrid attention for a language model; keep {name} for bidirectional encoding."
    )


def _expand_kv(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(q.shape[1] // x.shape[1], dim=1)


class Linformer(nn.Module):
    """Softmax attention over r projected "summary" keys/values (Wang et al., Linformer): O(T·r).

    E, F (r × max_length) project keys and values along the sequence; they start as seeded Gaussians
    N(0, 1/r) and may be trained. Sequences shorter than max_length use the first T columns.
    """

    def __init__(self, max_length: int, rank: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.max_length = max_length
        self.key_projection = nn.Parameter(torch.randn(rank, max_length, generator=generator) * rank**-0.5)
        self.value_projection = nn.Parameter(torch.randn(rank, max_length, generator=generator) * rank**-0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
        if causal:
            raise _refuse_causal("Linformer", "its projection sums keys and values over the whole sequence")
        check_qkv(q, k, v)
        length = k.shape[2]
        if length > self.max_length:
            raise ValueError(f"Linformer was built for at most {self.max_length} tokens; got {length}")
        k, v = _expand_kv(q, k), _expand_kv(q, v)
        keys = self.key_projection[:, :length].to(k.dtype) @ k  # (B, H, r, D)
        values = self.value_projection[:, :length].to(v.dtype) @ v
        weights = torch.softmax((q @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
        return weights @ values

    def step(self, *args, **kwargs) -> torch.Tensor:
        raise _refuse_causal("Linformer", "it has no recurrent state; its projection needs the whole sequence")


class FNet(nn.Module):
    """Parameter-free Fourier token mixing (Lee-Thorp et al., FNet): Re(FFT_time(FFT_feature(v))).

    FNet replaces attention outright, so it ignores queries and keys and mixes the values; the 1/√T
    scaling keeps the output's size independent of T.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
        if causal:
            raise _refuse_causal("FNet", "its Fourier transform runs over the whole sequence")
        check_qkv(q, k, v)
        v = _expand_kv(q, v)
        mixed = torch.fft.fft(torch.fft.fft(v.float(), dim=-1), dim=-2).real
        return (mixed * (v.shape[2] * v.shape[3]) ** -0.5).to(v.dtype)

    def step(self, *args, **kwargs) -> torch.Tensor:
        raise _refuse_causal("FNet", "it has no recurrent state; its Fourier transform needs the whole sequence")
