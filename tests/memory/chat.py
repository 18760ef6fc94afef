"""Drives a stored session the way the chat engine does: load once, then feed and append each turn."""

from __future__ import annotations

import torch

from backbone.generate import LanguageModel
from backbone.state import ModelState
from memory.records import ChatMessage, LoadedSession
from memory.sessions import SessionStore
from memory.transcript import feed


class Chat:
    def __init__(self, store: SessionStore, model: LanguageModel, session_id: int) -> None:
        self.store, self.model = store, model
        self.loaded: LoadedSession = store.load(session_id, model, progress=False)

    @property
    def id(self) -> int:
        return self.loaded.info.id

    def turn(self, user: str, assistant: str, citations: list[dict] | None = None) -> None:
        feed(self.model, self.loaded.state, [ChatMessage("user", user), ChatMessage("assistant", assistant)])
        self.loaded.info = self.store.append_turn(self.id, user, assistant, self.loaded.state,
                                                  model_fingerprint=self.model.fingerprint,
                                                  expected_version=self.loaded.version, citations=citations)


def states_equal(a: ModelState, b: ModelState) -> bool:
    ta, tb = a.to_tensors(), b.to_tensors()
    return a.num_tokens == b.num_tokens and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
