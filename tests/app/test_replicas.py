"""Two `rillet serve` processes on two ports, each with its own data directory, on one PostgreSQL database:
what one replica indexes or answers, the other searches and continues, with nothing stale and nothing lost.

Both start together on an empty database, so they also race to create the schema (`app.database` makes
them take turns). The model is the real teacher; answers are kept short."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.app.conftest import FIXTURE_REPO
from tests.pg import temporary_database
from tests.ui.conftest import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600  # two model loads at once on a busy 2-core machine
PATIENT = {"timeout": 120}
SHORT = {"max_new_tokens": 8, "top_k": 3}


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    client: Client | None = None

    def call(self, api_name: str, **kwargs: Any) -> Any:
        assert self.client is not None
        return self.client.predict(api_name=api_name, **kwargs)

    def ask(self, session_id: int, message: str) -> dict[str, Any]:
        assert self.client is not None
        return list(self.client.submit(session_id=session_id, message=message, api_name="/ask", **SHORT))[-1]


@dataclass
class Pair:
    a: Replica
    b: Replica
    folder: Path  # a copy of the fixture repository, inside both replicas' allowed roots


def start(name: str, base: Path, database_url: str, allowed: Path) -> Replica:
    data = base / name
    data.mkdir()
    port = free_port()
    env = {**os.environ, "RILLET_DATA_DIR": str(data), "RILLET_DATABASE_URL": database_url,
           "RILLET_MODEL": "teacher", "RILLET_PRECISION": "fp32", "RILLET_DEVICE": "cpu",
           "RILLET_ALLOWED_ROOTS": json.dumps([str(allowed)])}
    env.pop("RILLET_CONFIG", None)
    log = data / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port",
                                    str(port)], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Replica(name, process, f"http://127.0.0.1:{port}/", log)


def wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(f"replica {replica.name} exited ({replica.process.returncode}):\n"
                        f"{replica.log.read_text()[-3000:]}")
        try:
            if httpx.get(replica.url, timeout=5).status_code == 200:
                replica.client = Client(replica.url, verbose=False, httpx_kwargs=PATIENT)
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"replica {replica.name} did not answer within {START_TIMEOUT_S} s:\n{replica.log.read_text()[-3000:]}")


def stop(replica: Replica) -> None:
    replica.process.terminate()
    try:
        replica.process.wait(30)
    except subprocess.TimeoutExpired:
        replica.process.kill()
        replica.process.wait()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("replicas")
    allowed = base / "folders"
    shutil.copytree(FIXTURE_REPO, allowed / "kettle")
    with temporary_database("rillet_replicas") as url:
        replicas = [start(name, base, url, allowed) for name in ("a", "b")]
        try:
            for replica in replicas:
                wait_ready(replica)
            yield Pair(*replicas, allowed / "kettle")
        finally:
            for replica in replicas:
                stop(replica)


def files(replica: Replica, query: str, k: int = 5) -> list[str]:
    return [hit["file"] for hit in replica.call("/search", collection="kettle", query=query, k=k)]


def index_on_a(pair: Pair) -> None:
    report = pair.a.call("/index_folder", folder=str(pair.folder), name="kettle")
    assert report["failed"] == 0


def test_what_a_indexes_b_searches_after_each_change(pair: Pair) -> None:
    index_on_a(pair)
    assert files(pair.b, "Which port does the web service listen on?")[0] == "docs/deploy.md"  # loaded on B

    (pair.folder / "docs" / "tides.md").write_text(
        "# Tides\n\nThe moon's pull raises the sea twice a day; the shop closes at high tide.\n")
    index_on_a(pair)
    assert files(pair.b, "why does the sea rise twice a day")[0] == "docs/tides.md"

    deploy = pair.folder / "docs" / "deploy.md"
    deploy.write_text(deploy.read_text().replace("8431", "9172"))
    index_on_a(pair)
    hits = pair.b.call("/search", collection="kettle", query="Which port does the web service listen on?", k=10)
    assert hits[0]["file"] == "docs/deploy.md" and "9172" in hits[0]["text"]
    assert not any("8431" in hit["text"] for hit in hits)

    (pair.folder / "docs" / "tides.md").unlink()
    index_on_a(pair)
    assert "docs/tides.md" not in files(pair.b, "why does the sea rise twice a day", k=10)


def test_turns_alternate_between_replicas_each_from_the_latest_state(pair: Pair) -> None:
    """Each replica caches the states it built; a turn on the other makes that cache stale, and the next
    turn must start from the stored snapshot (had it used the stale cache, its write would have met the
    version check and come back with the "changed elsewhere" notice)."""
    index_on_a(pair)
    session = pair.a.call("/create_session", title="Both replicas", collection="kettle")
    questions = ["Which port does Kettle listen on?", "And which variable holds its token?",
                 "When are backups made?", "Where do the backups go?"]
    previous_tokens = pair.a.call("/load_session", session_id=session["id"])["state_tokens"]  # the system prompt
    for question, replica in zip(questions, [pair.a, pair.b, pair.a, pair.b], strict=True):
        loaded = replica.call("/load_session", session_id=session["id"])
        assert loaded["state_tokens"] == previous_tokens and loaded["notice"] is None, replica.name
        final = replica.ask(session["id"], question)
        assert final["done"] and final["notice"] is None, (replica.name, final["notice"])
        assert final["state_tokens"] > previous_tokens
        previous_tokens = final["state_tokens"]
    messages = pair.b.call("/load_session", session_id=session["id"])["messages"]
    assert [m["text"] for m in messages if m["role"] == "user"] == questions
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(questions)


def test_concurrent_turns_on_both_replicas_lose_nothing(pair: Pair) -> None:
    session = pair.a.call("/create_session", title="At once", collection="")
    asked = {"a": "Name a green tea.", "b": "Name a black tea."}
    with ThreadPoolExecutor(2) as pool:
        futures = {r.name: pool.submit(r.ask, session["id"], asked[r.name]) for r in (pair.a, pair.b)}
        answers = {name: future.result() for name, future in futures.items()}
    messages = pair.a.call("/load_session", session_id=session["id"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    stored = {messages[i]["text"]: messages[i + 1]["text"] for i in (0, 2)}
    assert stored == {asked[name]: answers[name]["text"] for name in asked}  # each answer after its question
    assert pair.b.call("/load_session", session_id=session["id"])["state_tokens"] == max(
        a["state_tokens"] for a in answers.values())
