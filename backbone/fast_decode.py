"""The compiled decoding step of the int8 student on CPU (backbone/kernels/cpu_step.py), wrapped for
`LanguageModel.step`: the model's parameters gathered once into the kernel's layout, the state's tensors
handed over as views (updated in place), and a fallback to the PyTorch step wherever it does not apply."""

from __future__ import annotations

import logging
import time

import torch

from backbone.attention.dispatch import resolve_backend
from backbone.attention.hybrid import STATE_NAMES
from backbone.attention.state import RecurrentState
from backbone.model import Transformer
from backbone.quantize import Int8Embedding, Int8Linear

log = logging.getLogger(__name__)

# Threads for the compiled step's products (bench/quantize.py, `step`): reading int8 weights from memory
# goes faster on two cores than one, while every other op of the step stays on the calling thread.
STEP_THREADS = 2


def supports(model: Transformer) -> bool:
    """An int8 student on CPU with Hedgehog maps, and Numba installed."""
    from backbone.student import StudentAttention

    probe = torch.empty(1)
    if resolve_backend("auto", probe, False, step=True) != "numba" or not isinstance(model.embed, Int8Embedding):
        return False
    for layer in model.layers:
        attention = layer.attention
        if not (isinstance(attention, StudentAttention) and isinstance(attention.projections.qkv_proj, Int8Linear)
                and isinstance(layer.mlp.gate_up_proj, Int8Linear)):
            return False
        if not attention.hybrid.kernel_step.fits_maps():
            return False
    return isinstance(model.lm_head, Int8Linear) and model.embed.weight_int8.device.type == "cpu"


class CompiledStudentStep:
    """`step(token_id, state) -> logits (vocab,)` for a model that `supports`; same results as
    `model(ids, state, last_only=True)` up to float rounding (the products read unquantized activations)."""

    def __init__(self, model: Transformer) -> None:
        import numba
        from numba.typed import List

        def array(t: torch.Tensor):
            return t.detach().float().contiguous().numpy() if t.is_floating_point() else t.contiguous().numpy()

        def folded(norm: torch.nn.Module, product: Int8Linear):
            weight = norm.weight.detach().float()
            return array(weight if product.inverse_smooth is None else weight * product.inverse_smooth)

        self.model = model
        layers = model.layers
        self.sink_distance = layers[0].attention.sink_distance
        self.config = model.config
        def table(product: Int8Linear) -> list:
            return [array(product.weight_int8), array(product.scale)]

        # One row per layer in the kernel's argument order, turned into one list per argument.
        rows = [[folded(b.attention_norm, b.attention.projections.qkv_proj), *table(b.attention.projections.qkv_proj),
                 *table(b.attention.projections.o_proj), folded(b.mlp_norm, b.mlp.gate_up_proj),
                 *table(b.mlp.gate_up_proj), *table(b.mlp.down_proj)] for b in layers]
        self.args = [array(model.embed.weight_int8), array(model.embed.scale)]
        self.layer_args = [List(column) for column in zip(*rows, strict=True)]
        self.layer_args += [folded(model.norm, model.lm_head), array(model.lm_head.weight_int8),
                            array(model.lm_head.scale)]
        self.groups = []  # (layer, prefix) of each group, in the kernel's order
        starts, heads = [0], []
        maps: list[list] = [[] for _ in range(6)]
        for index, layer in enumerate(layers):
            groups = layer.attention.hybrid.kernel_step.parameter_groups()
            for first, stop, _, prefix, q_map, k_map, log_weight, decay in groups:
                self.groups.append((index, prefix))
                heads.append((first, stop))
                for target, tensor in zip(maps, (*q_map, *k_map, log_weight, decay), strict=True):
                    target.append(array(tensor))
            starts.append(len(self.groups))
        self.group_starts = torch.tensor(starts, dtype=torch.int64).numpy()
        self.group_heads = torch.tensor(heads, dtype=torch.int64).numpy()
        self.maps = [List(m) for m in maps]
        self.sinks = layers[0].attention.hybrid.spec.sinks
        self.threads = min(STEP_THREADS, numba.config.NUMBA_NUM_THREADS)
        self._state_key: tuple | None = None
        self._state_lists: list = []
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (first use after an install, ~30 s) or load the kernels now, not at the first answer."""
        from backbone.student import state_spec

        started = time.perf_counter()
        self(0, RecurrentState.empty(state_spec(self.model)))
        self._state_key, self._state_lists = None, []
        log.info("compiled decoding step ready in %.2f s", time.perf_counter() - started)

    def _state_arrays(self, state: RecurrentState) -> list:
        from numba.typed import List

        tensors = [state.layers[index].tensors[prefix + name] for index, prefix in self.groups for name in STATE_NAMES]
        key = tuple(t.data_ptr() for t in tensors)
        if key != self._state_key:
            for t in tensors:
                if not (t.is_contiguous() and t.dtype == torch.float32 and t.shape[0] == 1):
                    raise ValueError("the compiled step takes one float32 sequence with contiguous state tensors")
            arrays = [t[0].numpy() for t in tensors]
            self._state_lists = [List(arrays[i::len(STATE_NAMES)]) for i in range(len(STATE_NAMES))]
            self._state_key = key
        return self._state_lists

    def __call__(self, token_id: int, state: RecurrentState) -> torch.Tensor:
        import numba

        from backbone.kernels.cpu_step import decode_token

        numba.set_num_threads(self.threads)  # this thread's setting only: scoped to the step
        config, t = self.config, state.num_tokens
        rope = self.model.rope(t, 1, torch.float32)
        use_sink_q = self.sink_distance is not None and t + 1 > self.sink_distance
        if use_sink_q:
            capped = rope.capped(self.sink_distance)
            sink_cos, sink_sin = capped.cos[0], capped.sin[0]
        else:
            sink_cos, sink_sin = rope.cos[0], rope.sin[0]
        logits = torch.empty(config.vocab_size)
        decode_token(*self.args, token_id, *self.layer_args, config.norm_eps, config.num_heads, config.num_kv_heads,
                     config.head_dim, self.group_starts, self.group_heads, *self.maps, *self._state_arrays(state),
                     rope.cos[0].numpy(), rope.sin[0].numpy(), sink_cos.numpy(), sink_sin.numpy(), use_sink_q, t,
                     self.sinks, logits.numpy())
        for layer in state.layers:
            layer.num_tokens = t + 1
        return logits
