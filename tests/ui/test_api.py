"""The web app's API driven by gradio_client: index, create a session, stream an answer, reload, bad input."""

from __future__ import annotations

import itertools

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.ui.conftest import Server, free_port

# The page's API description takes seconds to build on a busy 2-core machine; httpx's default 5 s is too short.
PATIENT = {"timeout": 60}


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return Client(server.url, verbose=False, httpx_kwargs=PATIENT)


@pytest.mark.slow
def test_index_ask_stream_and_reload(server: Server, client: Client) -> None:
    report = client.predict(folder=str(server.folders / "kettle"), name="kettle-api", api_name="/index_folder")
    assert report["collection"] == "kettle-api" and report["files"] == 4 and report["failed"] == 0
    assert "kettle-api" in [c["name"] for c in client.predict(api_name="/list_collections")]

    session = client.predict(title="API chat", collection="kettle-api", api_name="/create_session")
    job = client.submit(session_id=session["id"], message="Which port does the Kettle web service listen on?",
                        max_new_tokens=16, api_name="/ask")
    updates = list(job)
    partial = [u["text"] for u in updates if not u["done"] and u["text"]]
    final = updates[-1]
    assert final["done"] and final["stop_reason"] in ("end_of_turn", "max_new_tokens")
    assert len(partial) >= 3 and all(b.startswith(a) for a, b in itertools.pairwise(partial))
    assert final["text"].startswith(partial[-1].strip()[:10]) and "8431" in final["text"]
    assert final["citations"][0]["file"] == "docs/deploy.md"
    assert 0 < final["first_token_s"] <= final["seconds"]

    reloaded = Client(server.url, verbose=False, httpx_kwargs=PATIENT)  # a new page load / another client
    assert session["id"] in [s["id"] for s in reloaded.predict(api_name="/list_sessions")]
    loaded = reloaded.predict(session_id=session["id"], api_name="/load_session")
    assert [m["role"] for m in loaded["messages"]] == ["user", "assistant"]
    assert loaded["messages"][1]["text"] == final["text"]
    assert loaded["messages"][1]["citations"][0]["citation"] == final["citations"][0]["citation"]
    assert loaded["state_tokens"] == final["state_tokens"] and loaded["notice"] is None


def test_bad_input_gets_a_clear_error_and_nothing_is_stored(server: Server, client: Client) -> None:
    session = client.predict(title="Bad input", collection="", api_name="/create_session")
    for message, expected in [("", "empty"), ("x" * 100_000, "100,000 characters")]:
        with pytest.raises(AppError, match=expected):
            client.predict(session_id=session["id"], message=message, api_name="/ask")
    with pytest.raises(AppError, match="outside the folders"):
        client.predict(folder="/etc", name="etc", api_name="/index_folder")
    with pytest.raises(AppError, match="outside the folders"):
        client.predict(folder=f"{server.folders}/kettle/../..", name="up", api_name="/index_folder")
    with pytest.raises(AppError, match="No collection named"):
        client.predict(title="x", collection="missing", api_name="/create_session")
    assert client.predict(session_id=session["id"], api_name="/load_session")["messages"] == []
    client.predict(session_id=session["id"], api_name="/delete_session")
    with pytest.raises(AppError, match="does not exist"):
        client.predict(session_id=session["id"], message="Still there?", api_name="/ask")


def test_auth_keeps_strangers_out(server: Server) -> None:
    from ui.server import launch, parse_auth

    assert parse_auth("ada:s3:cret") == ("ada", "s3:cret")
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)
    port = free_port()
    demo = launch(server.engine, "127.0.0.1", port, auth="ada:s3cret", block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):  # noqa: B017 (the client fails in its own way without login)
            Client(url, verbose=False, httpx_kwargs=PATIENT).predict(api_name="/list_sessions")
        with pytest.raises(Exception):  # noqa: B017
            Client(url, auth=("ada", "wrong"), verbose=False, httpx_kwargs=PATIENT)
        client = Client(url, auth=("ada", "s3cret"), verbose=False, httpx_kwargs=PATIENT)
        assert isinstance(client.predict(api_name="/list_sessions"), list)
    finally:
        demo.close()


@pytest.mark.slow
def test_a_first_run_can_index_rillets_own_documentation(server: Server) -> None:
    """The page offers this when no collection exists; it reads the Markdown (and Makefile, Dockerfile) of
    the repository, not the code or the test fixtures, with live progress."""
    from ui.app import Page

    updates = list(Page(server.engine).index_docs())
    progress, summary = [u[0] for u in updates[1:-1]], updates[-1][0]
    assert progress and all("files" in line for line in progress)
    assert summary.startswith("**Indexed `rillet-docs`**"), summary
    hits = server.engine.retrieval.search("rillet-docs", "how to run the tests", k=20)
    paths = {hit.path for hit in hits}
    assert "README.md" in paths and any(p.startswith("bench/results/") for p in paths)
    assert all(p.endswith(".md") or p in ("Makefile", "Dockerfile") for p in paths)
    assert not any(p.startswith("tests/") for p in paths)


@pytest.mark.slow
def test_the_page_keeps_a_refused_message_and_tells_a_second_tab(server: Server) -> None:
    """The page's send handler (outputs: message box, chat, session, sessions, status, notice, remembered)."""
    from ui.app import Page

    page = Page(server.engine)
    too_long = "x" * 100_000
    refused = list(page.respond(too_long, None, "", [], 0, 0.0, 8, "teacher"))[-1]
    assert refused[0] == too_long and "100,000 characters" in refused[5]  # the text stays in the box

    tab_a = list(page.respond("Hello from tab A", None, "", [], 0, 0.0, 8, "teacher"))
    session_id = tab_a[-1][2]
    assert tab_a[0][0] == "" and "another tab" not in tab_a[-1][5]
    tab_b = list(page.respond("Hello from tab B", session_id, "", [], 0, 0.0, 8, "teacher"))[-1]
    assert "another tab" in tab_b[5]
    assert [m["content"] for m in tab_b[1] if m["role"] == "user"] == ["Hello from tab A", "Hello from tab B"]


@pytest.mark.slow
def test_regenerate_choose_edit_undo_and_branch_through_the_api(server: Server, client: Client) -> None:
    session = client.predict(title="Controls", collection="", api_name="/create_session")
    sid = session["id"]
    first = list(client.submit(session_id=sid, message="Name a colour.", max_new_tokens=8, api_name="/ask"))[-1]
    again = list(client.submit(session_id=sid, max_new_tokens=8, api_name="/regenerate"))[-1]
    assert again["done"]
    assert again["first_token_s"] > 0 and (again["tokens_per_s"] is None or again["tokens_per_s"] > 0)
    loaded = client.predict(session_id=sid, api_name="/load_session")
    answer = loaded["messages"][1]
    assert answer["answers"] == [first["text"], again["text"]] and answer["chosen"] == 1
    assert answer["text"] == again["text"] and loaded["state_tokens"] == again["state_tokens"]

    chosen = client.predict(session_id=sid, answer=1, api_name="/choose_answer")
    assert chosen["messages"][1]["text"] == first["text"] and chosen["messages"][1]["chosen"] == 0
    assert chosen["state_tokens"] == first["state_tokens"]
    with pytest.raises(AppError, match="no answer 5"):
        client.predict(session_id=sid, answer=5, api_name="/choose_answer")

    edited = list(client.submit(session_id=sid, question=1, message="Name a fruit.", max_new_tokens=8,
                                api_name="/edit"))
    branch_id = edited[-1]["session_id"]
    assert edited[-1]["done"] and branch_id != sid
    branch = client.predict(session_id=branch_id, api_name="/load_session")
    assert (branch["parent_id"], branch["branch_point"]) == (sid, 0)
    assert [m["text"] for m in branch["messages"]] == ["Name a fruit.", edited[-1]["text"]]
    assert client.predict(session_id=sid, api_name="/load_session")["messages"] == chosen["messages"]  # unchanged
    with pytest.raises(AppError, match="no question 3"):
        client.predict(session_id=sid, question=3, message="?", api_name="/edit")

    copy = client.predict(session_id=sid, keep=2, api_name="/branch")
    assert copy["parent_id"] == sid and copy["messages"] == chosen["messages"]  # answers and choice included
    undone = client.predict(session_id=branch_id, api_name="/undo")
    assert undone["messages"] == [] and undone["state_tokens"] < branch["state_tokens"]
    with pytest.raises(AppError, match="no turn to undo"):
        client.predict(session_id=branch_id, api_name="/undo")
