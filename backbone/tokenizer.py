"""The tokenizer and chat template, rebuilt from the vocabulary and merges embedded in the GGUF file.

A GGUF carries no `tokenizer.json`; it stores the byte-level BPE vocabulary, the merges, the token
types and the Jinja chat template as metadata. The `tokenizers` library does the BPE; the
pre-tokenizer is chosen from `tokenizer.ggml.pre` the way llama.cpp does.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

log = logging.getLogger(__name__)

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer names whose vocabularies were trained with every digit split off.
DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in LLAMA3_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre not in (None, "default", "gpt2"):
        log.warning("unknown pre-tokenizer %r in the GGUF file; using GPT-2's split", pre)
    return byte_level


def build_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """A byte-level BPE `Tokenizer` from llama.cpp's tokenizer metadata."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"Only byte-level BPE ('gpt2') GGUF tokenizers are supported; this file has {kind!r}.")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types, strict=True) if kind == CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED])
    return tokenizer


class ChatTokenizer:
    """Text <-> token ids, plus the model's chat template (ChatML for SmolLM2)."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, eos_id: int, end_of_turn_id: int) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.eos_id, self.end_of_turn_id = eos_id, end_of_turn_id
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = self._raise_template_error
        self._template = env.from_string(chat_template)

    @staticmethod
    def _raise_template_error(message: str) -> None:
        raise TemplateError(message)

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> ChatTokenizer:
        tokenizer = build_tokenizer(metadata)
        eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
        end_of_turn = metadata.get("tokenizer.ggml.eot_token_id")
        if end_of_turn is None:
            end_of_turn = tokenizer.token_to_id("<|im_end|>")
        template = metadata.get("tokenizer.chat_template")
        if template is None:
            log.warning("the GGUF file has no chat template; using ChatML")
            template = CHATML_TEMPLATE
        return cls(tokenizer, template, eos_id, eos_id if end_of_turn is None else int(end_of_turn))

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / "tokenizer.json"))
        meta = {"chat_template": self.chat_template, "eos_id": self.eos_id, "end_of_turn_id": self.end_of_turn_id}
        (directory / "chat.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> ChatTokenizer:
        meta = json.loads((directory / "chat.json").read_text())
        return cls(Tokenizer.from_file(str(directory / "tokenizer.json")), meta["chat_template"], meta["eos_id"],
                   meta["end_of_turn_id"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset({self.eos_id, self.end_of_turn_id})

    def encode(self, text: str) -> list[int]:
        """Token ids; control tokens written in the text (`<|im_start|>`) become their single id."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every token, for streaming text without splitting UTF-8 characters."""
        to_byte = {char: byte for byte, char in byte_alphabet().items()}
        special = {token.content for token in self.tokenizer.get_added_tokens_decoder().values()}
        table = []
        for index in range(self.vocab_size):
            token = self.tokenizer.id_to_token(index) or ""
            if token in special or any(char not in to_byte for char in token):
                table.append(token.encode())
            else:
                table.append(bytes(to_byte[char] for char in token))
        return table

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The whole conversation in the model's chat template."""
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise ValueError(f"Each chat message needs a 'role' and a 'content'; got {message!r}.")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def render_turn(self, role: str, content: str) -> str:
        """One message as the template writes it, without the template's opening extras (default system)."""
        anchor = [{"role": "system", "content": "x"}]
        before = self.render_chat(anchor, add_generation_prompt=False)
        after = self.render_chat([*anchor, {"role": role, "content": content}], add_generation_prompt=False)
        return after.removeprefix(before)

    @cached_property
    def assistant_prefix(self) -> str:
        """What opens the assistant's answer (`<|im_start|>assistant\\n`)."""
        anchor = [{"role": "system", "content": "x"}]
        with_prompt = self.render_chat(anchor, add_generation_prompt=True)
        return with_prompt.removeprefix(self.render_chat(anchor, add_generation_prompt=False))
