"""Text generation: sampling settings, token sampling, UTF-8-safe streaming, and the `LanguageModel` wrapper.

`LanguageModel` is the one object the rest of Rillet talks to, whichever backbone (teacher with a KV
cache, or linearized student with a recurrent state) sits inside it.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from backbone.config import ModelConfig
from backbone.state import ModelState
from backbone.tokenizer import ChatTokenizer

StopReason = Literal["end_of_turn", "max_new_tokens", "context_full", "repetition"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. temperature 0 is greedy; seed makes sampling repeatable.

    The repetition controls look at the ANSWER's own tokens only (the tokens generated in this call),
    never at the prompt, so an answer may freely use the identifiers of the passages it was given:

    - `repetition_penalty` (llama.cpp's repeat penalty, Hugging Face's `repetition_penalty`): the logit
      of every distinct token among the last `penalty_window` answer tokens is divided by the penalty
      when positive and multiplied by it when negative, so > 1 always makes a repeat less likely.
    - `presence_penalty` / `frequency_penalty` (OpenAI's): subtracted from the logit of a token seen in
      that window, once / once per occurrence.
    - `penalty_window`: how many of the latest answer tokens the penalties look at (0: the whole answer).
    - `no_repeat_ngram_size` (Hugging Face's): a token that would complete an n-gram of this many
      tokens that the answer already contains is never chosen (0: off).
    - `min_p`: when sampling, drop tokens whose probability is below min_p times the top token's.
    - `loop_stop`: end the answer (stop reason "repetition") when the token chosen would make its last
      `loop_stop` words repeat a run of words the answer already wrote (0: off). Words, not tokens,
      as a reader sees them: runs of letters, digits and underscores, case, spacing and punctuation
      ignored (`repeats_words`), so "the `copytree` function" and "The copytree function" are the
      same three words. That token is not emitted, and the words before it that began the repeat
      are not part of the answer's text: `AnswerText` holds back words that may start a repeat
      until they prove not to (`repeat_start`).

    Order of application (as in llama.cpp): penalties, n-gram blocking, temperature, top-p and min-p.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_window: int = 64
    no_repeat_ngram_size: int = 0
    min_p: float = 0.0
    loop_stop: int = 0

    def __post_init__(self) -> None:
        if not _whole(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a whole number of at least 1, not {self.max_new_tokens!r}.")
        if not _finite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), not {self.temperature!r}.")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), not {self.top_p!r}.")
        if self.seed is not None and (not _whole(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative whole number or None, not {self.seed!r}.")
        if not _finite(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be in (0, 10] (1 = off, > 1 discourages repeats), "
                             f"not {self.repetition_penalty!r}.")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2] (0 = off), not {value!r}.")
        if not _whole(self.penalty_window) or self.penalty_window < 0:
            raise ValueError(f"penalty_window must be a whole number >= 0 (0 = the whole answer), "
                             f"not {self.penalty_window!r}.")
        if not _whole(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be a whole number >= 0 (0 = off), "
                             f"not {self.no_repeat_ngram_size!r}.")
        if not _finite(self.min_p) or not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), not {self.min_p!r}.")
        if not _whole(self.loop_stop) or self.loop_stop < 0 or self.loop_stop == 1:
            raise ValueError(f"loop_stop must be 0 (off) or a whole number of tokens >= 2, not {self.loop_stop!r}.")

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def banned_tokens(answer: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram the answer already contains (Hugging Face's
    no_repeat_ngram_size): every token that followed an earlier occurrence of the last n - 1 tokens."""
    if n < 1 or len(answer) < n:
        return set()
    if n == 1:
        return set(answer)
    tail = list(answer[len(answer) - n + 1:])
    first = tail[0]
    return {answer[i + n - 1] for i in range(len(answer) - n + 1)
            if answer[i] == first and list(answer[i : i + n - 1]) == tail}


def penalise(logits: torch.Tensor, answer: Sequence[int], config: SamplingConfig) -> torch.Tensor:
    """The logits with the repetition, presence and frequency penalties of the latest answer tokens."""
    window = answer[-config.penalty_window:] if config.penalty_window else answer
    if not window or not config.penalised:
        return logits
    ids, counts = torch.tensor(list(window), dtype=torch.long).unique(return_counts=True)
    ids, counts = ids.to(logits.device), counts.to(logits.device, logits.dtype)
    seen = logits[ids]
    if config.repetition_penalty != 1:
        seen = torch.where(seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty)
    seen = seen - config.presence_penalty - config.frequency_penalty * counts
    logits = logits.clone()
    logits[ids] = seen
    return logits


class Sampler:
    """Picks the next answer token from logits and the answer so far: penalties and n-gram blocking,
    then argmax (temperature 0), or temperature with nucleus (top-p) and min-p sampling."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.generator = torch.Generator()
        if config.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(config.seed)

    def adjusted(self, logits: torch.Tensor, answer: Sequence[int] = ()) -> torch.Tensor:
        """The logits after the penalties and n-gram blocking (blocked tokens at -inf)."""
        logits = penalise(logits.float(), answer, self.config)
        banned = banned_tokens(answer, self.config.no_repeat_ngram_size)
        if banned and len(banned) < logits.numel():  # (with every token blocked, blocking is given up)
            logits = logits.clone()
            logits[torch.tensor(sorted(banned), dtype=torch.long, device=logits.device)] = -math.inf
        return logits

    def __call__(self, logits: torch.Tensor, answer: Sequence[int] = ()) -> int:
        config = self.config
        if answer and (config.penalised or config.no_repeat_ngram_size):
            logits = self.adjusted(logits, answer)
        if config.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / config.temperature, dim=-1)
        if config.min_p > 0:
            probs = torch.where(probs >= config.min_p * probs.max(), probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        if config.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
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


WORD = re.compile(r"\w+")


def _words(text: str) -> list[re.Match[str]]:
    return list(WORD.finditer(text))


def repeats_words(text: str, span: int) -> bool:
    """Whether the last `span` words of `text` (runs of letters, digits and underscores, case ignored) repeat
    a run of words written earlier in it (the two runs may overlap: "a b a b a b" repeats "a b a b")."""
    words = [m.group().lower() for m in _words(text)]
    n = len(words)
    if span < 1 or n <= span:
        return False
    tail = words[n - span:]
    return any(words[i : i + span] == tail for i in range(n - span))


def repeat_start(text: str, span: int) -> int:
    """Where the part of `text` begins that may be the start of a repeat of `span` words: the longest run of
    its last words, shorter than `span`, that was already written (its last word may be unfinished: then
    it only has to begin an earlier word). len(text) when the text ends with nothing written before."""
    matches = _words(text)
    words = [m.group().lower() for m in matches]
    n = len(words)
    if span < 2 or n < 2:
        return len(text)
    open_word = matches[-1].end() == len(text)  # the last word may still grow

    def same(i: int, j: int) -> bool:  # word i (earlier) and word j of the tail
        return words[i].startswith(words[j]) if open_word and j == n - 1 else words[i] == words[j]

    best = 0
    for k in range(1, min(span - 1, n - 1) + 1):  # a longer run holds the shorter ones: stop at the first miss
        if not any(all(same(i + m, n - k + m) for m in range(k)) for i in range(n - k)):
            break
        best = k
    if not best:
        return len(text)
    start = matches[n - best].start()
    while start and text[start - 1].isspace():  # the space before the run goes with it
        start -= 1
    return start


class AnswerText:
    """The text of an answer as its tokens come: UTF-8-safe (`StreamDecoder`), stop tokens not shown, and
    with `loop_stop` the words that may be the start of a repeat held back until they prove not to be
    (`repeat_start`). When the loop stop ends the answer, what is held back is dropped, so the text
    streamed never shows the start of the repeat."""

    def __init__(self, token_bytes: list[bytes], stop_ids: set[int] | frozenset[int], loop_stop: int = 0) -> None:
        self.decoder = StreamDecoder(token_bytes)
        self.stop_ids = stop_ids
        self.loop_stop = loop_stop
        self.text = ""
        self.shown = 0  # characters of `text` handed out

    def push(self, token: int) -> str:
        """The text that can be shown now that `token` came."""
        if token in self.stop_ids:
            return self._release(len(self.text))
        self.text += self.decoder.push(token)
        return self._release(repeat_start(self.text, self.loop_stop) if self.loop_stop else len(self.text))

    def finish(self, stop_reason: str) -> str:
        """The rest of the text: what was held back (unless a loop ended the answer) and a last character."""
        if stop_reason == "repetition":
            return ""
        self.text += self.decoder.flush()
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.shown : upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return piece


@dataclass
class Generation:
    text: str  # without the start of a repeat cut by loop_stop
    token_ids: list[int]  # every token generated (and read into the state)
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
    # A compiled decoding step that replaces `model(ids, state)` for one token (backbone/fast_decode.py).
    fast_step: Callable[[int, ModelState], torch.Tensor] | None = None

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
        if self.fast_step is not None:
            return self.fast_step(token_id, state)
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
        generator early (a user pressing stop) still feeds the last token it yielded. The repetition
        controls see only the tokens yielded here (the answer), never `prompt_ids`. On "repetition"
        (`loop_stop`) the token that would have completed the repeat is neither yielded nor fed; the
        words before it that began the repeat were yielded (`AnswerText` leaves them out).
        """
        if not isinstance(sampling, SamplingConfig):
            raise TypeError("sampling must be a SamplingConfig.")
        sampler = Sampler(sampling)
        logits = self.prefill(prompt_ids, state)
        stop_ids = self.tokenizer.stop_ids
        answer: list[int] = []
        written = b""  # the answer's bytes, for the loop stop
        for _ in range(sampling.max_new_tokens):
            if self.max_context is not None and state.num_tokens >= self.max_context:
                return "context_full"
            token = sampler(logits, answer)
            if sampling.loop_stop and token not in stop_ids:
                written += self.tokenizer.token_bytes[token]
                if repeats_words(written.decode("utf-8", errors="ignore"), sampling.loop_stop):
                    return "repetition"
            answer.append(token)
            try:
                yield token
            finally:  # also on close(): the state keeps every token the caller has seen
                logits = self.step(token, state)
            if token in stop_ids:
                return "end_of_turn"
        return "max_new_tokens"

    def stream(self, prompt_ids: list[int] | torch.Tensor, state: ModelState,
               sampling: SamplingConfig | None = None) -> Generator[str, None, StopReason]:
        """Text pieces of the answer as they are generated (stop tokens are not shown; see `AnswerText`).

        The generator's return value (StopIteration.value) says why it stopped.
        """
        sampling = sampling or SamplingConfig()
        text = AnswerText(self.tokenizer.token_bytes, self.tokenizer.stop_ids, sampling.loop_stop)
        tokens = self.iter_tokens(prompt_ids, state, sampling)
        try:
            while True:
                try:
                    token = next(tokens)
                except StopIteration as stop:
                    reason = stop.value
                    break
                if piece := text.push(token):
                    yield piece
        finally:
            tokens.close()  # when the caller stops early, the last token still reaches the state now
        if tail := text.finish(reason):
            yield tail
        return reason

    def generate(self, prompt_ids: list[int] | torch.Tensor, state: ModelState | None = None,
                 sampling: SamplingConfig | None = None) -> Generation:
        """The whole answer at once, with its token ids and why it stopped."""
        state = self.new_state() if state is None else state
        sampling = sampling or SamplingConfig()
        tokens: list[int] = []
        iterator = self.iter_tokens(prompt_ids, state, sampling)
        while True:
            try:
                tokens.append(next(iterator))
            except StopIteration as stop:
                reason = stop.value
                break
        text = AnswerText(self.tokenizer.token_bytes, self.tokenizer.stop_ids, sampling.loop_stop)
        return Generation("".join(text.push(t) for t in tokens) + text.finish(reason), tokens, reason)

    def chat(self, messages: list[dict[str, str]], sampling: SamplingConfig | None = None) -> Generation:
        """Answer a conversation written as chat messages (a fresh state each call)."""
        prompt = self.tokenizer.encode(self.tokenizer.render_chat(messages, add_generation_prompt=True))
        return self.generate(prompt, None, sampling)
