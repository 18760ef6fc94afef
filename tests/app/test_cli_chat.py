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
