"""The tokenizer rebuilt from GGUF metadata, against `transformers` reading the same file."""

from __future__ import annotations

from pathlib import Path

import pytest

from backbone.tokenizer import ChatTokenizer, byte_alphabet
from tests.text import python_reference

pytestmark = pytest.mark.slow

NON_ASCII = (
    "Café, naïve, Ærøskøbing, Straße, İstanbul, Ωμέγα, Москва, 東京都の天気は晴れ。 서울 🙂🚀👩‍💻 "
    "مرحبا بالعالم ∑∫√∞ ≤ ≥ ≠ → ← «guillemets» “quotes” — dash … ellipsis\u00a0nbsp x² €100 ¥2,000\n"
)
# Numeric characters that are not ASCII digits, after a space or side by side: here the GGUF's
# "smollm" pre-tokenizer (split every \p{N} off, as llama.cpp and the original tokenizer.json do) and
# transformers' GGUF conversion (which leaves that split out) disagree.
NUMERIC_SYMBOLS = "½ ¾ cup, ²³ powers, Ⅻ o'clock, ٣ and ३ digits, 2024"
LLAMA_CPP_SMOLLM_SPLITS = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"]
AWKWARD = (
    "  leading spaces\n\n\ttabs\tand  double  spaces   \r\nCRLF line\r\n"
    "numbers 3.14159 1,000,000 2024-11-24 0x1F 1e-5 v2.13.0 ... it's we'll they'd I'M\n"
    "<|im_start|>user\nspecial tokens inside text<|im_end|>\n<|endoftext|><file_sep>trailing   "
)


@pytest.fixture(scope="module")
def mixed_text() -> str:
    prose = python_reference()
    code = (Path(__file__).resolve().parents[2] / "backbone" / "model.py").read_text()
    text = prose[5000:7500] + "\n\n" + code[:2000] + "\n\n" + NON_ASCII * 3 + AWKWARD
    assert len(text) > 5000
    return text


def test_encode_matches_transformers(teacher, hf_reference, mixed_text: str) -> None:
    ours = teacher.tokenizer.encode(mixed_text)
    theirs = hf_reference.tokenizer.encode(mixed_text, add_special_tokens=False)
    assert ours == theirs
    assert len(ours) > 1000


@pytest.mark.parametrize("start", range(0, 5000, 700))
def test_encode_matches_transformers_on_slices(teacher, hf_reference, mixed_text: str, start: int) -> None:
    """Slices that start and end anywhere, even inside a word or a multi-byte character's context."""
    piece = mixed_text[start : start + 333]
    assert teacher.tokenizer.encode(piece) == hf_reference.tokenizer.encode(piece, add_special_tokens=False)


def test_pre_tokenizer_follows_llama_cpp_smollm_rule(teacher, mixed_text: str) -> None:
    """Our pre-tokenizer splits text exactly like llama.cpp's two regular expressions for "smollm"."""
    regex = pytest.importorskip("regex", reason="the reference split needs the regex package (test extra)")
    text = mixed_text.replace("<|im_start|>", "").replace("<|im_end|>", "").replace("<|endoftext|>", "")
    text = text.replace("<file_sep>", "") + NUMERIC_SYMBOLS
    digits, words = LLAMA_CPP_SMOLLM_SPLITS
    pieces = [m.group() for piece in _isolate(regex, digits, text) for m in regex.finditer(words, piece)]
    spell = byte_alphabet()
    expected = ["".join(spell[b] for b in piece.encode()) for piece in pieces]
    ours = [piece for piece, _ in teacher.tokenizer.tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert ours == expected


def _isolate(regex, pattern: str, text: str) -> list[str]:
    """Split text around every match, keeping both the matches and the text between them."""
    out, start = [], 0
    for m in regex.finditer(pattern, text):
        out += [text[start : m.start()], m.group()]
        start = m.end()
    return [p for p in [*out, text[start:]] if p]


def test_numeric_symbols_differ_from_transformers_only_as_documented(teacher, hf_reference) -> None:
    ours = teacher.tokenizer.encode(NUMERIC_SYMBOLS)
    theirs = hf_reference.tokenizer.encode(NUMERIC_SYMBOLS, add_special_tokens=False)
    assert ours != theirs  # transformers' GGUF tokenizer lacks the \p{N} split
    assert teacher.tokenizer.decode(ours) == NUMERIC_SYMBOLS == hf_reference.tokenizer.decode(theirs)


def test_decode_round_trips(teacher, mixed_text: str) -> None:
    tokenizer = teacher.tokenizer
    assert tokenizer.decode(tokenizer.encode(mixed_text)) == mixed_text
    assert tokenizer.decode(tokenizer.encode("<|im_end|>"), skip_special=True) == ""


def test_token_bytes_spell_every_token(teacher, hf_reference) -> None:
    table = teacher.tokenizer.token_bytes
    assert len(table) == teacher.config.vocab_size
    for token_id in [0, 1, 2, 100, 198, 1000, 30000, 49151]:
        assert table[token_id].decode("utf-8", errors="replace") == hf_reference.tokenizer.decode([token_id])
    assert len(byte_alphabet()) == 256 and len(set(byte_alphabet().values())) == 256


def test_special_ids(teacher) -> None:
    tokenizer = teacher.tokenizer
    assert tokenizer.decode([tokenizer.end_of_turn_id]) == "<|im_end|>"
    assert tokenizer.decode([tokenizer.eos_id]) == "<|im_end|>"
    assert tokenizer.encode("<|im_start|>") == [1]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye ☕"}],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(teacher, hf_reference, messages, add_generation_prompt) -> None:
    ours = teacher.tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_reference.tokenizer.apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)
    assert ours == theirs


def test_turn_pieces(teacher) -> None:
    tokenizer = teacher.tokenizer
    assert tokenizer.render_turn("user", "Hi\nthere") == "<|im_start|>user\nHi\nthere<|im_end|>\n"
    assert tokenizer.assistant_prefix == "<|im_start|>assistant\n"
    whole = tokenizer.render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert whole == tokenizer.render_turn("system", "S") + tokenizer.render_turn("user", "U") + \
        tokenizer.assistant_prefix
    with pytest.raises(ValueError, match="role"):
        tokenizer.render_chat([{"content": "no role"}])


def test_save_and_load(teacher, tmp_path: Path, mixed_text: str) -> None:
    teacher.tokenizer.save(tmp_path)
    loaded = ChatTokenizer.load(tmp_path)
    assert loaded.encode(mixed_text) == teacher.tokenizer.encode(mixed_text)
    assert (loaded.chat_template, loaded.eos_id, loaded.end_of_turn_id) == (
        teacher.tokenizer.chat_template, teacher.tokenizer.eos_id, teacher.tokenizer.end_of_turn_id)
