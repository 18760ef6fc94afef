"""Settings precedence: keyword > environment > rillet.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_defaults_put_everything_under_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = Settings()
    assert s.data_dir == tmp_path / "xdg" / "rillet"
    assert s.db_url == f"sqlite:///{tmp_path / 'xdg' / 'rillet' / 'rillet.db'}"
    assert (s.host, s.port, s.device) == ("127.0.0.1", 7860, "auto")
    assert s.indexes == s.data_dir / "indexes"


def test_toml_then_environment_then_keywords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rillet.toml").write_text('port = 9000\nhost = "0.0.0.0"\ndata_dir = "~/rillet-data"\n')
    s = Settings()
    assert (s.port, s.host) == (9000, "0.0.0.0")
    assert s.data_dir == Path.home() / "rillet-data"
    monkeypatch.setenv("RILLET_PORT", "9100")
    assert Settings().port == 9100
    assert Settings(port=9200).port == 9200


def test_config_file_named_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('database_url = "postgresql+psycopg://u@db/rillet"\n')
    monkeypatch.setenv("RILLET_CONFIG", str(cfg))
    assert Settings().db_url == "postgresql+psycopg://u@db/rillet"


@pytest.mark.parametrize(("name", "value"), [("port", "0"), ("port", "70000"), ("device", "tpu"),
                                             ("model", "gpt")])
def test_invalid_values_are_rejected_with_the_field_named(monkeypatch: pytest.MonkeyPatch, name: str,
                                                          value: str) -> None:
    monkeypatch.setenv(f"RILLET_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()
