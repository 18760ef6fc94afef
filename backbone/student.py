"""The student: the teacher's weights with every softmax attention replaced by hybrid linear attention.

Each layer keeps the teacher's q/k/v/o projections (frozen, optionally with LoRA) and RoPE, and feeds
the post-RoPE queries and keys to `HybridAttention` (exact softmax over 4 sinks and a sliding window,
Hedgehog linear attention for everything between). The window may differ by layer, and within a layer by
key/value head: a few heads recall from far back and pay for long windows, most do not
(bench/layer_windows.py measures which). Its state is a
constant-size `RecurrentState`, so the student has no context limit.

Two settings without parameters keep quality level far past the training length (bench/student.py,
long-context table): the sinks are scored at a capped distance (`sink_distance`), and the linear sums
decay with horizon `decay_horizon`, so their mass stops growing and the mix of exact and linear
attention stays what training saw.

The trained parameters (feature maps, mixing weights, LoRA) ship as one small safetensors file whose
metadata records the student configuration and the teacher fingerprint it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from backbone.attention import HybridAttention, RecurrentState, StateSpec
from backbone.attention.state import LayerWindow, as_heads, window_text
from backbone.errors import InvalidRequest, StudentNotTrained, StudentUnavailable
from backbone.generate import LanguageModel
from backbone.lora import LoRALinear, wrap_linears
from backbone.model import Rope, SoftmaxAttention, Transformer, build_transformer

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_STUDENT = CHECKPOINTS / "smollm2-135m-hybrid.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class WindowError(InvalidRequest):
    """A softmax window setting that cannot apply (bad spec, or a layer the model lacks)."""


@dataclass(frozen=True)
class StudentConfig:
    """How the teacher's attention is replaced; stored in the parameter file's metadata."""

    sinks: int = 4
    window: int = 128  # chosen on held-out prose (bench/heldout --windows): 64 read 16% higher ppl
    # (layer, window) pairs: layers with windows of their own, a window or one per key/value head
    window_overrides: tuple[tuple[int, LayerWindow], ...] = ()
    feature_map: str = "hedgehog"
    feature_dim: int | None = None
    key_map_per_query_head: bool = False
    mix_init: float = 0.0
    lora_rank: int = 0
    # Length generalisation (no parameters; see the module docstring).
    sink_distance: int | None = 4096
    decay_horizon: float | None = 1024.0

    def __post_init__(self) -> None:
        # JSON (the file's metadata, a checkpoint's record) gives lists; equal configs must compare equal.
        object.__setattr__(self, "window_overrides", tuple((layer, w if isinstance(w, int) else tuple(w))
                                                           for layer, w in self.window_overrides))
        windows = [self.window, *(h for _, w in self.window_overrides for h in as_heads(w))]
        layers = [layer for layer, _ in self.window_overrides]
        if min(windows) < 1 or min(layers, default=0) < 0 or len(set(layers)) < len(layers):
            raise WindowError(f"windows must be at least 1 token, for distinct layers ≥ 0; got window {self.window}, "
                             f"overrides {self.window_overrides}")

    def layer_windows(self, num_layers: int) -> list[LayerWindow]:
        """The softmax window of each of `num_layers` layers (a tuple where its heads have their own)."""
        windows = [self.window] * num_layers
        for layer, window in self.window_overrides:
            if layer >= num_layers:
                raise WindowError(f"window override for layer {layer}, but the model has {num_layers} layers "
                                 f"(0–{num_layers - 1})")
            windows[layer] = window
        return windows

    def with_window(self, spec: str) -> StudentConfig:
        """This configuration with the windows of `spec`: "128" (every layer), or "64,17:512,20:1024/128/512"
        (64, layer 17 with its own, and layer 20 with one per key/value head)."""
        default, overrides = None, []
        for item in spec.replace(" ", "").split(","):
            layer, _, window = item.rpartition(":")
            heads = window.split("/")
            if (not all(h.isdigit() for h in heads) or (layer and not layer.isdigit())
                    or (not layer and (default is not None or len(heads) > 1))):
                raise WindowError(f"window spec {spec!r}: expected one window, then layer:window pairs with one "
                                  "window or one per key/value head, e.g. 64,17:512,20:1024/128/512")
            if layer:
                overrides.append((int(layer), int(window) if len(heads) == 1 else tuple(map(int, heads))))
            else:
                default = int(window)
        return dataclasses.replace(self, window=self.window if default is None else default,
                                   window_overrides=tuple(sorted(overrides, key=lambda pair: pair[0])))

    def window_spec(self) -> str:
        """The windows in the form `with_window` reads, e.g. "64,17:512,20:1024/128/512"."""
        return ",".join([str(self.window), *(f"{layer}:{window_text(w)}" for layer, w in self.window_overrides)])

    def with_layer_window(self, layer: int, window: LayerWindow) -> StudentConfig:
        """This configuration with layer `layer` at `window` (one, or one per key/value head)."""
        overrides = dict(self.window_overrides) | {layer: window}
        return dataclasses.replace(self, window_overrides=tuple(sorted(overrides.items())))

    def describe_window(self) -> str:
        """E.g. "128", or "64, layers 17, 18: 512, layers 20: 1024/128/512"."""
        by_window: dict[LayerWindow, list[int]] = {}
        for layer, window in self.window_overrides:
            by_window.setdefault(window, []).append(layer)
        parts = [f"layers {', '.join(map(str, layers))}: {window_text(w)}"
                 for w, layers in sorted(by_window.items(), key=lambda item: as_heads(item[0]))]
        return ", ".join([str(self.window), *parts])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudentConfig:
        return cls(**json.loads(text))


class StudentAttention(nn.Module):
    """The teacher's projections and RoPE around a `HybridAttention` core (same interface as
    `SoftmaxAttention`, so `Block` needs no change).

    Past `sink_distance` tokens the sinks are scored with the query rotated as if at that position: the
    teacher never saw a query–key distance beyond its context, and without this cap the sinks stop
    absorbing attention there and perplexity explodes.
    """

    def __init__(self, teacher: SoftmaxAttention, config: StudentConfig, window: int) -> None:
        super().__init__()
        self.projections = teacher
        self.hybrid = HybridAttention(teacher.num_heads, teacher.num_kv_heads, teacher.head_dim,
                                      sinks=config.sinks, window=window, feature_map=config.feature_map,
                                      feature_dim=config.feature_dim,
                                      key_map_per_query_head=config.key_map_per_query_head,
                                      mix_init=config.mix_init, decay_horizon=config.decay_horizon)
        self.sink_distance = config.sink_distance

    def forward(self, x: torch.Tensor, rope: Rope, cache: Any = None,
                capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q_unrotated, k_unrotated, v = self.projections.project_unrotated(x)
        kernel_step = self.hybrid.kernel_step
        if capture is None and kernel_step.ready(q_unrotated, cache):  # decoding: RoPE inside the kernel
            cache.check(self.hybrid.spec, b, x.dtype)
            sink_rotation = None
            if self.sink_distance is not None and rope.start + t > self.sink_distance:
                capped = rope.capped(self.sink_distance)
                sink_rotation = (capped.cos[0], capped.sin[0])
            context = kernel_step(q_unrotated, k_unrotated, v, (rope.cos[0], rope.sin[0]),
                                  None if sink_rotation is None else q_unrotated, sink_rotation, cache)
            return self.projections.o_proj(context.transpose(1, 2).reshape(b, t, -1))
        q, k = rope.apply(q_unrotated), rope.apply(k_unrotated)
        sink_q = None
        if self.sink_distance is not None and rope.start + t > self.sink_distance:
            sink_q = rope.capped(self.sink_distance).apply(q_unrotated)
        context = self.hybrid(q, k, v, cache, sink_q=sink_q)
        out = self.projections.o_proj(context.transpose(1, 2).reshape(b, t, -1))
        if capture is not None:
            capture.update(q=q, k=k, v=v, context=context, output=out)
        return out


def build_student(teacher: Transformer, config: StudentConfig) -> Transformer:
    """A student sharing the teacher's weight tensors (no copy); only new parameters are allocated.

    The teacher stays usable: its own attention modules are not touched, the student wraps them."""
    weights = {k: v for k, v in teacher.state_dict().items() if not k.startswith("rope_")}
    student = build_transformer(teacher.config, weights)
    device = teacher.embed.weight.device
    for layer, window in zip(student.layers, config.layer_windows(len(student.layers)), strict=True):
        layer.attention = StudentAttention(layer.attention, config, window)
    if config.lora_rank:
        for layer in student.layers:
            wrap_linears(layer.attention.projections, LORA_TARGETS, config.lora_rank, 2.0 * config.lora_rank)
    student.requires_grad_(False)
    for name, param in student.named_parameters():
        param.requires_grad_(is_trainable(name))
    return student.to(device)


def is_trainable(name: str) -> bool:
    return ".hybrid." in name or ".lora_" in name


def trainable_parameters(student: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in student.named_parameters() if is_trainable(n)}


def state_spec(student: Transformer) -> StateSpec:
    specs = [layer.attention.hybrid.spec for layer in student.layers]
    windows = tuple(spec.head_windows or spec.window for spec in specs)
    spec = dataclasses.replace(specs[0], num_layers=len(specs), window=max(spec.window for spec in specs),
                               head_windows=())
    return spec if len(set(windows)) == 1 and isinstance(windows[0], int) else dataclasses.replace(
        spec, layer_windows=windows)


def save_student(path: Path, student: Transformer, config: StudentConfig, teacher_fingerprint: str,
                 extra: dict[str, str] | None = None) -> str:
    """Write the trained parameters; returns the file's sha256."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(student).items()}
    metadata = {"student_config": config.to_json(), "teacher_fingerprint": teacher_fingerprint, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_student_file(path: Path) -> tuple[StudentConfig, dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if "student_config" not in metadata:
        raise StudentUnavailable(f"{path} is not a student parameter file (no student_config in its metadata).")
    return StudentConfig.from_json(metadata["student_config"]), load_file(str(path)), metadata


def load_student(teacher_model: LanguageModel, student_path: Path | None = None,
                 device: str | torch.device = "cpu", expected_sha256: str | None = None,
                 window: str | None = None) -> LanguageModel:
    """The teacher plus the trained student parameters, as a `LanguageModel` with `RecurrentState`s.
    `window` (see `StudentConfig.with_window`) reads them with other softmax windows than the file's (the
    windows have no parameters)."""
    path = Path(student_path) if student_path is not None else DEFAULT_STUDENT
    if not path.is_file():
        raise StudentNotTrained(f"No trained student parameters at {path}. Train them with `rillet convert`, "
                                "or use the teacher (--model teacher).")
    digest = file_sha256(path)
    manifest = path.with_suffix(".json")
    if expected_sha256 is None and manifest.is_file():
        expected_sha256 = json.loads(manifest.read_text()).get("sha256")
    if expected_sha256 is not None and digest != expected_sha256:
        raise StudentUnavailable(f"{path} has sha256 {digest[:12]}…, its manifest expects {expected_sha256[:12]}…: "
                         "the file is damaged or was replaced; restore it from the repository.")
    config, tensors, metadata = read_student_file(path)
    if window is not None:
        config = config.with_window(window)
    if metadata.get("teacher_fingerprint") not in (None, teacher_model.fingerprint):
        raise StudentUnavailable("These student parameters were trained on another teacher model file; "
                         "convert again for this one (rillet convert).")
    student = build_student(teacher_model.model, config)
    missing = set(trainable_parameters(student)) - set(tensors)
    if missing:
        raise StudentUnavailable(f"{path} lacks parameters {sorted(missing)[:3]}…; export them again "
                                 "(rillet convert --stage export) or restore the file from the repository.")
    student.load_state_dict(tensors, strict=False)
    for module in student.modules():
        if isinstance(module, LoRALinear):
            module.merge()
    student.eval().requires_grad_(False)
    return wrap_student(student, teacher_model, digest, device)


def wrap_student(student: Transformer, teacher_model: LanguageModel, params_digest: str,
                 device: str | torch.device = "cpu") -> LanguageModel:
    spec = state_spec(student)
    fingerprint = hashlib.sha256(f"{teacher_model.fingerprint}|{params_digest}".encode()).hexdigest()
    weight = next(student.parameters())
    dtype = weight.dtype
    student = student.to(device)

    def make_state() -> RecurrentState:
        return RecurrentState.empty(spec, 1, device, dtype)

    def restore_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> RecurrentState:
        return RecurrentState.from_tensors(tensors, metadata, spec).to(device, dtype)

    info = {"kind": "student", "params_sha256": params_digest, "teacher": teacher_model.fingerprint}
    return LanguageModel(student, teacher_model.tokenizer, teacher_model.config, fingerprint, None, make_state,
                         restore_state, info=info)
