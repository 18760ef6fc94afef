"""The OpenAI-compatible API (/v1) of a real server (the teacher, SQLite, FAISS), driven by the official
`openai` client, LangChain's `ChatOpenAI` and plain HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from app.chat.events import follow
from app.chat.prompt import DEFAULT_SYSTEM_PROMPT
from app.engine import TurnOptions
from tests.ui.conftest import Server

QUESTION = "Which port does the Kettle web service listen on?"
PATIENT = 300.0  # seconds: answers queue behind each other on a busy 2-core machine


@pytest.fixture(scope="module")
def kettle(server: Server) -> str:
    server.engine.index_folder(str(server.folders / "kettle"), "kettle-openai")
    return "kettle-openai"


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}v1", api_key="unused-without-accounts", timeout=PATIENT,
                         max_retries=0)


def tokens(server: Server, text: str) -> int:
    return len(server.engine.served("teacher").model.tokenizer.encode(text))


def fresh_prompt_tokens(server: Server, question: str) -> int:
    """What a one-message conversation without passages reads: Rillet's system prompt, then the question."""
    tokenizer = server.engine.served("teacher").model.tokenizer
    return (len(tokenizer.encode(tokenizer.render_turn("system", DEFAULT_SYSTEM_PROMPT)))
            + len(tokenizer.encode(tokenizer.render_turn("user", question) + tokenizer.assistant_prefix)))


def test_models_lists_both_chat_models_and_the_embedder(client: openai.OpenAI, server: Server) -> None:
    names = [m.id for m in client.models.list()]
    assert names[:2] == ["teacher", "student"] and server.engine.retrieval.embedder.name in names
    assert client.models.retrieve("student").owned_by == "rillet"


@pytest.mark.slow
def test_the_openai_client_streams_an_answer_with_citations(client: openai.OpenAI, kettle: str) -> None:
    ask: dict[str, Any] = {"model": "teacher", "max_tokens": 16, "messages": [{"role": "user", "content": QUESTION}],
                           "extra_body": {"rillet": {"collection": kettle}}}
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    streamed = "".join(pieces)
    assert len(pieces) >= 3 and "8431" in streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    citations = finish[0].model_extra["rillet"]["citations"]
    assert citations[0]["path"] == "docs/deploy.md" and "8431" in citations[0]["text"]
    usage = chunks[-1].usage
    assert not chunks[-1].choices and 1 <= usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    whole = client.chat.completions.create(**ask)  # greedy: the same answer, whole
    assert streamed.startswith(whole.choices[0].message.content.strip())
    assert whole.usage.completion_tokens == usage.completion_tokens
    assert whole.usage.prompt_tokens == usage.prompt_tokens
    assert whole.model_extra["rillet"]["citations"] == citations and whole.model_extra["rillet"]["session_id"] is None


@pytest.mark.slow
def test_usage_stop_seed_and_length_mean_what_openai_says(client: openai.OpenAI, server: Server) -> None:
    question = "Name three colours."
    messages = [{"role": "user", "content": question}]
    free = client.chat.completions.create(model="teacher", messages=messages, max_tokens=12)
    text = free.choices[0].message.content
    assert free.usage.prompt_tokens == fresh_prompt_tokens(server, question)
    assert free.choices[0].finish_reason == ("length" if free.usage.completion_tokens == 12 else "stop")

    words = text.split()
    assert len(words) >= 3, text
    stop = f" {words[2]}"
    cut = client.chat.completions.create(model="teacher", messages=messages, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"

    sampled = [client.chat.completions.create(model="teacher", messages=messages, max_tokens=8, temperature=1.2,
                                              top_p=0.95, seed=11).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]  # the same seed, the same answer


@pytest.mark.slow
def test_langchain_chat_openai_streams_and_invokes(server: Server) -> None:
    chat = ChatOpenAI(base_url=f"{server.url}v1", api_key="unused", model="teacher", max_tokens=12, temperature=0,
                      timeout=PATIENT, max_retries=0, stream_usage=True)
    messages = [SystemMessage("You answer in one short sentence."), HumanMessage("What colour is the sky?")]
    chunks = list(chat.stream(messages))
    text = "".join(c.text for c in chunks)
    assert len([c for c in chunks if c.text]) >= 3 and text.strip()
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and 1 <= usage[-1]["output_tokens"] <= 12
    answer = chat.invoke(messages)
    assert isinstance(answer, AIMessage) and text.startswith(answer.text.strip())
    assert answer.usage_metadata["output_tokens"] == usage[-1]["output_tokens"]


@pytest.fixture
def fed(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of tokens of each call that reads tokens into a state (prompt, commit, rebuild)."""
    model = server.engine.served("teacher").model
    calls: list[int] = []
    prefill = model.prefill

    def counting(ids: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(ids))
        return prefill(ids, state, *args, **kwargs)

    monkeypatch.setattr(model, "prefill", counting)
    yield calls


@pytest.mark.slow
def test_a_continued_session_reads_only_the_new_message(client: openai.OpenAI, server: Server,
                                                        fed: list[int]) -> None:
    """The page's session, continued from the API: the earlier turn comes from the saved state, whatever the
    request repeats of it, and the turn is stored where the page shows it."""
    from ui.app import Page

    engine, tokenizer = server.engine, server.engine.served("teacher").model.tokenizer
    session = engine.create_session("Through the API")
    page_turn = engine.ask(session.id, "My favourite tea is oolong.", TurnOptions(max_new_tokens=12))
    assert [t.stage for t in follow(page_turn)][-1] == "finished"
    fed.clear()
    resent = [{"role": "user", "content": "My favourite tea is oolong. " + "Unread words. " * 400},
              {"role": "assistant", "content": "(whatever the client kept)"},
              {"role": "user", "content": "Which tea do I like?"}]
    answer = client.chat.completions.create(model="teacher", messages=resent, max_tokens=10,
                                            extra_body={"rillet": {"session_id": session.id}})
    assert answer.model_extra["rillet"]["session_id"] == session.id

    stored = engine.messages(session.id)
    assert [m.role for m in stored if m.role != "system"] == ["user", "assistant"] * 2
    reply = stored[-1].text
    assert reply == answer.choices[0].message.content
    prompt = len(tokenizer.encode(tokenizer.render_turn("user", "Which tea do I like?") + tokenizer.assistant_prefix))
    committed = (len(tokenizer.encode(tokenizer.render_turn("user", "Which tea do I like?")))
                 + len(tokenizer.encode(tokenizer.render_turn("assistant", reply))))
    assert answer.usage.prompt_tokens == prompt
    assert sum(fed) == prompt + committed  # the question, then the turn into the saved state: nothing else
    assert tokens(server, resent[0]["content"]) > 5 * sum(fed)

    shown = Page(engine).open_session(session.id, "teacher")
    assert [m["content"] for m in shown.chat if m["role"] == "user"] == ["My favourite tea is oolong.",
                                                                          "Which tea do I like?"]


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_answer(client: openai.OpenAI, server: Server) -> None:
    """The turn is cancelled, not written to the end for nobody; what was written is kept, marked stopped."""
    import time

    from app.engine import STOPPED_NOTE

    session = server.engine.create_session("Walks away")
    stream = client.chat.completions.create(
        model="teacher", stream=True, max_tokens=400, temperature=0.8, seed=3,
        messages=[{"role": "user", "content": "Write a long story about a kettle."}],
        extra_body={"rillet": {"session_id": session.id}})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    for _ in range(600):
        messages = server.engine.messages(session.id)
        if len(messages) == 2:
            break
        time.sleep(0.5)
    answer = server.engine.messages(session.id)[-1]
    assert answer.role == "assistant" and answer.text.endswith(STOPPED_NOTE)
    assert len(server.engine.served("teacher").model.tokenizer.encode(answer.text)) < 400


def test_errors_come_in_openai_shape_with_their_status(client: openai.OpenAI, server: Server) -> None:
    hello = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=hello)
    assert unknown.value.code == "model_not_found" and "teacher" in unknown.value.message
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="teacher", messages=hello,
                                       extra_body={"rillet": {"session_id": 999_999}})
    for bad, said in [({"messages": []}, "messages"), ({"messages": hello, "n": 2}, "one answer"),
                      ({"messages": hello, "temperature": 5}, "temperature"),
                      ({"messages": [{"role": "user", "content": " "}]}, "empty"),
                      ({"messages": [{"role": "assistant", "content": "Hi"}]}, "last message"),
                      ({"messages": [{"role": "tool", "content": "1"}, *hello]}, "tool calling"),
                      ({"messages": hello, "stream": True, "max_tokens": 100_000}, "4096")]:
        with pytest.raises(openai.BadRequestError, match=said) as refused:
            client.chat.completions.create(model="teacher", **bad)
        assert refused.value.status_code == 400 and refused.value.body["type"] == "invalid_request_error"

    with httpx.Client(base_url=f"{server.url}v1", timeout=60) as http:
        broken = http.post("/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and set(broken.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get("/nothing-here").json()["error"]["code"] == "unknown_url"
        assert http.get("/chat/completions").status_code == 405


def test_embeddings_are_the_retrieval_embedder_s(client: openai.OpenAI, server: Server) -> None:
    embedder = server.engine.retrieval.embedder
    texts = ["The kettle listens on port 8431.", "Green tea steeps for two minutes."]
    answer = client.embeddings.create(model=embedder.name, input=texts)  # the client asks for base64
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert vectors.shape == (2, embedder.dim)
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)
    assert answer.usage.prompt_tokens == sum(embedder.count_tokens(texts))

    with httpx.Client(base_url=f"{server.url}v1", timeout=60) as http:
        plain = http.post("/embeddings", json={"model": embedder.name, "input": texts[0], "encoding_format": "float"})
        np.testing.assert_allclose(plain.json()["data"][0]["embedding"], vectors[0], atol=1e-5)
        packed = http.post("/embeddings", json={"model": embedder.name, "input": texts[0],
                                                "encoding_format": "base64"}).json()["data"][0]["embedding"]
        assert np.frombuffer(base64.b64decode(packed), dtype="<f4").tolist() == pytest.approx(vectors[0].tolist(),
                                                                                              abs=1e-5)
        refused = http.post("/embeddings", json={"model": embedder.name, "input": [[1, 2, 3]]})
        assert refused.status_code == 400 and "send the text" in json.loads(refused.text)["error"]["message"]
    with pytest.raises(openai.NotFoundError, match=embedder.name):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_with_a_credential_the_api_wants_the_password_as_its_key(server: Server) -> None:
    from tests.ui.conftest import free_port
    from ui.server import launch

    port = free_port()
    demo = launch(server.engine, "127.0.0.1", port, auth="ada:s3cret", block=False)
    try:
        def models(key: str | None) -> Any:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http:
                return http.get("/models", headers={"Authorization": f"Bearer {key}"} if key else {})

        for key, code in ((None, "missing_api_key"), ("wrong", "invalid_api_key")):
            refused = models(key)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == code
            assert refused.json()["error"]["type"] == "authentication_error"
        assert models("s3cret").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="guess", max_retries=0).models.list()
    finally:
        demo.close()
