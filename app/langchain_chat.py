"""Rillet's backbone as a LangChain chat model, so chains and agents can use the local model.

Generation goes through the same queue as the web app (`app.chat.models.shared_registry`), so a chain
running beside the UI waits its turn instead of competing for the CPU. The model loads on first use;
constructing `ChatRillet` is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from app.chat import defaults
from app.chat.events import Piece, follow
from app.chat.generation import Answer, generation_steps

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def _configured_model() -> str:
    """The model the app is configured with (RILLET_MODEL, rillet.toml; "student" by default)."""
    from app.config import get_settings

    return get_settings().model


def to_chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the chat template's role/content dicts (text parts only)."""
    out = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else ROLES.get(message.type)
        if role is None:
            raise ValueError(f"ChatRillet has no tool calling, so it cannot read a {message.type!r} message. "
                             "Pass system, human and AI messages only.")
        out.append({"role": role, "content": message.text})
    return out


class ChatRillet(BaseChatModel):
    """Chat with Rillet's local model (`model="teacher"` or `"student"`; default: the configured one, which
    falls back to the teacher while the student is not trained).

    Example: `ChatRillet(model="teacher", max_tokens=64).invoke("What is a rillet?")`
    """

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field(default_factory=_configured_model, alias="model")
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None
    # repetition controls and min-p, as in the web app (backbone.generate.SamplingConfig says what each does)
    repetition_penalty: float = defaults.REPETITION_PENALTY
    presence_penalty: float = defaults.PRESENCE_PENALTY
    frequency_penalty: float = defaults.FREQUENCY_PENALTY
    penalty_window: int = defaults.PENALTY_WINDOW
    no_repeat_ngram_size: int = defaults.NO_REPEAT_NGRAM_SIZE
    min_p: float = defaults.MIN_P
    loop_stop: int = defaults.LOOP_STOP
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False

    @property
    def _llm_type(self) -> str:
        return "rillet"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "top_p": self.top_p, "seed": self.seed, **{name: getattr(self, name) for name in defaults.DECODING}}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="rillet", ls_model_type="chat",
                                 ls_model_name=kwargs.get("model", self.model_name),
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    def _run(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> Iterator[Piece | Answer]:
        """Queue the generation and yield its pieces as they come, then the final `Answer`."""
        from app.chat.models import shared_registry
        from backbone.generate import SamplingConfig

        registry = shared_registry()
        model = registry.get(kwargs.get("model", self.model_name)).model
        tokenizer = model.tokenizer
        prompt = tokenizer.encode(tokenizer.render_chat(to_chat_messages(messages), add_generation_prompt=True))
        sampling = SamplingConfig(max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                                  temperature=kwargs.get("temperature", self.temperature),
                                  top_p=kwargs.get("top_p", self.top_p), seed=kwargs.get("seed", self.seed),
                                  **{name: kwargs.get(name, getattr(self, name)) for name in defaults.DECODING})
        stops = stop if stop is not None else self.stop
        ticket = registry.scheduler.submit(
            lambda t: generation_steps(model, prompt, model.new_state(), sampling, t, stops))
        try:
            for turn in follow(ticket):
                if turn.delta:
                    yield Piece(turn.delta)
                elif turn.stage == "finished":
                    yield turn.result
                elif turn.stage == "failed":
                    raise turn.error  # as it was raised: a UserError's advice, or a bug for the caller to see
                elif turn.stage == "cancelled":
                    raise RuntimeError("The model queue shut down before this generation started.")
        finally:
            ticket.cancel()  # the caller stopped reading: free the model for the next one

    @staticmethod
    def _usage(answer: Answer) -> UsageMetadata:
        return UsageMetadata(input_tokens=answer.prompt_tokens, output_tokens=answer.generated_tokens,
                             total_tokens=answer.prompt_tokens + answer.generated_tokens)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        answer = [event for event in self._run(messages, stop, **kwargs) if isinstance(event, Answer)][-1]
        message = AIMessage(content=answer.text, usage_metadata=self._usage(answer),
                            response_metadata={"model_name": self.model_name, "stop_reason": answer.stop_reason})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for event in self._run(messages, stop, **kwargs):
            if isinstance(event, Piece):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=event.text))
                if run_manager:
                    run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk
            else:
                yield ChatGenerationChunk(message=AIMessageChunk(
                    content="", usage_metadata=self._usage(event), chunk_position="last",
                    response_metadata={"model_name": self.model_name, "stop_reason": event.stop_reason}))
