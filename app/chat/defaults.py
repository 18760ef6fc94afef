"""What an answer uses unless the user chooses otherwise: one place for the web page's settings, the
options of `rillet chat`, the API's parameters and `app.engine.TurnOptions`.

Cheap to import (no torch): the command line reads it to show its defaults. The meaning and the valid
range of each decoding setting are in `backbone.generate.SamplingConfig`, which checks them.
"""

from __future__ import annotations

TOP_K = 4  # passages per question
MAX_NEW_TOKENS = 256
SOURCE_TOKENS = 1024  # passage budget of the prompt

TEMPERATURE = 0.0
TOP_P = 1.0
REPETITION_PENALTY = 1.0
PRESENCE_PENALTY = 0.0
FREQUENCY_PENALTY = 0.0
PENALTY_WINDOW = 64
NO_REPEAT_NGRAM_SIZE = 0
MIN_P = 0.0
LOOP_STOP = 0

# The repetition controls and min-p, in the order the page, the command line and the API list them.
DECODING = {
    "repetition_penalty": REPETITION_PENALTY,
    "presence_penalty": PRESENCE_PENALTY,
    "frequency_penalty": FREQUENCY_PENALTY,
    "penalty_window": PENALTY_WINDOW,
    "no_repeat_ngram_size": NO_REPEAT_NGRAM_SIZE,
    "min_p": MIN_P,
    "loop_stop": LOOP_STOP,
}


def sampling_fields() -> dict[str, float | int]:
    """Every decoding default but the answer length, as `SamplingConfig` keyword arguments."""
    return {"temperature": TEMPERATURE, "top_p": TOP_P, **DECODING}
