"""The sampler's repetition controls on constructed logits and on a scripted model: penalties, n-gram
blocking, min-p, the loop stop, and that only the answer's own tokens count (never the prompt's)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from backbone.config import ModelConfig
from backbone.generate import (
    LanguageModel,
    Sampler,
    SamplingConfig,
    banned_tokens,
    repeat_start,
    repeats_words,
)


@pytest.mark.parametrize(("field", "value"), [
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", float("nan")),
    ("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("penalty_window", -1), ("penalty_window", 1.5),
    ("no_repeat_ngram_size", -1), ("no_repeat_ngram_size", True), ("min_p", 1.0), ("min_p", -0.1),
    ("loop_stop", 1), ("loop_stop", -2),
])
def test_invalid_repetition_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=2.0, penalty_window=0))
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -0.25])
    # tokens 0 and 1 were written (token 0 twice: the repetition penalty applies once per distinct token)
    adjusted = sampler.adjusted(logits, [0, 1, 0])
    assert adjusted.tolist() == [1.0, -2.0, 0.5, 3.0, -0.25]
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0, -0.25], "the caller's logits are left alone"


def test_the_penalty_changes_the_greedy_choice_both_ways() -> None:
    penalty = Sampler(SamplingConfig(repetition_penalty=1.5))
    assert penalty(torch.tensor([2.0, 1.5]), [0]) == 1  # 2.0 / 1.5 = 1.33 < 1.5
    assert penalty(torch.tensor([2.0, 1.0]), [0]) == 0  # 1.33 > 1.0
    assert penalty(torch.tensor([-1.0, -1.2]), [0]) == 1  # -1.0 * 1.5 = -1.5 < -1.2
    assert penalty(torch.tensor([-1.0, -1.6]), [0]) == 0  # -1.5 > -1.6
    assert penalty(torch.tensor([2.0, 1.5]), []) == 0  # nothing written yet: nothing to penalise


def test_presence_and_frequency_penalties_subtract_per_token_and_per_use() -> None:
    sampler = Sampler(SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25, penalty_window=0))
    adjusted = sampler.adjusted(torch.tensor([1.0, 1.0, 1.0]), [0, 0, 1])
    assert adjusted.tolist() == [0.0, 0.25, 1.0]  # 1 - 0.5 - 2 * 0.25, 1 - 0.5 - 0.25, untouched
    both = Sampler(SamplingConfig(repetition_penalty=2.0, presence_penalty=0.5)).adjusted(torch.tensor([2.0]), [0])
    assert both.tolist() == [0.5]  # the repetition penalty first (2 / 2), then the presence penalty


def test_penalties_look_only_at_the_latest_window_of_the_answer() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=2.0, penalty_window=3))
    adjusted = sampler.adjusted(torch.tensor([4.0, 4.0, 4.0, 4.0, 4.0]), [0, 1, 2, 3, 4])
    assert adjusted.tolist() == [4.0, 4.0, 2.0, 2.0, 2.0]


def all_ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_a_token_that_would_repeat_an_ngram_is_never_chosen() -> None:
    # the answer so far contains "5 6 7" and ends with "5 6": 7 would repeat it, however likely it is
    answer = [5, 6, 7, 1, 5, 6]
    logits = torch.full((10,), -2.0)
    logits[7], logits[3], logits[2] = 9.0, 1.0, 0.5
    assert Sampler(SamplingConfig(no_repeat_ngram_size=3))(logits, answer) == 3
    assert Sampler(SamplingConfig(no_repeat_ngram_size=4))(logits, answer) == 7  # "1 5 6" was never followed
    sampled = Sampler(SamplingConfig(no_repeat_ngram_size=3, temperature=1.5, seed=0))
    assert 7 not in {sampled(logits, answer) for _ in range(2000)}
    assert banned_tokens([5, 6, 7, 1, 5, 6, 2, 5, 6], 3) == {7, 2}
    assert banned_tokens([4, 4, 4], 1) == {4} and banned_tokens([1, 2], 3) == set()
    # a two-token vocabulary where both continuations of "0" were written: blocking gives up, no crash
    assert Sampler(SamplingConfig(no_repeat_ngram_size=2, temperature=1.0, seed=0))(
        torch.tensor([1.0, 0.0]), [0, 0, 1, 0]) in (0, 1)


def test_ngram_blocking_on_random_streams_never_repeats_an_ngram() -> None:
    """A brute-force check: every n-gram of every answer built by the blocking sampler is new."""
    rng = random.Random(7)
    for trial in range(60):
        n = rng.choice([2, 3, 4])
        sampler = Sampler(SamplingConfig(no_repeat_ngram_size=n, temperature=rng.choice([0.0, 1.0]), seed=trial))
        answer: list[int] = []
        for _ in range(40):
            # a vocabulary of 50 that loves token 0 and 1: without blocking it would repeat at once
            logits = torch.tensor([8.0, 7.0] + [rng.uniform(-1, 1) for _ in range(48)])
            answer.append(sampler(logits, answer))
        grams = all_ngrams(answer, n)
        assert len(grams) == len(set(grams)), (n, answer)


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability() -> None:
    # probabilities 0.5, 0.3, 0.2 * ... : with min_p 0.5 only tokens with p >= 0.25 can be drawn
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    sampler = Sampler(SamplingConfig(temperature=1.0, min_p=0.5, seed=1))
    drawn = [sampler(probs.log()) for _ in range(3000)]
    assert set(drawn) == {0, 1}
    assert abs(drawn.count(0) / len(drawn) - 0.5 / 0.8) < 0.03


def test_the_loop_rule_on_a_constructed_stream() -> None:
    stream = "It copies the files of a tree. Then it copies the files of"
    assert repeats_words(stream, 5)  # "it copies the files of", case ignored
    assert not repeats_words(stream, 6)  # "then it copies the files of" is new
    assert repeats_words(stream + " a", 6)  # "it copies the files of a"
    assert not repeats_words(stream + " the", 6)
    assert repeats_words("The `copytree` function copies. the Copytree FUNCTION", 3)  # quotes, case, spacing
    assert repeats_words("a b a b a b", 4)  # "a b a b" overlapping its earlier copy
    assert not repeats_words("a b c", 3)  # too short to hold a repeat of 3


class Cycle(torch.nn.Module):
    """A scripted model: after token t it prefers the next token of the cycle 10 -> 11 -> 12 -> 13 -> 10 (any
    other token leads to 10), with 99 as a distant second choice. The state is the last token read."""

    vocab = 100

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor, state: SimpleNamespace, last_only: bool = True) -> torch.Tensor:
        state.num_tokens += ids.shape[1]
        state.last = int(ids[0, -1])
        logits = torch.zeros(1, 1, self.vocab)
        logits[0, 0, 10 + (state.last - 9) % 4 if 10 <= state.last <= 13 else 10] = 5.0
        logits[0, 0, 99] = 1.0
        return logits


def cycle_model() -> LanguageModel:
    config = ModelConfig(vocab_size=Cycle.vocab, dim=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                         ffn_dim=8, max_context=1000)
    tokenizer = SimpleNamespace(stop_ids={0}, token_bytes=[f" w{i}".encode() for i in range(Cycle.vocab)])

    def make_state() -> SimpleNamespace:
        return SimpleNamespace(num_tokens=0, last=None)

    return LanguageModel(Cycle(), tokenizer, config, "cycle", None, make_state, lambda t, m: make_state())


def test_the_scripted_model_loops_without_the_controls() -> None:
    result = cycle_model().generate([10, 11, 12, 13], sampling=SamplingConfig(max_new_tokens=10))
    assert result.token_ids == [10, 11, 12, 13, 10, 11, 12, 13, 10, 11]
    assert result.stop_reason == "max_new_tokens"


def test_ngram_blocking_counts_the_answer_only_not_the_prompt() -> None:
    # The prompt already holds the cycle: the answer may still write it once, then must leave it.
    result = cycle_model().generate([10, 11, 12, 13], sampling=SamplingConfig(max_new_tokens=8,
                                                                             no_repeat_ngram_size=3))
    assert result.token_ids[:4] == [10, 11, 12, 13]
    assert result.token_ids == [10, 11, 12, 13, 10, 11, 99, 10]
    grams = all_ngrams(result.token_ids, 3)
    assert len(grams) == len(set(grams))


def test_penalties_count_the_answer_only_not_the_prompt() -> None:
    # 5 / 6 < 1: after one use a cycle token loses to 99, but the prompt's use of it does not count
    result = cycle_model().generate([10, 11, 12, 13], sampling=SamplingConfig(max_new_tokens=3,
                                                                             repetition_penalty=6.0))
    assert result.token_ids == [10, 11, 12]


def test_the_loop_stop_ends_the_answer_before_the_repeat_and_never_shows_its_start() -> None:
    model = cycle_model()
    state = model.new_state()
    result = model.generate([13], state, SamplingConfig(max_new_tokens=50, loop_stop=4))
    # w10 w11 w12 w13 w10 w11 w12 came; w13 would have repeated "w10 w11 w12 w13": not emitted, the answer stops
    assert result.stop_reason == "repetition"
    assert result.token_ids == [10, 11, 12, 13, 10, 11, 12]
    assert state.num_tokens == 1 + 7  # the prompt and every token yielded, not the refused one
    assert result.text == " w10 w11 w12 w13"  # the start of the repeat is not part of the answer
    pieces = list(model.stream([13], model.new_state(), SamplingConfig(max_new_tokens=50, loop_stop=4)))
    assert "".join(pieces) == " w10 w11 w12 w13"  # held back while it might start a repeat, then dropped
    assert cycle_model().generate([13], sampling=SamplingConfig(max_new_tokens=6, loop_stop=5)).text == \
        " w10 w11 w12 w13 w10 w11"  # an answer that ends otherwise keeps what was held back


def test_the_chat_engine_streams_what_it_keeps() -> None:
    from app.chat.generation import generation_steps

    steps = generation_steps(cycle_model(), [13], cycle_model().new_state(), SamplingConfig(loop_stop=4),
                             SimpleNamespace(cancelled=False))
    shown = []
    while True:
        try:
            shown.append(next(steps).text)
        except StopIteration as stop:
            answer = stop.value
            break
    assert answer.stop_reason == "repetition" and answer.text == "".join(shown) == " w10 w11 w12 w13"


@pytest.mark.parametrize(("text", "span", "held"), [
    ("one two three", 4, ""),  # nothing written twice
    ("one two three one", 4, " one"),  # "one" may start "one two three" again
    ("one two three one tw", 4, " one tw"),  # an unfinished word only has to begin an earlier one
    ("one two three one two.", 4, " one two."),
    ("one two three one two three", 3, " two three"),  # at most span - 1 words
    ("a b c one", 4, ""),
    ("x y z", 0, ""),
    ("Copy the tree. copy THE", 3, " copy THE"),
])
def test_repeat_start_holds_the_words_that_may_begin_a_repeat(text: str, span: int, held: str) -> None:
    assert text[repeat_start(text, span):] == held


@pytest.mark.parametrize(("text", "kept"), [
    ("It reads the file. Then it is used to", "It reads the file."),
    ("Use `default=1`.\n\nThe help text of a command is formatted by", "Use `default=1`."),
    ("```python\nx = 1\ny = ", "```python\nx = 1"),
    ("No sentence end at all", "No sentence end at all"),
    ("Version 2.0 is out. It", "Version 2.0 is out."),
])
def test_an_answer_ended_by_the_loop_stop_is_cut_back_to_a_whole_sentence(text: str, kept: str) -> None:
    from app.chat.generation import cut_to_sentence

    assert cut_to_sentence(text) == kept
