"""A real Rillet web app on a free loopback port: the teacher, SQLite, a FAISS collection."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.chat.models import ModelRegistry
from app.config import Settings
from app.engine import ChatEngine

FIXTURE_REPO = Path(__file__).resolve().parents[1] / "app" / "fixture_repo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    engine: ChatEngine
    folders: Path  # the allowed root; holds a copy of the fixture repo as `kettle/`


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, teacher: Any) -> Iterator[Server]:
    from ui.server import launch

    base = tmp_path_factory.mktemp("ui")
    folders = base / "folders"
    shutil.copytree(FIXTURE_REPO, folders / "kettle")
    settings = Settings(data_dir=base / "data", model="teacher", allowed_roots=[folders])
    registry = ModelRegistry(settings)
    registry.adopt("teacher", teacher)
    engine = ChatEngine(settings, registry=registry)
    port = free_port()
    demo = launch(engine, "127.0.0.1", port, block=False)
    yield Server(f"http://127.0.0.1:{port}/", engine, folders)
    demo.close()
    engine.close()
    registry.close()
