"""`rillet chat` in the terminal: the engine with a collection, sessions that continue, clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.app.conftest import FIXTURE_REPO


@pytest.mark.slow
def test_chat_answers_from_a_collection_and_continues_a_session(teacher: Any, model_cache: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.chat.models import shared_registry

    shared_registry().adopt("teacher", teacher)
    monkeypatch.setenv("RILLET_DATA_DIR", str(model_cache.parent))  # the model cache is the fixture's
    monkeypatch.setenv("RILLET_DATABASE_URL", f"sqlite:///{tmp_path / 'chat.db'}")
    monkeypatch.setenv("RILLET_INDEX_DIR", str(tmp_path / "indexes"))
    runner = CliRunner()
    indexed = runner.invoke(cli, ["index", str(FIXTURE_REPO), "--collection", "kettle"])
    assert indexed.exit_code == 0, indexed.output

    first = runner.invoke(cli, ["chat", "--model", "teacher", "--collection", "kettle", "--max-new-tokens", "16"],
                          input="Which port does the Kettle web service listen on?\n\n")
    assert first.exit_code == 0, first.output
    assert "8431" in first.output and "sources: docs/deploy.md:1-" in first.output
    assert "rillet chat --session 1" in first.output

    again = runner.invoke(cli, ["chat", "--model", "teacher", "--session", "1"], input="\n")
    assert again.exit_code == 0, again.output
    assert "you> Which port does the Kettle web service listen on?" in again.output
    assert "collection kettle" in again.output

    missing = runner.invoke(cli, ["chat", "--model", "teacher", "--session", "999"], input="\n")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = runner.invoke(cli, ["chat", "--model", "teacher", "--collection", "nope"], input="\n")
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_serve_refuses_a_malformed_auth_before_loading_anything() -> None:
    result = CliRunner().invoke(cli, ["serve", "--auth", "just-a-name"])
    assert result.exit_code == 2 and "user:password" in result.output


def test_chat_commands_regenerate_choose_edit_undo_and_branch(tiny: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The slash commands through the real engine (a tiny model) and SQLite, checked in the database after."""
    from app.chat import models
    from app.config import Settings
    from memory.db import make_engine
    from memory.sessions import SessionStore

    registry = models.ModelRegistry(Settings(model="teacher"))
    registry.adopt("teacher", tiny)
    monkeypatch.setattr(models, "_shared", registry)  # the process-wide registry, put back after the test
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    monkeypatch.setenv("RILLET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RILLET_DATABASE_URL", url)
    typed = ["What does a kettle do?", "/regenerate", "/answer 1", "/answer 3", "/history",
             "/edit 1 What does a samovar do?", "/undo", "/branch 0", "/branch 4", "/edit x", "/bogus", "/help",
             "//slashes are fine", ""]
    result = CliRunner().invoke(cli, ["chat", "--model", "teacher", "--max-new-tokens", "6"],
                                input="\n".join(typed) + "\n")
    registry.close()
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # as one line: rich wraps at the terminal's width
    assert "(answer 2 of 2; /answer N picks another)" in out and "(answer 1 of 2;" in out
    assert "There is no answer 3; pick one from 1 to 2." in out
    assert " 1. What does a kettle do?" in out
    assert "Now in session 2" in out and "branched from session 1 at question 1" in out
    assert "Deleted the last turn; 0 questions left." in out
    assert "Now in session 3" in out and "branched from session 2 at turn 0" in out
    assert "This session has 0 turn(s); /branch takes 0 to 0." in out
    assert "Type /edit N text, with N a number" in out and "Unknown command /bogus" in out
    assert "/edit N text ask `text` instead of question N" in out
    assert "Session 3 saved" in out

    engine = make_engine(url)
    store = SessionStore(engine)
    first = store.messages(1)
    assert first[0].text == "What does a kettle do?" and len(first) == 2
    place = store.variants(1)[1]
    assert len(place.answers) == 2 and place.chosen == 0 and place.answers[0].text == first[1].text
    assert (store.get(2).parent_id, store.get(2).branch_point, store.get(2).message_count) == (1, 0, 0)
    assert (store.get(3).parent_id, store.get(3).branch_point) == (2, 0)
    assert store.messages(3)[0].text == "/slashes are fine"
    engine.dispose()
