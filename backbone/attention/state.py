"""`RecurrentState`: the constant-size per-conversation memory of a linear-attention model.

Per layer it holds the linear-attention sums (kv, k_sum) and, for hybrid attention, the exactly attended
keys/values `exact_k`, `exact_v`: `sinks` slots for the first tokens (kept forever), then a ring buffer of
the last `window` tokens (position p ≥ 0 sits in ring slot p mod window). Layers may have windows of their
own (`layer_windows`): a few layers that recall from far back get long windows, the rest short ones; and
within a layer each key/value head may have its own (`head_windows`), since often one head of a layer does
the far recall and its neighbours do not. Such a layer keeps one group of tensors per run of neighbouring
heads with equal windows, named `heads{first}-{last}.{name}`. Its size does not depend on how many tokens
it has read. It implements `backbone.state.ModelState`, so memory/
can persist it as named tensors plus metadata, and it round-trips exactly through safetensors bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Self

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

LAYER_KINDS = ("hybrid", "linear")
LayerWindow = int | tuple[int, ...]  # a layer's window, or one per key/value head
WINDOW_LISTS = ("layer_windows", "head_windows")


@dataclass(frozen=True)
class StateSpec:
    """The shape of a model's state; a state only fits a model with an equal spec."""

    layer_kind: str
    num_layers: int
    kv_heads: int  # heads of the stored keys/values (sinks and window)
    state_heads: int  # heads of the linear sums (kv heads, or query heads when keys are mapped per query head)
    head_dim: int
    feature_dim: int
    sinks: int = 0
    window: int = 0  # the window of every layer and head, or else the widest of them
    # One entry per layer where they differ, () when all are `window`: a window, or one per key/value head.
    layer_windows: tuple[LayerWindow, ...] = ()
    head_windows: tuple[int, ...] = ()  # a one-layer spec whose key/value heads differ: one window per head

    def __post_init__(self) -> None:
        if self.layer_kind not in LAYER_KINDS:
            raise ValueError(f"layer_kind must be one of {LAYER_KINDS}, got {self.layer_kind!r}")
        # Callers may pass lists; equal specs must compare and hash equal (layouts are cached by spec).
        object.__setattr__(self, "layer_windows", tuple(w if isinstance(w, int) else tuple(w)
                                                        for w in self.layer_windows))
        object.__setattr__(self, "head_windows", tuple(self.head_windows))
        if self.layer_windows and self.head_windows:
            raise ValueError("head_windows describes one layer; a spec of several layers puts them in layer_windows")
        heads = [w for w in (*self.layer_windows, self.head_windows) if not isinstance(w, int) and w]
        if any(len(w) != self.kv_heads for w in heads):
            raise ValueError(f"per-head windows need one window per key/value head ({self.kv_heads}); got {heads}")
        windows = [w for entry in (*self.layer_windows, self.head_windows) for w in as_heads(entry)]
        if self.layer_kind == "hybrid" and min(windows, default=self.window) < 1:
            raise ValueError("a hybrid state needs window >= 1 (the current token is always attended exactly)")
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise ValueError(f"layer_windows needs one window per layer ({self.num_layers}); got {self.layer_windows}")
        if windows and self.window != max(windows):
            raise ValueError(f"window must be the widest of the layers' and heads' windows ({max(windows)}); "
                             f"got {self.window}")

    def layer(self, index: int) -> StateSpec:
        """The spec of layer `index` alone (its own window, or its heads' own)."""
        window = self.layer_windows[index] if self.layer_windows else self.window
        if isinstance(window, int):
            return dataclasses.replace(self, num_layers=1, window=window, layer_windows=())
        return dataclasses.replace(self, num_layers=1, window=max(window), layer_windows=(), head_windows=window)

    # Derived layouts are cached (specs are frozen and few): the decoding step checks its state every token.
    def head_groups(self) -> tuple[tuple[int, int, int], ...]:
        """(first, stop, window) for each run of neighbouring key/value heads sharing a window."""
        return _head_groups(self)

    def heads(self, first: int, stop: int) -> StateSpec:
        """The one-layer spec of key/value heads first..stop-1, which must share a window."""
        return _heads(self, first, stop)

    def layer_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Shapes of one layer's tensors, by name."""
        return dict(_layer_shapes(self, batch))

    def to_metadata(self) -> dict[str, str]:
        """Strings for safetensors metadata. Window lists only when set, so uniform specs read as before;
        a layer's per-head windows are joined by "/" ("128,512/128/1024,…")."""
        fields = dataclasses.asdict(self)
        windows = {name: fields.pop(name) for name in WINDOW_LISTS}
        return {**{f"spec.{key}": str(value) for key, value in fields.items()},
                **{f"spec.{name}": ",".join(map(window_text, value)) for name, value in windows.items() if value}}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> StateSpec:
        try:
            names = [f.name for f in dataclasses.fields(cls) if f.name not in WINDOW_LISTS]
            values: dict = {k: metadata[f"spec.{k}"] if k == "layer_kind" else int(metadata[f"spec.{k}"])
                            for k in names}
            windows = {name: tuple(_parse_window(w) for w in metadata[f"spec.{name}"].split(","))
                       for name in WINDOW_LISTS if metadata.get(f"spec.{name}")}
            return cls(**values, **windows)
        except (KeyError, ValueError) as error:
            raise ValueError(f"state metadata does not describe a recurrent state layout: {error}") from error



@functools.cache
def _head_groups(spec: StateSpec) -> tuple[tuple[int, int, int], ...]:
    windows = spec.head_windows or (spec.window,) * spec.kv_heads
    runs = [[0, 1, windows[0]]]
    for head in range(1, spec.kv_heads):
        if windows[head] == runs[-1][2]:
            runs[-1][1] = head + 1
        else:
            runs.append([head, head + 1, windows[head]])
    return tuple((first, stop, window) for first, stop, window in runs)


@functools.cache
def _heads(spec: StateSpec, first: int, stop: int) -> StateSpec:
    windows = {w for f, s, w in spec.head_groups() if f < stop and s > first}
    if len(windows) != 1:
        raise ValueError(f"heads {first}..{stop - 1} do not share one window ({sorted(windows)})")
    per_head = spec.state_heads // spec.kv_heads
    return dataclasses.replace(spec, kv_heads=stop - first, state_heads=(stop - first) * per_head,
                               window=windows.pop(), head_windows=())


@functools.cache
def _layer_shapes(spec: StateSpec, batch: int) -> dict[str, tuple[int, ...]]:
    if spec.layer_windows:
        raise ValueError("layers of this spec have windows of their own: take one layer's shapes with layer(i)")
    if spec.head_windows:
        return {f"{group_prefix(first, stop)}{name}": shape for first, stop, _ in spec.head_groups()
                for name, shape in spec.heads(first, stop).layer_shapes(batch).items()}
    shapes = {
        "kv": (batch, spec.state_heads, spec.feature_dim, spec.head_dim),
        "k_sum": (batch, spec.state_heads, spec.feature_dim),
    }
    if spec.layer_kind == "hybrid":  # exactly attended keys/values: `sinks` slots, then the window ring
        shapes["exact_k"] = shapes["exact_v"] = (batch, spec.kv_heads, spec.sinks + spec.window, spec.head_dim)
    return shapes


def as_heads(window: LayerWindow) -> tuple[int, ...]:
    """A layer's window as one per head (a single window as a 1-tuple)."""
    return (window,) if isinstance(window, int) else window


def window_text(window: LayerWindow) -> str:
    """A layer's window as text: "512", or per key/value head "512/128/1024"."""
    return "/".join(map(str, as_heads(window)))


def _parse_window(text: str) -> LayerWindow:
    heads = tuple(int(w) for w in text.split("/"))
    return heads[0] if len(heads) == 1 else heads


def group_prefix(first: int, stop: int) -> str:
    """Name prefix of the state tensors of key/value heads first..stop-1 in a layer with per-head windows."""
    return f"heads{first}-{stop - 1}."


@dataclass
class LayerState:
    """One layer's tensors (named as in `StateSpec.layer_shapes`) and the tokens it has consumed."""

    tensors: dict[str, torch.Tensor]
    num_tokens: int = 0

    @classmethod
    def empty(cls, spec: StateSpec, batch: int = 1, device=None, dtype=torch.float32) -> LayerState:
        shapes = spec.layer_shapes(batch)
        return cls({name: torch.zeros(shape, device=device, dtype=dtype) for name, shape in shapes.items()})

    def check(self, spec: StateSpec, batch: int, dtype: torch.dtype) -> None:
        """Refuse a layer state whose tensors do not fit `spec` (a state from another configuration)."""
        expected = spec.layer_shapes(batch)
        actual = {name: tuple(t.shape) for name, t in self.tensors.items()}
        if actual != expected:
            raise ValueError(
                f"state layout {actual} does not match this attention's {expected}: "
                "the state comes from another model configuration; start a new state"
            )
        wrong = {name: t.dtype for name, t in self.tensors.items() if t.dtype != dtype}
        if wrong:
            raise ValueError(
                f"state tensors {wrong} differ from the activations' dtype {dtype}; use state.to(dtype=...)"
            )

    def clone(self) -> LayerState:
        return LayerState({name: t.clone() for name, t in self.tensors.items()}, self.num_tokens)


@dataclass
class RecurrentState:
    """All layers' states of one conversation (implements `backbone.state.ModelState`)."""

    spec: StateSpec
    layers: list[LayerState] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.layers) != self.spec.num_layers:
            raise ValueError(f"state has {len(self.layers)} layers, its spec says {self.spec.num_layers}")

    @classmethod
    def empty(cls, spec: StateSpec, batch: int = 1, device=None, dtype=torch.float32) -> RecurrentState:
        return cls(spec, [LayerState.empty(spec.layer(i), batch, device, dtype) for i in range(spec.num_layers)])

    @property
    def num_tokens(self) -> int:
        return self.layers[0].num_tokens if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors.values())

    def clone(self) -> Self:
        return type(self)(self.spec, [layer.clone() for layer in self.layers])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        layers = [
            LayerState({n: t.to(device=device, dtype=dtype) for n, t in layer.tensors.items()}, layer.num_tokens)
            for layer in self.layers
        ]
        return type(self)(self.spec, layers)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        counts = {layer.num_tokens for layer in self.layers}
        if len(counts) > 1:
            raise RuntimeError(f"layers disagree on the token count {sorted(counts)}: the state is mid-update")
        return {
            f"layers.{i}.{name}": t.detach().to("cpu").contiguous()
            for i, layer in enumerate(self.layers)
            for name, t in layer.tensors.items()
        }

    def metadata(self) -> dict[str, str]:
        return {"kind": "recurrent", "num_tokens": str(self.num_tokens), **self.spec.to_metadata()}

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], spec: StateSpec | None = None
    ) -> RecurrentState:
        """Rebuild a state; with `spec`, refuse one made for another configuration."""
        if metadata.get("kind") != "recurrent":
            raise ValueError(f"not a recurrent state (kind={metadata.get('kind')!r})")
        stored = StateSpec.from_metadata(metadata)
        if spec is not None and stored != spec:
            differences = {
                k: (v, getattr(spec, k)) for k, v in dataclasses.asdict(stored).items() if getattr(spec, k) != v
            }
            raise ValueError(
                f"state was made for another configuration (stored, expected): {differences}; start a new state"
            )
        num_tokens = int(metadata["num_tokens"])
        layer_specs = [stored.layer(i) for i in range(stored.num_layers)]
        first_name = f"layers.0.{next(iter(layer_specs[0].layer_shapes(1)))}"
        first = tensors.get(first_name)
        if first is None:
            raise ValueError(f"state tensors lack {first_name}")
        batch, dtype = first.shape[0], first.dtype
        expected_names = {f"layers.{i}.{n}" for i, s in enumerate(layer_specs) for n in s.layer_shapes(batch)}
        if set(tensors) != expected_names:
            raise ValueError(
                f"state tensors do not match the layout: missing {sorted(expected_names - set(tensors))[:4]}, "
                f"unexpected {sorted(set(tensors) - expected_names)[:4]}"
            )
        layers = []
        for i, layer_spec in enumerate(layer_specs):
            layer = LayerState({n: tensors[f"layers.{i}.{n}"] for n in layer_spec.layer_shapes(batch)}, num_tokens)
            layer.check(layer_spec, batch, dtype)
            layers.append(layer)
        return cls(stored, layers)

    def to_bytes(self) -> bytes:
        """safetensors bytes holding the tensors and the metadata; `from_bytes` restores them exactly."""
        return save_safetensors(self.to_tensors(), metadata=self.metadata())

    @classmethod
    def from_bytes(cls, data: bytes, spec: StateSpec | None = None) -> RecurrentState:
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_length])
        return cls.from_tensors(load_safetensors(data), header.get("__metadata__", {}), spec)
