"""A real server with two user accounts (the teacher, SQLite): each sees only their own sessions, through
the page's handlers, the Gradio API and the OpenAI-compatible API; API keys; login throttling; collections
shared with an owner; the bind rule."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import openai
import pytest
from gradio.context import LocalContext
from gradio_client import Client
from gradio_client.exceptions import AppError
from typer.testing import CliRunner

from app.chat.models import ModelRegistry
from app.cli import cli
from app.config import Settings
from app.engine import ChatEngine
from memory.db import make_engine
from memory.users import Accounts
from tests.ui.conftest import FIXTURE_REPO, free_port
from tests.ui.test_browser import browser  # noqa: F401  (the Chromium fixture)
from ui.auth import FREE_ATTEMPTS, MAX_DELAY_S, LoginThrottle, account_throttles

PATIENT = {"timeout": 120}
PASSWORDS = {"ada": "ada's password", "bob": "bob's password"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Shared:
    url: str
    engine: ChatEngine
    accounts: Accounts
    keys: dict[str, str]
    clock: Clock
    throttle: LoginThrottle
    folders: Path

    def client(self, name: str) -> Client:
        return Client(self.url, auth=(name, PASSWORDS[name]), verbose=False, httpx_kwargs=PATIENT)

    def openai(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}v1", api_key=self.keys[name], timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, teacher: Any) -> Iterator[Shared]:
    from ui.server import launch

    base = tmp_path_factory.mktemp("accounts")
    folders = base / "folders"
    shutil.copytree(FIXTURE_REPO, folders / "kettle")
    settings = Settings(data_dir=base / "data", model="teacher", allowed_roots=[folders])
    registry = ModelRegistry(settings)
    registry.adopt("teacher", teacher)
    engine = ChatEngine(settings, registry=registry)
    accounts = Accounts(make_engine(settings.db_url))
    for name, password in PASSWORDS.items():
        accounts.add(name, password)
    keys = {name: accounts.create_key(name) for name in PASSWORDS}
    clock = Clock()
    throttle, key_throttle = account_throttles(accounts, clock)
    port = free_port()
    demo = launch(engine, "127.0.0.1", port, block=False, accounts=accounts, throttle=throttle,
                  key_throttle=key_throttle)
    yield Shared(f"http://127.0.0.1:{port}/", engine, accounts, keys, clock, throttle, folders)
    demo.close()
    engine.close()
    registry.close()


@pytest.fixture(scope="module")
def adas(shared: Shared) -> int:
    """A session of ada's with one turn, made through the Gradio API."""
    ada = shared.client("ada")
    session = ada.predict(title="Ada's secret plans", collection="", api_name="/create_session")
    final = list(ada.submit(session_id=session["id"], message="Remember the word marmalade.", max_new_tokens=6,
                            api_name="/ask"))[-1]
    assert final["done"]
    return session["id"]


class As:
    """The page's handlers as a logged-in user's request runs them (Gradio sets the request this way)."""

    def __init__(self, shared: Shared, name: str) -> None:
        from ui.app import Page
        from ui.per_user import RequestUserEngine

        self.page = Page(RequestUserEngine(shared.engine, shared.accounts))
        self.name = name

    def __getattr__(self, handler: str) -> Any:
        method = getattr(self.page, handler)

        def call(*args: Any) -> Any:
            token = LocalContext.request.set(gr.Request(username=self.name))
            try:
                result = method(*args)
                return list(result) if hasattr(result, "__next__") else result
            finally:
                LocalContext.request.reset(token)

        return call


def transcript(shared: Shared, session_id: int) -> list[str]:
    return [m.text for m in shared.engine.store.messages(session_id) if m.role != "system"]


@pytest.mark.slow
def test_a_user_lists_only_their_own_sessions(shared: Shared, adas: int) -> None:
    bobs = shared.client("bob").predict(title="Bob's", collection="", api_name="/create_session")["id"]
    assert [s["id"] for s in shared.client("ada").predict(api_name="/list_sessions")] == [adas]
    assert [s["id"] for s in shared.client("bob").predict(api_name="/list_sessions")] == [bobs]
    page = As(shared, "bob").on_load(None, "teacher")
    assert [value for _, value in page.sessions["choices"]] == [bobs]
    assert [value for _, value in As(shared, "ada").on_load(None, "teacher").sessions["choices"]] == [adas]


@pytest.mark.slow
def test_a_user_cannot_read_another_users_session(shared: Shared, adas: int) -> None:
    with pytest.raises(AppError, match="does not exist"):
        shared.client("bob").predict(session_id=adas, api_name="/load_session")
    opened = As(shared, "bob").open_session(adas, "teacher")
    assert opened.chat == [] and "does not exist" in opened.notice
    reopened = As(shared, "bob").on_load(adas, "teacher")  # the id a browser remembered
    assert reopened.session is None and reopened.chat == []
    assert "marmalade" in str(As(shared, "ada").open_session(adas, "teacher").chat)


@pytest.mark.slow
def test_a_user_cannot_export_another_users_session(shared: Shared, adas: int) -> None:
    exports = shared.engine.settings.data_dir / "exports"
    before = set(exports.rglob("*"))
    file, notice = As(shared, "bob").export(adas, "Markdown")
    assert "does not exist" in notice and set(exports.rglob("*")) == before
    file, notice = As(shared, "ada").export(adas, "Markdown")
    path = Path(file["value"])
    assert "marmalade" in path.read_text() and path.parent.parent == exports
    assert len(path.parent.name) == 32  # a folder of its own whose name nobody can guess


@pytest.mark.slow
def test_a_user_cannot_continue_another_users_session(shared: Shared, adas: int) -> None:
    before = transcript(shared, adas)
    with pytest.raises(AppError, match="does not exist"):
        shared.client("bob").predict(session_id=adas, message="What word?", max_new_tokens=4, api_name="/ask")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        shared.openai("bob").chat.completions.create(
            model="teacher", max_tokens=4, messages=[{"role": "user", "content": "What word?"}],
            extra_body={"rillet": {"session_id": adas}})
    refused = As(shared, "bob").respond("What word?", adas, "", [], 0, 0.0, 4, "teacher")[-1]
    assert "does not exist" in refused.notice
    assert transcript(shared, adas) == before

    answer = shared.openai("ada").chat.completions.create(
        model="teacher", max_tokens=4, messages=[{"role": "user", "content": "What word?"}],
        extra_body={"rillet": {"session_id": adas}})
    assert transcript(shared, adas) == [*before, "What word?", answer.choices[0].message.content]


@pytest.mark.slow
def test_a_user_cannot_delete_another_users_session(shared: Shared, adas: int) -> None:
    with pytest.raises(AppError, match="does not exist"):
        shared.client("bob").predict(session_id=adas, api_name="/delete_session")
    As(shared, "bob").delete(adas, "teacher")
    assert shared.engine.store.get(adas).owner_id == shared.accounts.get("ada").id  # still there
    doomed = shared.client("ada").predict(title="Short-lived", collection="", api_name="/create_session")["id"]
    shared.client("ada").predict(session_id=doomed, api_name="/delete_session")
    assert doomed not in [s.id for s in shared.engine.store.list_sessions()]


def test_the_api_wants_a_users_key(shared: Shared) -> None:
    with httpx.Client(base_url=f"{shared.url}v1", timeout=60) as http:
        for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer rk-guess"}, "invalid_api_key"),
                              ({"Authorization": f"Bearer {PASSWORDS['ada']}"}, "invalid_api_key")):
            refused = http.get("/models", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["type"] == "authentication_error"
            assert refused.json()["error"]["code"] == code
    assert [m.id for m in shared.openai("bob").models.list()][:2] == ["teacher", "student"]
    extra = shared.accounts.create_key("bob")
    assert openai.OpenAI(base_url=f"{shared.url}v1", api_key=extra, max_retries=0).models.list()
    shared.accounts.revoke_keys("bob", extra[:10])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{shared.url}v1", api_key=extra, max_retries=0).models.list()


def test_repeated_failed_logins_are_slowed(shared: Shared) -> None:
    with httpx.Client(timeout=60) as http:
        def login(password: str) -> int:
            return http.post(f"{shared.url}login", data={"username": "bob", "password": password}).status_code

        assert [login(f"wrong {i}") for i in range(FREE_ATTEMPTS)] == [400] * FREE_ATTEMPTS
        assert login(PASSWORDS["bob"]) == 400  # the right password, too early: not even checked
        assert shared.throttle.seconds_to_wait("127.0.0.1", "bob") == pytest.approx(1.0)
        shared.clock.now += 1.0
        assert login(PASSWORDS["bob"]) == 200


def test_repeated_wrong_api_keys_are_slowed(shared: Shared) -> None:
    with httpx.Client(base_url=f"{shared.url}v1", timeout=60) as http:
        def status(key: str) -> int:
            return http.get("/models", headers={"Authorization": f"Bearer {key}"}).status_code

        assert [status(f"rk-guess-{i}") for i in range(FREE_ATTEMPTS)] == [401] * FREE_ATTEMPTS
        assert status(shared.keys["ada"]) == 401  # the right key, too early: not even checked
        shared.clock.now += MAX_DELAY_S
        assert status(shared.keys["ada"]) == 200


@pytest.mark.slow
def test_collections_are_shared_and_only_their_owner_deletes_them(shared: Shared) -> None:
    from app.user_engine import NotYourCollection, UserEngine

    ada = UserEngine(shared.engine, shared.accounts.get("ada"))
    bob = UserEngine(shared.engine, shared.accounts.get("bob"))
    ada.index_folder(str(shared.folders / "kettle"), "kettle-shared")
    assert ada.collection_owner("kettle-shared") == ada.user.id
    assert "kettle-shared" in [c.name for c in bob.list_collections()]
    bobs = bob.create_session("Bob reads Ada's collection", "kettle-shared")
    assert bobs.collection == "kettle-shared"
    with pytest.raises(NotYourCollection, match="belongs to another user"):
        bob.delete_collection("kettle-shared")
    ada.delete_collection("kettle-shared")
    assert "kettle-shared" not in [c.name for c in bob.list_collections()]


def test_a_network_address_without_users_is_refused_with_the_fix(tmp_path: Path) -> None:
    from ui.server import OpenBindRefused, check_bind

    check_bind("127.0.0.1", users=False, credential=False)
    check_bind("localhost", users=False, credential=False)
    check_bind("0.0.0.0", users=True, credential=False)
    with pytest.raises(OpenBindRefused, match="rillet users add NAME"):
        check_bind("0.0.0.0", users=False, credential=False)
    env = {"RILLET_DATA_DIR": str(tmp_path / "data"), "RILLET_CONFIG": str(tmp_path / "none.toml")}
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", str(free_port())], env=env)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Refusing to serve on 0.0.0.0" in said and "rillet users add NAME" in said


def test_users_are_managed_from_the_command_line(tmp_path: Path) -> None:
    env = {"RILLET_DATA_DIR": str(tmp_path / "data"), "RILLET_CONFIG": str(tmp_path / "none.toml")}
    secret = tmp_path / "password"
    secret.write_text("a long password\n")
    runner = CliRunner()

    def rillet(*args: str) -> Any:
        return runner.invoke(cli, list(args), env=env)

    added = rillet("users", "add", "ada", "--password-file", str(secret))
    assert added.exit_code == 0 and "Added user ada" in added.output and "first user" in added.output
    assert rillet("users", "add", "ada", "--password-file", str(secret)).exit_code == 2
    key = rillet("users", "key", "ada").output.strip().splitlines()[-1]
    accounts = Accounts(make_engine(f"sqlite:///{tmp_path / 'data' / 'rillet.db'}"))
    assert accounts.user_for_key(key).name == "ada"
    assert accounts.check_password("ada", "a long password") is not None
    listed = rillet("users", "list").output
    assert "ada" in listed
    from memory.recall import recall_paths
    from memory.sessions import SessionStore

    store = SessionStore(make_engine(f"sqlite:///{tmp_path / 'data' / 'rillet.db'}"))
    session = store.create("Ada's", owner_id=accounts.get("ada").id)
    recall = recall_paths(tmp_path / "data" / "recall", session.id)
    for path in recall:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert rillet("users", "remove", "nobody", "--yes").exit_code == 2
    removed = rillet("users", "remove", "ada", "--yes")
    assert removed.exit_code == 0 and "with 1 session." in removed.output
    assert not accounts.any() and accounts.user_for_key(key) is None
    assert store.list_sessions() == [] and not any(path.exists() for path in recall)


@pytest.mark.slow
def test_the_user_engine_denies_what_it_does_not_know(shared: Shared, adas: int) -> None:
    """Any engine method whose first parameter is a session id is checked; anything else unknown is refused."""
    from app.user_engine import UserEngine
    from memory.errors import SessionNotFoundError

    bob = UserEngine(shared.engine, shared.accounts.get("bob"))
    for name in ("close", "_turn", "_load", "store"):
        with pytest.raises(AttributeError, match="not available"):
            getattr(bob, name)
    for attempt in (lambda: bob.messages(adas), lambda: bob.rename_session(adas, "Bob's now"),
                    lambda: bob.set_collection(adas, None), lambda: bob.cancel(adas), lambda: bob.session(adas)):
        with pytest.raises(SessionNotFoundError):
            attempt()
    assert shared.engine.store.get(adas).title == "Ada's secret plans"


@pytest.mark.slow
def test_in_a_real_browser_each_user_sees_only_their_sessions(shared: Shared, adas: int,
                                                              browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    bobs = shared.client("bob").predict(title="Bob's own notes", collection="", api_name="/create_session")["id"]
    for name, mine, theirs in (("bob", "Bob's own notes", "Ada's secret plans"),
                               ("ada", "Ada's secret plans", "Bob's own notes")):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(shared.url)
        page.locator("input").nth(0).fill(name)
        page.locator("input[type=password]").fill(PASSWORDS[name])
        page.get_by_role("button", name=re.compile("log ?in", re.I)).click()
        sessions = page.locator("#rillet-sessions")
        expect(sessions).to_contain_text(mine, timeout=60_000)
        assert theirs not in sessions.inner_text()
        context.close()
    shared.client("bob").predict(session_id=bobs, api_name="/delete_session")
