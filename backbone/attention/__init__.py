"""Linear and hybrid attention: feature maps, chunked/recurrent forms, the recurrent state."""

from backbone.attention.feature_maps import FEATURE_MAPS, FeatureMap, make_feature_map
from backbone.attention.hybrid import HybridAttention, hybrid_attention, naive_hybrid_attention
from backbone.attention.linear import (
    LinearState,
    chunked_linear_attention,
    linear_attention_step,
    naive_linear_attention,
    recurrent_linear_attention,
)
from backbone.attention.state import LayerState, RecurrentState, StateSpec

__all__ = [
    "FEATURE_MAPS",
    "FeatureMap",
    "HybridAttention",
    "LayerState",
    "LinearState",
    "RecurrentState",
    "StateSpec",
    "chunked_linear_attention",
    "hybrid_attention",
    "linear_attention_step",
    "make_feature_map",
    "naive_hybrid_attention",
    "naive_linear_attention",
    "recurrent_linear_attention",
]
