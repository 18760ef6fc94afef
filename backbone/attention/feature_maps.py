"""Feature maps φ for linear attention: φ(q)·φ(k) stands in for exp(q·k/√d).

Every map takes (batch, heads, time, head_dim) and returns (batch, heads, time, feature_dim), so the
attention code never needs to know which one it holds.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FeatureMap(nn.Module):
    """Base class: subclasses set `feature_dim` and implement `forward`."""

    feature_dim: int

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def heads(self, first: int, stop: int) -> FeatureMap:
        """The map of heads first..stop-1 alone; a map without per-head parameters serves any heads as is."""
        return self

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"{type(self).__name__} expects (batch, heads, time, {self.head_dim}); got {tuple(x.shape)}"
            )


class IdentityFeatureMap(FeatureMap):
    """φ(x) = x: plain (unnormalised-kernel) linear attention, used by tests."""

    def __init__(self, head_dim: int) -> None:
        super().__init__(head_dim)
        self.feature_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x


class EluPlusOne(FeatureMap):
    """φ(x) = elu(x) + 1 (Katharopoulos et al., the Linear Transformer): positive, cheap, untrained.

    Computed as exp(x) for x ≤ 0 rather than (exp(x) − 1) + 1, which rounds to 0 in float32 below −17.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__(head_dim)
        self.feature_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return torch.where(x > 0, x + 1.0, torch.exp(x.clamp(max=0.0)))


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Rows drawn as blocks of orthogonal directions with Gaussian-like (chi) lengths (Performer, FAVOR+)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)
    directions = torch.cat(blocks)[:num_features]
    lengths = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return directions * lengths[:, None]


class FavorPlus(FeatureMap):
    """Positive orthogonal random features (Performer): E[φ(q)·φ(k)] = exp(q·k/√d).

    φ(x) = exp(w·x' − |x'|²/2)/√m with x' = x/d^¼. The projection is drawn from `seed`, so the same seed
    always gives the same map; `redraw()` draws a fresh one (Performer redraws during training).
    """

    def __init__(self, head_dim: int, num_features: int = 128, seed: int = 0) -> None:
        super().__init__(head_dim)
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.feature_dim = num_features
        self.seed = seed
        self.register_buffer("projection", torch.empty(num_features, head_dim), persistent=True)
        self.redraw(seed)

    def redraw(self, seed: int | None = None) -> None:
        """Replace the projection; `seed=None` continues from the previous draw (seed + 1)."""
        self.seed = self.seed + 1 if seed is None else seed
        generator = torch.Generator().manual_seed(self.seed)
        projection = orthogonal_gaussian(self.feature_dim, self.head_dim, generator)
        self.projection.copy_(projection.to(self.projection.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x * self.head_dim**-0.25
        logits = x @ self.projection.to(x.dtype).T - 0.5 * (x * x).sum(-1, keepdim=True)
        return torch.exp(logits) * self.feature_dim**-0.5


class Hedgehog(FeatureMap):
    """Learnable per-head map φ(x) = [softmax(xW + b), softmax(−(xW + b))] (Zhang et al., Hedgehog).

    W starts as the identity, so the map starts as a spiky, positive function of q and k that training
    (attention transfer) bends toward the teacher's softmax weights. Output size is 2 × `half_dim`.
    """

    def __init__(self, head_dim: int, num_heads: int, half_dim: int | None = None) -> None:
        super().__init__(head_dim)
        half_dim = head_dim if half_dim is None else half_dim
        self.num_heads = num_heads
        self.feature_dim = 2 * half_dim
        self.weight = nn.Parameter(torch.eye(head_dim, half_dim).repeat(num_heads, 1, 1))
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, half_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return hedgehog_features(x, self.weight, self.bias)

    def heads(self, first: int, stop: int) -> FeatureMap:
        return HedgehogHeads(self, first, stop)


class HedgehogHeads(FeatureMap):
    """Heads first..stop-1 of a `Hedgehog` map, for attention that treats groups of heads apart (per-head
    windows). It holds views of the map's parameters, so training through it updates them."""

    def __init__(self, parent: Hedgehog, first: int, stop: int) -> None:
        super().__init__(parent.head_dim)
        self.feature_dim = parent.feature_dim
        self.weight, self.bias = parent.weight[first:stop], parent.bias[first:stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return hedgehog_features(x, self.weight, self.bias)


def hedgehog_features(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[softmax(xW + b), softmax(−(xW + b))] for x (B, H, T, D), weight (H, D, half), bias (H, 1, half)."""
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"Hedgehog map has {weight.shape[0]} heads; input has {x.shape[1]}")
    if weight.dtype != x.dtype:
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    # One sequence (decoding): a single batched matmul with the bias add fused in.
    z = torch.baddbmm(bias, x[0], weight).unsqueeze(0) if x.shape[0] == 1 else torch.matmul(x, weight) + bias
    return torch.stack((z, -z), dim=-2).softmax(-1).flatten(-2)


FEATURE_MAPS = ("identity", "elu", "favor", "hedgehog")


def make_feature_map(
    name: str, head_dim: int, num_heads: int = 1, feature_dim: int | None = None, seed: int = 0
) -> FeatureMap:
    """Build a feature map by name: identity, elu (elu+1), favor (FAVOR+), hedgehog.

    `feature_dim` is the number of random features for favor and the output size (2 × half) for
    hedgehog; elu and identity keep head_dim.
    """
    if name == "identity":
        return IdentityFeatureMap(head_dim)
    if name == "elu":
        return EluPlusOne(head_dim)
    if name == "favor":
        return FavorPlus(head_dim, num_features=feature_dim or 2 * head_dim, seed=seed)
    if name == "hedgehog":
        if feature_dim is not None and feature_dim % 2:
            raise ValueError(f"hedgehog feature_dim must be even (two softmax halves), got {feature_dim}")
        return Hedgehog(head_dim, num_heads, half_dim=None if feature_dim is None else feature_dim // 2)
    raise ValueError(f"unknown feature map {name!r}; choose one of {', '.join(FEATURE_MAPS)}")
