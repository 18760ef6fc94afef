"""How well does each cheap attention reproduce the teacher's softmax attention? Measured on real activations.

The teacher (SmolLM2-135M-Instruct) reads real text (WikiText-2 *validation*, never the test split); its
post-RoPE queries, keys and values are captured in every layer, and each approximation recomputes the
attention output from them. The error is ‖o − o_softmax‖ / ‖o_softmax‖ over all heads and positions,
averaged over sequences, reported for all layers and for layers 0–11 and 12–29 (where the teacher puts
34–71% of its attention on token 0). Causal methods are compared with causal softmax attention; the
non-causal mixers (Linformer, FNet) with bidirectional softmax attention over the same q, k, v. Nothing
is trained here: Hedgehog starts at its identity initialisation, the hybrid's mix weight at 1.

    python -m bench.approximation [--sequences 2] [--length 1024]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from backbone.attention import HybridAttention, chunked_linear_attention, make_feature_map
from backbone.attention.non_causal import FNet, Linformer
from bench import shared_file

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "approximation.md"
TEXT = "text/wikitext2_valid.txt"
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def capture_activations(model, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Post-RoPE q (1, Hq, T, D), k and v (1, Hkv, T, D) of every layer for one sequence."""
    capture: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        model.model(ids, capture=capture)
    return [{name: layer[name].float() for name in ("q", "k", "v")} for layer in capture]


def linear_method(feature_map_q, feature_map_k) -> Attend:
    return lambda q, k, v: chunked_linear_attention(feature_map_q(q), feature_map_k(k), v)[0]


def methods(heads: int, kv_heads: int, head_dim: int, length: int) -> dict[str, tuple[Attend, bool]]:
    """name -> (attention, causal)."""
    table: dict[str, tuple[Attend, bool]] = {
        "elu+1 linear": (linear_method(*[make_feature_map("elu", head_dim)] * 2), True),
    }
    for features in (64, 128, 256, 512):
        favor = make_feature_map("favor", head_dim, feature_dim=features, seed=0)
        table[f"FAVOR+ {features} features"] = (linear_method(favor, favor), True)
    table["Hedgehog linear (untrained)"] = (
        linear_method(make_feature_map("hedgehog", head_dim, heads), make_feature_map("hedgehog", head_dim, kv_heads)),
        True,
    )
    for sinks, window, mix, name in (
        (0, 64, None, "window 64 softmax only"),
        (4, 64, None, "window 64 + 4 sinks softmax only"),
        (0, 64, 0.0, "hybrid: window 64 + Hedgehog (untrained), no sinks"),
        (4, 64, 0.0, "hybrid: window 64 + 4 sinks + Hedgehog (untrained)"),
    ):
        hybrid = HybridAttention(heads, kv_heads, head_dim, sinks=sinks, window=window, mix_init=mix or 0.0)
        if mix is None:  # the linear part switched off: exp(-1e4) is 0
            hybrid.log_weight.data.fill_(-1e4)
        table[name] = (hybrid, True)
    for rank in (64, 256):
        table[f"Linformer rank {rank} (non-causal)"] = (Linformer(max_length=length, rank=rank), False)
    table["FNet (non-causal)"] = (FNet(), False)
    return table


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.double() - reference.double()).norm() / reference.double().norm()).item()


def run(sequences: int, length: int) -> str:
    from backbone.loader import load_model

    teacher = load_model("teacher", cache_dir=REPO / ".data" / "cache")
    text = shared_file(TEXT).read_text(encoding="utf-8")
    ids = teacher.tokenizer.encode(text[: 8 * length * sequences])
    if len(ids) < sequences * length:
        raise ValueError(f"{TEXT} gave only {len(ids)} tokens; need {sequences * length}")
    config = teacher.config
    candidates = None
    errors: dict[str, list[list[float]]] = {}
    for index in tqdm(range(sequences), desc="sequences"):
        window = torch.tensor(ids[index * length : (index + 1) * length]).reshape(1, -1)
        layers = capture_activations(teacher, window)
        if candidates is None:
            q = layers[0]["q"]
            candidates = methods(q.shape[1], layers[0]["k"].shape[1], q.shape[-1], length)
        for name, (attend, causal) in candidates.items():
            per_layer = []
            for layer in layers:
                q, k, v = layer["q"], layer["k"], layer["v"]
                with torch.no_grad():
                    reference = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                    per_layer.append(relative_error(attend(q, k, v), reference))
            errors.setdefault(name, []).append(per_layer)

    num_layers = len(next(iter(errors.values()))[0])

    def mean(values: list[list[float]], layers: range) -> float:
        return sum(seq[i] for seq in values for i in layers) / (len(values) * len(layers))

    everything, early, late = range(num_layers), range(min(12, num_layers)), range(12, num_layers)
    baseline = mean(errors["elu+1 linear"], everything)
    lines = [
        "# Attention approximation error on the teacher's real activations",
        "",
        f"Teacher: {config.num_layers} layers; {sequences} × "
        f"{length} tokens of WikiText-2 validation. Relative error ‖o − o_softmax‖/‖o_softmax‖ of the attention "
        "output (lower is better), mean over sequences and layers; last column: error / elu+1 error (baseline).",
        "",
        "| method | all layers | layers 0–11 | layers 12–29 | vs elu+1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in errors.items():
        total = mean(values, everything)
        lines.append(
            f"| {name} | {total:.3f} | {mean(values, early):.3f} | "
            f"{mean(values, late) if len(late) else float('nan'):.3f} | {total / baseline:.2f} |"
        )
    worst = max(errors, key=lambda n: mean(errors[n], everything))
    best = min(errors, key=lambda n: mean(errors[n], everything))
    lines += ["", f"Best: {best}. Worst: {worst}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    table = run(args.sequences, args.length)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
