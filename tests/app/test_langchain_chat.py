"""ChatRillet against LangChain's standard test suites (unit: all; integration: invoke, stream, batch)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from app.chat.models import shared_registry
from app.langchain_chat import ChatRillet, to_chat_messages


class TestChatRilletUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRillet]:
        return ChatRillet

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "teacher"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        params.pop("api_key")  # a local model has no API key
        return params

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"RILLET_MODEL": "student"}, {}, {"model_name": "student"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


@pytest.mark.slow
class TestChatRilletIntegration(ChatModelIntegrationTests):
    """The real teacher, short answers. Tool calling, structured output, JSON mode and non-text inputs are
    off: a 135M-parameter local model offers none of them."""

    @pytest.fixture(autouse=True)
    def _serve_the_loaded_teacher(self, teacher: Any) -> None:
        shared_registry().adopt("teacher", teacher)

    @property
    def chat_model_class(self) -> type[ChatRillet]:
        return ChatRillet

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "teacher", "max_tokens": 12}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False


@pytest.mark.slow
def test_stop_sequences_cut_the_answer_and_streaming_matches_invoke(teacher: Any) -> None:
    shared_registry().adopt("teacher", teacher)
    question = [HumanMessage("What is the capital of France? Answer in one sentence.")]
    full = ChatRillet(model="teacher", max_tokens=16).invoke(question)
    assert "Paris" in full.text
    chunks = list(ChatRillet(model="teacher", max_tokens=16).stream(question))
    assert "".join(c.text for c in chunks) == full.text
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and chunks[-1].chunk_position == "last"
    assert full.usage_metadata["output_tokens"] <= 16
    cut = ChatRillet(model="teacher", max_tokens=16, stop=["Paris"]).invoke(question)
    assert cut.text == full.text[: full.text.index("Paris")]
    assert cut.response_metadata["stop_reason"] == "stop_sequence"


def test_tool_messages_are_refused_with_a_reason() -> None:
    from langchain_core.messages import ToolMessage

    with pytest.raises(ValueError, match="no tool calling"):
        to_chat_messages([ToolMessage("42", tool_call_id="x")])
