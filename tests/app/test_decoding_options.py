"""The repetition controls reach every front end under the same names, with one set of defaults, and are
checked in one place (backbone.generate.SamplingConfig)."""

from __future__ import annotations

import inspect

import pytest

from app.chat import defaults
from app.engine import TurnOptions, TurnRefused


def test_turn_options_carry_every_decoding_setting_with_the_shared_defaults() -> None:
    options = TurnOptions()
    sampling = options.sampling()
    for name, default in defaults.DECODING.items():
        assert getattr(options, name) == default == getattr(sampling, name)
    chosen = TurnOptions(repetition_penalty=1.3, no_repeat_ngram_size=4, loop_stop=12, min_p=0.1,
                         presence_penalty=0.5, frequency_penalty=0.25, penalty_window=32).sampling()
    assert (chosen.repetition_penalty, chosen.no_repeat_ngram_size, chosen.loop_stop, chosen.min_p,
            chosen.presence_penalty, chosen.frequency_penalty,
            chosen.penalty_window) == (1.3, 4, 12, 0.1, 0.5, 0.25, 32)


@pytest.mark.parametrize(("name", "value"), [("repetition_penalty", 0.0), ("no_repeat_ngram_size", -1),
                                             ("loop_stop", 1), ("min_p", 1.5), ("presence_penalty", 3.0)])
def test_a_bad_decoding_setting_refuses_the_turn_naming_it(name: str, value: object) -> None:
    with pytest.raises(TurnRefused, match=name):
        TurnOptions(**{name: value})


def test_the_command_line_and_the_api_use_the_same_names() -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    help_text = CliRunner().invoke(cli, ["chat", "--help"], terminal_width=200).output
    for name in defaults.DECODING:
        assert "--" + name.replace("_", "-") in help_text
    import ui.api

    source = inspect.getsource(ui.api.add_api)
    for name in defaults.DECODING:
        assert f"{name}: " in source  # a parameter of /ask


def test_the_langchain_model_takes_the_same_settings() -> None:
    from app.langchain_chat import ChatRillet

    params = ChatRillet(model="teacher", loop_stop=6, repetition_penalty=1.2)._identifying_params
    assert params["loop_stop"] == 6 and params["repetition_penalty"] == 1.2
    assert {name: params[name] for name in defaults.DECODING if name not in ("loop_stop", "repetition_penalty")} \
        == {name: value for name, value in defaults.DECODING.items() if name not in ("loop_stop", "repetition_penalty")}
