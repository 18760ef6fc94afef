"""Feature maps: one interface, their defining properties, reproducible randomness, clear refusals."""

import math

import pytest
import torch

from backbone.attention import FEATURE_MAPS, make_feature_map
from backbone.attention.feature_maps import FavorPlus, Hedgehog


@pytest.mark.parametrize("name", FEATURE_MAPS)
def test_every_map_keeps_the_interface(name):
    feature_map = make_feature_map(name, head_dim=60, num_heads=3, feature_dim=32)
    out = feature_map(torch.randn(2, 3, 7, 60))
    assert out.shape == (2, 3, 7, feature_map.feature_dim)
    with pytest.raises(ValueError, match="expects"):
        feature_map(torch.randn(2, 3, 7, 64))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown feature map 'relu'.*hedgehog"):
        make_feature_map("relu", head_dim=64)


def test_elu_plus_one_is_positive():
    x = torch.randn(1, 1, 50, 8) * 10
    out = make_feature_map("elu", head_dim=8)(x)
    assert (out > 0).all()
    x = x.double()
    assert torch.allclose(out.double(), torch.where(x > 0, x + 1, torch.exp(x)), rtol=1e-6, atol=0)  # elu(x)+1


def test_favor_is_seeded_and_estimates_the_softmax_kernel():
    a, b = FavorPlus(16, num_features=4096, seed=7), FavorPlus(16, num_features=4096, seed=7)
    assert torch.equal(a.projection, b.projection)
    first = a.projection.clone()
    a.redraw()
    assert not torch.equal(a.projection, first)
    a.redraw(seed=7)
    assert torch.equal(a.projection, first)
    block = first[:16] / first[:16].norm(dim=1, keepdim=True)  # one orthogonal block
    assert torch.allclose(block @ block.T, torch.eye(16), atol=1e-5)

    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 20, 16, dtype=torch.float64) * 0.5, torch.randn(1, 1, 20, 16, dtype=torch.float64) * 0.5
    estimate = a.double()(q) @ a.double()(k).transpose(-1, -2)
    exact = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(16))
    assert ((estimate - exact).abs() / exact).mean() < 0.05


def test_hedgehog_starts_as_identity_softmax_pair_and_learns():
    hedgehog = make_feature_map("hedgehog", head_dim=64, num_heads=3)
    assert isinstance(hedgehog, Hedgehog) and hedgehog.feature_dim == 128
    x = torch.randn(2, 3, 5, 64, dtype=torch.float64)
    out = hedgehog.double()(x)
    expected = torch.cat([torch.softmax(x, -1), torch.softmax(-x, -1)], -1)
    assert torch.allclose(out, expected)
    out.pow(2).sum().backward()
    assert hedgehog.weight.grad.abs().sum() > 0 and hedgehog.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 heads"):
        hedgehog(torch.randn(1, 9, 5, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="even"):
        make_feature_map("hedgehog", head_dim=64, feature_dim=33)
