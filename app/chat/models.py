"""Which backbone serves the chats, loaded once per process, with one queue in front of it.

`settings.model` says "student" by default. Until the student's trained parameters exist the teacher
serves instead, and the `note` says so (status line, log), so nobody mistakes one for the other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.chat.scheduler import Scheduler
from app.config import Settings
from backbone.errors import InvalidRequest, StudentNotTrained, StudentUnavailable

if TYPE_CHECKING:  # a type only: importing this module stays cheap (torch loads with the first model)
    from backbone.generate import LanguageModel

log = logging.getLogger(__name__)

ModelName = Literal["teacher", "student"]
MODEL_NAMES: tuple[ModelName, ...] = ("teacher", "student")


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the story of how it was chosen."""

    model: LanguageModel
    requested: ModelName
    name: ModelName
    device: str
    note: str | None = None

    @property
    def precision(self) -> str:
        """The weights' precision in force (backbone/quantize.py)."""
        return getattr(self.model, "info", {}).get("precision", "fp32")

    @property
    def label(self) -> str:
        return self.name if self.name == self.requested else f"{self.name} (instead of {self.requested})"


class ModelRegistry:
    """Loads each backbone on first use and hands out that one instance; one scheduler for all of them.

    A single scheduler, not one per model: on a small CPU two models decoding at once only slow each
    other down, and "served in turn" must hold across models too.
    """

    def __init__(self, settings: Settings, max_active: int = 4) -> None:
        self.settings = settings
        self.scheduler = Scheduler(max_active=max_active)
        self._served: dict[ModelName, ServedModel] = {}
        self._lock = threading.Lock()

    def adopt(self, name: ModelName, model: LanguageModel) -> None:
        """Serve an already loaded model under `name` (tests share one loaded teacher this way)."""
        with self._lock:
            self._served[name] = ServedModel(model, name, name, str(getattr(model, "device", "cpu")))

    def get(self, name: ModelName | None = None) -> ServedModel:
        name = name or self.settings.model
        if name not in MODEL_NAMES:
            raise InvalidRequest(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
        with self._lock:
            if name not in self._served:
                self._served[name] = self._load(name)
            return self._served[name]

    def _load(self, name: ModelName) -> ServedModel:
        from backbone.loader import load_model
        from backbone.quantize import resolve_precision

        resolve_precision(self.settings.precision, self.settings.resolved_device())  # PrecisionError says how

        device = self.settings.resolved_device()
        common = {"gguf_path": self.settings.model_path, "cache_dir": self.settings.cache_dir, "device": device,
                  "precision": self.settings.precision}
        if name == "student":
            try:
                model = load_model("student", student_path=self.settings.student_path, **common)
                return ServedModel(model, "student", "student", device)
            except StudentUnavailable as exc:  # missing or unusable parameters: a fact of this install, not a bug
                note = ("The student model is not trained yet; the teacher serves instead."
                        if isinstance(exc, StudentNotTrained)
                        else f"The student's parameters cannot be used ({exc}); the teacher serves instead.")
                log.warning("%s (%s)", note, exc)
                teacher = self._served.get("teacher") or self._load("teacher")
                self._served.setdefault("teacher", teacher)
                return ServedModel(teacher.model, "student", "teacher", device, note)
        return ServedModel(load_model("teacher", **common), "teacher", "teacher", device)

    def close(self) -> None:
        self.scheduler.close()


_shared: ModelRegistry | None = None
_shared_lock = threading.Lock()


def shared_registry(settings: Settings | None = None) -> ModelRegistry:
    """The process-wide registry (the web app, the terminal chat and LangChain all use this one)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from app.config import get_settings

            _shared = ModelRegistry(settings or get_settings())
        return _shared
