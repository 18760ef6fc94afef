"""Inference precision: int8 or bfloat16 weights for decoding on a CPU, float32 as the exact reference.

Decoding one token reads every weight once, so its time is the time to stream the weights: ~540 MB a token
in float32, ~135 MB in int8. `int8` keeps each weight matrix as int8 with one scale per output channel.
A decoding step multiplies them with the float32 activation row in a compiled kernel (backbone/kernels/
cpu_step.py); a prompt goes through fbgemm's dynamic-quantized linear (rows quantized per call, int32
accumulation) on CPUs with VNNI, and through the dequantized weights elsewhere (see `Int8Linear`).
bench/quantize.py measures the routes against float32, bfloat16, `torch._int_mm` and `_weight_int8pack_mm`.
`bf16` casts weights to bfloat16 (oneDNN; fast only with AVX512-BF16).
Activations, norms, attention and the recurrent state stay float32 in every precision.

`apply_precision` also fuses the projections that read the same input (q/k/v; gate/up) into one matrix, so
a decoding step runs 4 products a layer instead of 7 and quantizes each input once. The tied embedding and
LM head share one int8 table: row-wise scales serve both the lookup and the product.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from backbone.errors import InvalidRequest

log = logging.getLogger(__name__)

Precision = Literal["int8", "bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


class PrecisionError(InvalidRequest):
    """A precision that cannot run here (the user picks another)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (Linux), empty where /proc/cpuinfo cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def int8_supported() -> bool:
    """fbgemm is compiled in and the CPU has its instructions (AVX2 at least)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and "avx2" in cpu_flags()


@functools.cache
def reduced_activation_range() -> bool:
    """Whether activations must be quantized to 7 bits: without 8-bit dot products (VNNI), fbgemm's AVX2
    path adds pairs of u8·s8 products in saturating int16, which 8-bit activations overflow."""
    return not cpu_flags() & {"avx512_vnni", "avx_vnni"}


def default_precision(device: torch.device | str) -> Precision:
    """int8 on a CPU that has the instructions for it; float32 elsewhere (CUDA included: untimed there)."""
    return "int8" if torch.device(device).type == "cpu" and int8_supported() else "fp32"


def resolve_precision(requested: str | None, device: torch.device | str) -> Precision:
    """`requested` ("auto"/None: the default for `device`), checked against what this machine can run."""
    if requested in (None, "auto"):
        return default_precision(device)
    if requested not in PRECISIONS:
        raise PrecisionError(f"Unknown precision {requested!r}; choose one of auto, {', '.join(PRECISIONS)} "
                             "(RILLET_PRECISION).")
    if requested == "int8" and (torch.device(device).type != "cpu" or not int8_supported()):
        raise PrecisionError("int8 weights need a CPU with AVX512-VNNI or AVX-VNNI and PyTorch's fbgemm; "
                             "set RILLET_PRECISION=bf16 or fp32.")
    return requested


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (int8 (out, in), float32 scale (out,)) with weight ≈ int8 · scale."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x Wᵀ with W int8 per output channel (one scale per row).

    One row (a decoding step) goes through the compiled W8A32 product of backbone/kernels/cpu_step.py: int8
    weights times the float32 row, nothing rounded but the weights. A prompt's rows go through fbgemm's
    dynamic int8 linear (int32 accumulation) where the CPU has 8-bit dot products (VNNI). fbgemm quantizes
    its whole input on one grid; a prompt's rows differ by orders of magnitude (a few tokens carry huge
    activations), so each row is first mapped onto [−1, 1] (centre c, half-width h) and the product mapped
    back: W x = h · W (x − c)/h + c · W 1. Without VNNI fbgemm must quantize activations to 7 bits, which
    cost 4–6% perplexity (bench/results/quantize.md), so there a prompt multiplies float32 by the
    weights dequantized one matrix at a time (still 1 byte a weight at rest).
    `smooth` (in_features,), when given, says the int8 weight holds W·diag(smooth): the input is divided by
    it first, which moves outlier channels of the activations into the weights (SmoothQuant).
    """

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        from backbone.kernels import cpu_step

        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("inverse_smooth", None if smooth is None else 1.0 / smooth.float())
        # W 1 of the weights as quantized, to add back the centre that prompt rows are shifted by.
        self.register_buffer("row_sums", weight_int8.float().sum(1) * scale.float())
        self.register_buffer("weight_int8", weight_int8.cpu().contiguous())
        self.register_buffer("scale", scale.float().cpu().contiguous())
        self.compiled_rows = cpu_step.available()
        self.reduce_range = reduced_activation_range()
        self._packed = None
        if not self.reduce_range or not self.compiled_rows:  # fbgemm serves prompts, or single rows too
            zero_points = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # the qint8 tensor exists only to be packed, then is dropped
                warnings.simplefilter("ignore", UserWarning)
                quantized = torch._make_per_channel_quantized_tensor(weight_int8.cpu(), scale.double().cpu(),
                                                                     zero_points, 0)
                self._packed = torch.ops.quantized.linear_prepack(quantized, None)

    @classmethod
    def from_float(cls, weight: torch.Tensor, smooth: torch.Tensor | None = None) -> Int8Linear:
        scaled = weight if smooth is None else weight * smooth
        return cls(*quantize_rows(scaled), smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if self.inverse_smooth is not None:
            flat = flat * self.inverse_smooth
        if flat.shape[0] == 1 and self.compiled_rows and not flat.requires_grad:
            from backbone.kernels.cpu_step import int8_matvec

            out = torch.empty(1, self.out_features)
            int8_matvec(flat[0].contiguous().numpy(), self.weight_int8.numpy(), self.scale.numpy(), out[0].numpy())
        elif self._packed is None:
            out = F.linear(flat, torch.mul(self.weight_int8, self.scale[:, None]))  # one pass, int8 to float
        elif flat.shape[0] == 1:
            out = torch.ops.quantized.linear_dynamic(flat, self._packed, self.reduce_range)
        else:
            high, low = flat.amax(1, keepdim=True), flat.amin(1, keepdim=True)
            centre = (high + low) / 2
            half_width = ((high - low) / 2).clamp_min(torch.finfo(torch.float32).tiny)
            out = torch.ops.quantized.linear_dynamic((flat - centre) / half_width, self._packed, self.reduce_range)
            out = torch.addcmul(centre * self.row_sums, out, half_width)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one scale each (the LM head's own quantization)."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_int8).float() * F.embedding(ids, self.scale[:, None])


class Bf16Linear(nn.Module):
    """y = x Wᵀ with W in bfloat16; x is cast in and the result back to x's dtype."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


def _weight(linear: nn.Module) -> torch.Tensor:
    if getattr(linear, "bias", None) is not None:
        raise ValueError("apply_precision expects linear layers without bias (Llama-family models)")
    return linear.weight.detach()


SMOOTHING = 0.5  # SmoothQuant's α: how much of an input channel's range moves into the weights
CALIBRATION_TOKENS = 512


def calibration_text() -> str:
    """Text every Python install carries (standard library source: code, comments, docstrings), so the
    activation ranges are read on the kind of text Rillet serves, and on no evaluation text."""
    import inspect
    import json.decoder
    import textwrap

    return inspect.getsource(textwrap) + inspect.getsource(json.decoder)


def input_ranges(model: nn.Module, linears: list[nn.Module], ids: torch.Tensor) -> list[torch.Tensor]:
    """max |x| per input channel of each of `linears` over a forward of `model` on `ids` (1, T)."""
    ranges: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        seen = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
        ranges[id(module)] = torch.maximum(ranges.get(id(module), seen), seen)

    hooks = [linear.register_forward_hook(record) for linear in linears]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return [ranges[id(linear)].cpu() for linear in linears]


def smoothing(input_range: torch.Tensor, weight: torch.Tensor, alpha: float = SMOOTHING) -> torch.Tensor:
    """SmoothQuant's per-channel factor s = max|x|^α / max|W|^(1−α): x/s and W·s share the range."""
    tiny = 1e-5
    column_range = weight.detach().abs().amax(0).float().cpu().clamp_min(tiny)
    return (input_range.clamp_min(tiny) ** alpha / column_range ** (1 - alpha)).clamp_min(tiny)


def _load_tables(cache: Path | None, names: set[str]) -> dict[str, torch.Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if cache is None or not cache.is_file():
        return None
    try:
        tables = load_file(str(cache))
    except (OSError, SafetensorError) as exc:
        log.warning("ignoring the damaged quantized weight cache %s (%s)", cache, exc)
        return None
    if not names <= set(tables):
        log.warning("quantized weight cache %s is for another model layout; quantizing again", cache)
        return None
    return tables


def _save_tables(cache: Path, tables: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.with_name(cache.name + f".{os.getpid()}.tmp")
    save_file({name: t.contiguous() for name, t in tables.items()}, str(staging))
    staging.replace(cache)


def apply_precision(model: nn.Module, precision: Precision, cache: Path | None = None,
                    calibration_ids: torch.Tensor | None = None) -> nn.Module:
    """Convert `model` (a `backbone.model.Transformer`, teacher or student, LoRA merged) in place for
    inference at `precision`; fp32 leaves it untouched. int8 reads activation ranges on `calibration_ids`
    (1, T) to smooth the q/k/v and gate/up inputs; `cache` (a file path) keeps the int8 tables, so a later
    load skips calibrating and quantizing. The model can no longer be trained afterwards."""
    from backbone.model import FeedForward, SoftmaxAttention, Transformer

    if precision == "fp32":
        return model
    if precision not in PRECISIONS:
        raise PrecisionError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if not isinstance(model, Transformer):
        raise TypeError("apply_precision converts a backbone.model.Transformer")
    if model_precision(model) != "fp32":
        raise ValueError(f"this model already runs at {model_precision(model)}")

    # Every product: (module, attribute to set, its float weight on demand, the linear whose input it reads
    # when smoothed). On demand, so a fused weight exists only while it is converted (and never on a cache hit).
    products: list[tuple[nn.Module, str, Callable[[], torch.Tensor], nn.Module | None]] = []
    for module in model.modules():
        if isinstance(module, SoftmaxAttention):
            products += [(module, "qkv_proj", _fused(module.q_proj, module.k_proj, module.v_proj), module.q_proj),
                         (module, "o_proj", _fused(module.o_proj), None)]
        elif isinstance(module, FeedForward):
            products += [(module, "gate_up_proj", _fused(module.gate_proj, module.up_proj), module.gate_proj),
                         (module, "down_proj", _fused(module.down_proj), None)]
    products.append((model, "lm_head", _fused(model.lm_head), model.lm_head))
    names = [f"{index}.{attribute}" for index, (_, attribute, _, _) in enumerate(products)]

    with torch.no_grad():
        tables = None
        if precision == "int8":
            wanted = {f"{name}.{part}" for name in [*names, "embed"] for part in ("rows", "scale")}
            tables = _load_tables(cache, wanted)
            if tables is None:
                tables = _int8_tables(model, products, names, calibration_ids)
                if cache is not None:
                    _save_tables(cache, tables)
        for (owner, attribute, weight, _), name in zip(products, names, strict=True):
            if tables is not None:
                converted = Int8Linear(tables.pop(f"{name}.rows"), tables.pop(f"{name}.scale"),
                                       tables.pop(f"{name}.smooth", None))
            else:
                converted = Bf16Linear(weight())
            setattr(owner, attribute, converted)
        for module in model.modules():
            if isinstance(module, SoftmaxAttention):
                del module.q_proj, module.k_proj, module.v_proj
            elif isinstance(module, FeedForward):
                del module.gate_proj, module.up_proj
        if tables is not None:
            model.embed = Int8Embedding(tables["embed.rows"], tables["embed.scale"])
    model.precision = precision
    return model


def _fused(*linears: nn.Module) -> Callable[[], torch.Tensor]:
    """The weights of `linears` (which read the same input) stacked into one, made when called."""
    return lambda: torch.cat([_weight(linear) for linear in linears]) if len(linears) > 1 else _weight(linears[0])


def _int8_tables(model: nn.Module, products: list[tuple[nn.Module, str, Callable[[], torch.Tensor], nn.Module | None]],
                 names: list[str], calibration_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if calibration_ids is None:
        raise ValueError("int8 needs calibration_ids (the loader passes calibration_text's tokens)")
    sources = [source for *_, source in products if source is not None]
    ranges = dict(zip(map(id, sources), input_ranges(model, sources, calibration_ids), strict=True))
    tables = {}
    for name, (_, _, make_weight, source) in zip(names, products, strict=True):
        weight = make_weight()
        if source is not None:
            factor = smoothing(ranges[id(source)], weight)
            tables[f"{name}.smooth"] = factor
            weight = weight * factor.to(weight.device)
        tables[f"{name}.rows"], tables[f"{name}.scale"] = quantize_rows(weight)
    tables["embed.rows"], tables["embed.scale"] = quantize_rows(model.embed.weight)
    return tables


def model_precision(model: nn.Module) -> Precision:
    """The precision `apply_precision` gave `model` (fp32 when it was never converted)."""
    return getattr(model, "precision", "fp32")
