"""A teacher read from a Hugging Face folder (config.json + safetensors + tokenizer.json) against `transformers`
reading the same folder: logits, tokens and chat template; sharded, tied and bfloat16 checkpoints; clear errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the reference that writes the folders")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from app.cli import cli  # noqa: E402
from backbone.convert import data  # noqa: E402
from backbone.generate import SamplingConfig  # noqa: E402
from backbone.hf_folder import read_hf_folder  # noqa: E402
from backbone.loader import load_model  # noqa: E402
from backbone.model import rope_tables  # noqa: E402
from backbone.student import StudentConfig, build_student, save_student  # noqa: E402

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "Zürich, 12 €, naïve 😀"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on a few lines, with ChatML's control tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TEXTS * 20, trainer)
    return tokenizer


def save_folder(folder: Path, *, tie: bool = False, shard: str | None = None, dtype=torch.float32,
                **config) -> Path:
    """A random llama model (weights large enough to give O(1) logits, norms away from 1) saved by transformers."""
    tokenizer = tiny_tokenizer()
    hf_config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=5000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=tie, **config)
    torch.manual_seed(len(str(folder)))
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, param.shape[-1] ** -0.5 if param.dim() > 1 and "embed" not in name else 1.0)
    model.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                                bos_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return folder


def reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(("tie", "shard"), [(False, None), (True, "60KB")])
def test_logits_match_transformers(tmp_path: Path, tie: bool, shard: str | None) -> None:
    folder = save_folder(tmp_path / "model", tie=tie, shard=shard)
    if shard:
        assert (folder / "model.safetensors.index.json").is_file()
    model = load_model("teacher", model_dir=folder)
    assert model.config.tie_embeddings is tie and model.config.num_kv_heads == 2
    for length in (1, 63, 200):
        ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
        expected = reference_logits(folder, ids)
        assert expected.std() > 0.3  # large enough that a wrong mapping could not hide under the tolerance
        with torch.no_grad():
            got = model.forward_logits(ids)
        assert (got - expected).abs().max() <= 1e-4, length


def test_llama3_rotary_scaling_matches_transformers(tmp_path: Path) -> None:
    """Llama 3's scaled RoPE (original context 64 here) read from config.json: every band of the scaling is
    exercised (head_dim 16, theta 5,000: wavelengths from 6 to ~2,600 tokens) and positions reach 200."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    folder = save_folder(tmp_path / "llama3", rope_scaling=scaling)
    model = load_model("teacher", model_dir=folder)
    factors = model.config.rope_freq_factors
    assert factors is not None and factors[0] == 1.0 and factors[-1] == 8.0 and any(1 < f < 8 for f in factors)
    ids = torch.randint(0, model.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.forward_logits(ids)
        plain_cos, plain_sin = rope_tables(model.config.head_dim, 256, model.config.rope_theta)
        model.model.rope_cos, model.model.rope_sin = plain_cos, plain_sin
        unscaled = model.forward_logits(ids)
    expected = reference_logits(folder, ids)
    assert (got - expected).abs().max() <= 1e-4
    assert (unscaled - expected).abs().max() > 1e-2  # the scaling matters at these positions


def test_bfloat16_checkpoint_and_folder_given_as_gguf_path(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "bf16", dtype=torch.bfloat16)
    model = load_model("teacher", gguf_path=folder)  # a folder where a GGUF was expected reads as a folder
    assert next(model.model.parameters()).dtype == torch.float32
    ids = torch.randint(0, model.config.vocab_size, (1, 63), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.forward_logits(ids) - reference_logits(folder, ids)).abs().max() <= 1e-4
    assert model.info["source"] == str(folder) and len(model.fingerprint) == 64


def test_tokenizer_and_chat_template_match_transformers(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "tok")
    ours = load_model("teacher", model_dir=folder).tokenizer
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    for text in [*TEXTS, "<|im_start|>user\nhi<|im_end|>\n", ""]:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == text
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "naïve?"}]
    assert ours.render_chat(messages) == reference.apply_chat_template(messages, tokenize=False,
                                                                       add_generation_prompt=True)
    assert ours.eos_id == ours.end_of_turn_id == reference.convert_tokens_to_ids("<|im_end|>")
    ids = ours.encode("Zürich 😀")
    assert b"".join(ours.token_bytes[i] for i in ids).decode() == "Zürich 😀"


def test_student_of_a_folder_teacher_loads_and_generates(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "teacher")
    teacher = load_model("teacher", model_dir=folder)
    config = StudentConfig(window=8, sinks=2)
    params = tmp_path / "student.safetensors"
    save_student(params, build_student(teacher.model, config), config, teacher.fingerprint)
    student = load_model("student", model_dir=folder, student_path=params)
    prompt = student.tokenizer.encode(student.tokenizer.render_chat([{"role": "user", "content": "hi"}]))
    state = student.new_state()
    result = student.generate(prompt, state, SamplingConfig(max_new_tokens=20))
    assert state.num_tokens == len(prompt) + len(result.token_ids) > 8 + 2  # past the window: linear part used
    other = save_folder(tmp_path / "other")
    with pytest.raises(ValueError, match="another teacher"):
        load_model("student", model_dir=other, student_path=params)


def rewrite_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def test_unsupported_or_broken_folders_get_clear_errors(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model("teacher", model_dir=tmp_path)
    with pytest.raises(ValueError, match="not both"):
        load_model("teacher", model_dir=folder, gguf_path=folder)

    rewrite_json(folder / "config.json", rope_parameters={"rope_type": "yarn", "factor": 8.0, "rope_theta": 5e5})
    with pytest.raises(ValueError, match="rotary"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5})
    with pytest.raises(ValueError, match="lacks 'low_freq_factor'"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                 attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", attention_bias=False, model_type="qwen2")
    with pytest.raises(ValueError, match="llama"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", model_type="llama", num_hidden_layers=3)
    with pytest.raises(ValueError, match="lacks"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", num_hidden_layers=1)
    with pytest.raises(ValueError, match="beyond"):
        read_hf_folder(folder)
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
    rewrite_json(folder / "config.json", num_hidden_layers=2, vocab_size=vocab_size + 1)
    with pytest.raises(ValueError, match="tokens but the model"):
        read_hf_folder(folder)
    rewrite_json(folder / "config.json", vocab_size=vocab_size)

    spec = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps({**spec, "decoder": {"type": "Metaspace", "replacement": "▁"}}))
    with pytest.raises(ValueError, match="byte-level BPE"):
        read_hf_folder(folder)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_hf_folder(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        read_hf_folder(folder)


def small_training_texts(folder: Path) -> Path:
    """The training sources' layout (prose, essays, verse) with a few kilobytes in each."""
    (folder / "text").mkdir(parents=True)
    (folder / "niah").mkdir()
    article = " = Heading = \n" + " ".join(TEXTS) * 20
    (folder / "text" / "wikitext2_valid.txt").write_text(article + "\n = " + article)
    (folder / "text" / "tinyshakespeare.txt").write_text("To be, or not to be: that is the question.\n" * 50)
    (folder / "niah" / "PaulGrahamEssays.json").write_text(json.dumps({"text": " ".join(TEXTS) * 40}))
    return folder


def test_convert_command_trains_and_exports_a_folder_teacher(tmp_path: Path, monkeypatch) -> None:
    folder = save_folder(tmp_path / "teacher")
    monkeypatch.setenv("RILLET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RILLET_SHARED_DATA", str(small_training_texts(tmp_path / "texts")))
    monkeypatch.setattr(data, "stdlib_sources", functools.partial(data.stdlib_sources, limit_bytes=40_000))
    out, runner = tmp_path / "out", CliRunner()
    common = ["--model-dir", str(folder), "--out", str(out), "--device", "cpu"]
    done = runner.invoke(cli, ["convert", *common, "--steps", "2", "--batch-size", "3", "--seq-len", "40"])
    assert done.exit_code == 0, done.output
    progress = json.loads((out / "transfer" / "progress.json").read_text())
    assert progress["step"] == 2 and progress["tokens"] == 2 * 3 * 40
    assert progress["config"]["batch_size"] == 3 and progress["config"]["seq_len"] == 40

    refused = runner.invoke(cli, ["convert", *common, "--stage", "export"])
    assert refused.exit_code == 2 and "--student-path" in refused.output
    target = tmp_path / "student.safetensors"
    assert runner.invoke(cli, ["convert", *common, "--stage", "export", "--student-path", str(target)]).exit_code == 0
    student = load_model("student", model_dir=folder, student_path=target)
    assert student.generate(student.tokenizer.encode("def"), None, SamplingConfig(max_new_tokens=3)).token_ids

    features = 2 * student.config.head_dim
    for bad, message in (([], "--feature-dim"), (["--feature-dim", str(features + 2)], "whole factor")):
        result = runner.invoke(cli, ["convert", *common, "--stage", "widen", *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    widened = runner.invoke(cli, ["convert", *common, "--stage", "widen", "--feature-dim", str(2 * features)])
    assert widened.exit_code == 0, widened.output
    assert json.loads((out / "transfer" / "progress.json").read_text())["config"]["student"]["window"] == 128
    resumed = runner.invoke(cli, ["convert", *common, "--steps", "3", "--batch-size", "1", "--seq-len", "40",
                                  "--window", "16,1:24"])
    assert resumed.exit_code == 0, resumed.output
    history = json.loads((out / "transfer" / "progress.json").read_text())["history"]
    (switch,) = [entry["changed"]["student"] for entry in history if "student" in entry.get("changed", {})]
    assert [switch[0]["window"], switch[1]["window"]] == [128, 16] and switch[1]["window_overrides"] == [[1, 24]]
    assert switch[0]["feature_dim"] == switch[1]["feature_dim"] == 2 * features
    assert runner.invoke(cli, ["convert", *common, "--stage", "export", "--student-path", str(target)]).exit_code == 0
    wide = load_model("student", model_dir=folder, student_path=target)
    assert wide.new_state().spec.feature_dim == 2 * features and wide.new_state().spec.layer_windows == (16, 24)
    assert wide.generate(wide.tokenizer.encode("def"), None, SamplingConfig(max_new_tokens=3)).token_ids
    heads = runner.invoke(cli, ["convert", *common, "--stage", "export", "--student-path", str(target),
                                "--window", "16,1:24/8"])
    assert heads.exit_code == 0, heads.output
    per_head = load_model("student", model_dir=folder, student_path=target)
    assert per_head.new_state().spec.layer_windows == (16, (24, 8))
    assert json.loads(target.with_suffix(".json").read_text())["window"] == "16,1:24/8"
    for name, value in wide.model.state_dict().items():  # the same parameters, read with other windows
        assert torch.equal(per_head.model.state_dict()[name], value), name

    for bad in (["--gguf", str(folder)], ["--device", "gpu"], ["--window", "16,2:24"], ["--window", "wide"]):
        result = runner.invoke(cli, ["convert", *common, *bad])
        assert result.exit_code == 2, result.output
