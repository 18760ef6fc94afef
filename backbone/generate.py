"""Text generation: sampling settings, token sampling, UTF-8-safe streaming, and the `LanguageModel` wrapper.

`LanguageModel` is the one object the rest of Rillet talks to, whichever backbone (teacher with a KV
cache, or linearized student with a recurrent state) sits inside it.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from backbone.config import ModelConfig
from backbone.state import ModelState
from backbone.tokenizer import ChatTokenizer

StopReason = Literal["end_of_turn", "max_new_tokens", "context_full"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. temperature 0 is greedy; seed makes sampling repeatable."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a whole number of at least 1, not {self.max_new_tokens!r}.")
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), not {self.temperature!r}.")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), not {self.top_p!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ValueError(f"seed must be a non-negative whole number or None, not {self.seed!r}.")


class Sampler:
    """Picks the next token from logits: argmax, or temperature + nucleus (top-p) sampling."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.generator = torch.Generator()
        if config.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.config.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / self.config.temperature, dim=-1)
        if self.config.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.config.top_p
            sorted_probs[outside] = 0
            return int(order[torch.multinomial(sorted_probs, 1, generator=self.generator)])
        return int(torch.multinomial(probs, 1, generator=self.generator))


class StreamDecoder:
    """Turns token ids into text pieces, holding back bytes until a UTF-8 character is whole."""

    def __init__(self, token_bytes: list[bytes]) -> None:
        self.token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.token_bytes[token_id])

    def flush(self) -> str:
        """What is left at the end (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stop_reason: StopReason


@dataclass
class LanguageModel:
    """A backbone (`model(ids, state, last_only=...) -> logits`) with its tokenizer and state factory."""

    model: torch.nn.Module
    tokenizer: ChatTokenizer
    config: ModelConfig
    fingerprint: str
    max_context: int | None
    make_state: Callable[[], ModelState]
    restore_state: Callable[[dict[str, torch.Tensor], dict[str, str]], ModelState]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_state(self) -> ModelState:
        return self.make_state()

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ModelState:
        """Rebuild a saved state; ValueError when it does not belong to this model."""
        return self.restore_state(tensors, metadata)

    def _ids(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("Nothing to feed: the prompt has no tokens. Type a message first.")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"Token ids must lie in [0, {self.config.vocab_size}).")
        return ids.to(self.device)

    def _check_room(self, state: ModelState, num_new: int) -> None:
        if self.max_context is not None and state.num_tokens + num_new > self.max_context:
            raise ValueError(
                f"The prompt has {num_new} tokens and the conversation already {state.num_tokens}; together "
                f"they exceed this model's {self.max_context}-token context. Shorten the prompt, start a new "
                "conversation, or use the student model, which has no length limit."
            )

    @torch.inference_mode()
    def prefill(self, ids: list[int] | torch.Tensor, state: ModelState, chunk_size: int = 512) -> torch.Tensor:
        """Feed tokens into the state; the logits (vocab,) after the last one."""
        ids = self._ids(ids)
        self._check_room(state, ids.shape[1])
        logits = None
        for start in range(0, ids.shape[1], chunk_size):
            logits = self.model(ids[:, start : start + chunk_size], state, last_only=True)
        return logits[0, -1]

    @torch.inference_mode()
    def step(self, token_id: int, state: ModelState) -> torch.Tensor:
        """Feed one token; the logits (vocab,) that follow it."""
        if not 0 <= token_id < self.config.vocab_size:
            raise ValueError(f"Token ids must lie in [0, {self.config.vocab_size}), not {token_id}.")
        ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        return self.model(ids, state, last_only=True)[0, -1]

    def forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for a whole batch of sequences, no state; differentiable."""
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"forward_logits takes token ids shaped (batch, T >= 1), not {tuple(ids.shape)}.")
        if self.max_context is not None and ids.shape[1] > self.max_context:
            raise ValueError(f"{ids.shape[1]} tokens exceed this model's {self.max_context}-token context.")
        return self.model(ids.to(self.device))

    def iter_tokens(self, prompt_ids: list[int] | torch.Tensor, state: ModelState,
                    sampling: SamplingConfig) -> Generator[int, None, StopReason]:
        """Prefill, then yield sampled token ids; each is fed back, so the state holds all of them.

        Returns (as StopIteration.value) why it stopped. A stop token is yielded and fed too, so the
        state ends with the end-of-turn marker, like the chat template writes past turns. Closing the
        generator early (a user pressing stop) still feeds the last token it yielded.
        """
        if not isinstance(sampling, SamplingConfig):
            raise TypeError("sampling must be a SamplingConfig.")
        sampler = Sampler(sampling)
        logits = self.prefill(prompt_ids, state)
        stop_ids = self.tokenizer.stop_ids
        for _ in range(sampling.max_new_tokens):
            if self.max_context is not None and state.num_tokens >= self.max_context:
                return "context_full"
            token = sampler(logits)
            try:
                yield token
            finally:  # also on close(): the state keeps every token the caller has seen
                logits = self.step(token, state)
            if token in stop_ids:
                return "end_of_turn"
        return "max_new_tokens"

    def stream(self, prompt_ids: list[int] | torch.Tensor, state: ModelState,
               sampling: SamplingConfig | None = None) -> Generator[str, None, StopReason]:
        """Text pieces of the answer as they are generated (stop tokens are not shown).

        The generator's return value (StopIteration.value) says why it stopped.
        """
        decoder = StreamDecoder(self.tokenizer.token_bytes)
        stop_ids = self.tokenizer.stop_ids
        tokens = self.iter_tokens(prompt_ids, state, sampling or SamplingConfig())
        try:
            while True:
                try:
                    token = next(tokens)
                except StopIteration as stop:
                    reason = stop.value
                    break
                piece = "" if token in stop_ids else decoder.push(token)
                if piece:
                    yield piece
        finally:
            tokens.close()  # when the caller stops early, the last token still reaches the state now
        if tail := decoder.flush():
            yield tail
        return reason

    def generate(self, prompt_ids: list[int] | torch.Tensor, state: ModelState | None = None,
                 sampling: SamplingConfig | None = None) -> Generation:
        """The whole answer at once, with its token ids and why it stopped."""
        state = self.new_state() if state is None else state
        tokens: list[int] = []
        iterator = self.iter_tokens(prompt_ids, state, sampling or SamplingConfig())
        while True:
            try:
                tokens.append(next(iterator))
            except StopIteration as stop:
                reason = stop.value
                break
        shown = [t for t in tokens if t not in self.tokenizer.stop_ids]
        decoder = StreamDecoder(self.tokenizer.token_bytes)
        text = "".join(decoder.push(t) for t in shown) + decoder.flush()
        return Generation(text, tokens, reason)

    def chat(self, messages: list[dict[str, str]], sampling: SamplingConfig | None = None) -> Generation:
        """Answer a conversation written as chat messages (a fresh state each call)."""
        prompt = self.tokenizer.encode(self.tokenizer.render_chat(messages, add_generation_prompt=True))
        return self.generate(prompt, None, sampling)
