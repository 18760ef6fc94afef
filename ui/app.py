"""The Gradio Blocks page: sessions sidebar, chat pane, collection picker, folder indexing, settings.

Every handler goes through `app.engine.ChatEngine`; errors become a visible notice and never clear
what the user typed. The same engine also serves the programmatic API (ui/api.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from app.chat import defaults
from app.chat.events import follow
from app.engine import ChatEngine, SessionNotFoundError, TurnOptions, TurnRefused
from backbone.errors import UserError, report, shown
from ui import render
from ui.api import add_api

log = logging.getLogger(__name__)

NO_COLLECTION = ""
STOP_NOTE = "**Stop** ends the answer where it is; what was written so far is kept in the session, marked _(stopped)_."
CSS = """
#rillet-status { font-size: 0.85em; opacity: 0.85; }
#rillet-notice:empty { display: none; }
.rillet-source summary { cursor: pointer; }
#rillet-answers { flex: 0 0 auto; width: auto; align-items: center; }
#rillet-answer-page { flex: 0 0 auto; width: auto; min-width: 6em; text-align: center; }
"""


SKIP: Any = gr.skip()  # an output left as it is


# What each handler updates, by name; a field not given stays as it is. `build` wires each one's fields, in
# this order, to the components of the same names.
class PageLoaded(NamedTuple):
    session: Any = SKIP
    sessions: Any = SKIP
    chat: Any = SKIP
    collection: Any = SKIP
    status: Any = SKIP
    welcome: Any = SKIP
    title: Any = SKIP
    notice: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


class SessionSwitched(NamedTuple):
    """A session was started or imported."""

    session: Any = SKIP
    sessions: Any = SKIP
    chat: Any = SKIP
    status: Any = SKIP
    notice: Any = SKIP
    remembered: Any = SKIP
    title: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


class SessionOpened(NamedTuple):
    session: Any = SKIP
    chat: Any = SKIP
    collection: Any = SKIP
    status: Any = SKIP
    notice: Any = SKIP
    remembered: Any = SKIP
    title: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


class SessionDeleted(NamedTuple):
    session: Any = SKIP
    sessions: Any = SKIP
    chat: Any = SKIP
    status: Any = SKIP
    confirm_delete: Any = SKIP
    notice: Any = SKIP
    remembered: Any = SKIP
    title: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


class CollectionDeleted(NamedTuple):
    collection: Any = SKIP
    confirm_collection: Any = SKIP
    notice: Any = SKIP
    welcome: Any = SKIP


class Indexing(NamedTuple):
    index_status: Any = SKIP
    collection: Any = SKIP
    welcome: Any = SKIP


class Answering(NamedTuple):
    """What Send updates while a turn runs."""

    message: Any = SKIP
    chat: Any = SKIP
    session: Any = SKIP
    sessions: Any = SKIP
    status: Any = SKIP
    notice: Any = SKIP
    remembered: Any = SKIP
    title: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


class Rewound(NamedTuple):
    """An answer was chosen or a turn undone: the same session, shown anew."""

    chat: Any = SKIP
    sessions: Any = SKIP
    status: Any = SKIP
    notice: Any = SKIP
    answers: Any = SKIP
    answer_page: Any = SKIP


def title_from(message: str, words: int = 7) -> str:
    text = " ".join(message.split()[:words])
    return (text[:57] + "…") if len(text) > 60 else text or "New chat"


class Page:
    """The handlers of one page; `build()` lays the page out and wires them."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine
        self.export_dir = engine.settings.data_dir / "exports"

    # --- helpers ---------------------------------------------------------------------------------
    def session_choices(self) -> list[tuple[str, int]]:
        return render.session_tree(self.engine.list_sessions())

    def pager(self, session_id: int | None, view: Any = None) -> dict[str, Any]:
        """The ‹ answer i/n › row under the chat: shown when the last answer was regenerated."""
        if session_id is None:
            return {"answers": gr.update(visible=False), "answer_page": ""}
        if view is not None:
            page = render.answer_page(view.variants, view.messages)
        else:
            page = render.answer_page(self.engine.variants(session_id), self.engine.messages(session_id))
        return {"answers": gr.update(visible=bool(page)), "answer_page": page}

    def collection_choices(self) -> list[tuple[str, str]]:
        return [("(none)", NO_COLLECTION)] + [(f"{c.name} · {c.files} files", c.name)
                                            for c in self.engine.list_collections()]

    def status(self, model: str | None, tokens: int = 0, state_bytes: int = 0, turn: Any = None) -> str:
        served = self.engine.served(model or None)
        return render.status_line(served.label, f"{served.device}, {served.precision}", tokens, state_bytes,
                                  served.model.max_context, served.note, turn)

    @staticmethod
    def problem(error: BaseException, what: str) -> str:
        """The notice for an error a handler caught: a `UserError`'s advice as is, anything else (logged here
        with its traceback) as an internal error."""
        return render.error_note(report(error, log, what))

    def visible_count(self, session_id: int) -> int:
        return sum(m.role != "system" for m in self.engine.messages(session_id))

    # --- sessions --------------------------------------------------------------------------------
    def on_load(self, remembered: int | None, model: str) -> PageLoaded:
        """Fill the page; reopen the session this browser had open, if it still exists."""
        collections = self.collection_choices()
        welcome = gr.update(visible=len(collections) == 1)
        if remembered is not None:
            try:
                view = self.engine.open_session(int(remembered), model or None)
                return PageLoaded(
                    session=view.info.id, sessions=gr.update(choices=self.session_choices(), value=view.info.id),
                    chat=render.chat_history(view.messages),
                    collection=gr.update(choices=collections, value=view.info.collection or NO_COLLECTION),
                    status=self.status(model, view.state_tokens, view.state_bytes), welcome=welcome,
                    title=view.info.title, notice=render.error_note(view.notice) if view.notice else "",
                    **self.pager(view.info.id, view))
            except SessionNotFoundError:
                pass
        return PageLoaded(
            session=None, sessions=gr.update(choices=self.session_choices(), value=None), chat=[],
            collection=gr.update(choices=collections,
                                 value=collections[-1][1] if len(collections) > 1 else NO_COLLECTION),
            status=self.status(model), welcome=welcome, title="", notice="", **self.pager(None))

    def new_session(self, collection: str, model: str) -> SessionSwitched:
        try:
            info = self.engine.create_session(collection=collection or None)
        except Exception as exc:
            return SessionSwitched(notice=self.problem(exc, "new_session"))
        return SessionSwitched(session=info.id, sessions=gr.update(choices=self.session_choices(), value=info.id),
                               chat=[], status=self.status(model), notice="", remembered=info.id, title=info.title,
                               **self.pager(None))

    def open_session(self, session_id: int | None, model: str) -> SessionOpened:
        if session_id is None:
            return SessionOpened()
        try:
            view = self.engine.open_session(int(session_id), model or None)
        except Exception as exc:
            return SessionOpened(session=None, chat=[], status=self.status(model),
                                 notice=self.problem(exc, "open_session"), remembered=None, title="",
                                 **self.pager(None))
        return SessionOpened(session=view.info.id, chat=render.chat_history(view.messages),
                             collection=gr.update(value=view.info.collection or NO_COLLECTION),
                             status=self.status(model, view.state_tokens, view.state_bytes),
                             notice=render.error_note(view.notice) if view.notice else "", remembered=view.info.id,
                             title=view.info.title, **self.pager(view.info.id, view))

    def rename(self, session_id: int | None, title: str) -> tuple[Any, str]:
        if session_id is None:
            return gr.skip(), render.error_note(Exception("Open or start a session first."))
        try:
            info = self.engine.rename_session(session_id, title)
        except Exception as exc:
            return gr.skip(), self.problem(exc, "rename")
        return gr.update(choices=self.session_choices(), value=session_id), f"Renamed to “{info.title}”."

    def ask_delete(self, session_id: int | None) -> tuple[Any, str]:
        if session_id is None:
            return gr.update(visible=False), render.error_note(Exception("Open a session to delete it."))
        title = self.engine.session(session_id).title
        return gr.update(visible=True), f"Delete “{title}” and all its messages? This cannot be undone."

    def delete(self, session_id: int | None, model: str) -> SessionDeleted:
        if session_id is not None:
            with contextlib.suppress(SessionNotFoundError):  # deleted meanwhile in another tab: same outcome
                self.engine.delete_session(session_id)
        return SessionDeleted(session=None, sessions=gr.update(choices=self.session_choices(), value=None), chat=[],
                              status=self.status(model), confirm_delete=gr.update(visible=False),
                              notice="Session deleted.", remembered=None, title="", **self.pager(None))

    def export(self, session_id: int | None, fmt: str) -> tuple[Any, str]:
        if session_id is None:
            return gr.update(visible=False), render.error_note(Exception("Open a session to export it."))
        try:
            path = self.engine.export_session(session_id, self.export_dir, "markdown" if fmt == "Markdown" else "json")
        except Exception as exc:
            return gr.update(visible=False), self.problem(exc, "export")
        return gr.update(value=str(path), visible=True), f"Exported to {path.name}."

    def import_file(self, upload: Any, model: str) -> SessionSwitched:
        try:
            data = Path(upload if isinstance(upload, str) else upload.name).read_bytes()
            info = self.engine.import_session(data)
        except Exception as exc:
            return SessionSwitched(notice=self.problem(exc, "import_file"))
        view = self.engine.open_session(info.id, model or None)
        return SessionSwitched(session=info.id, sessions=gr.update(choices=self.session_choices(), value=info.id),
                               chat=render.chat_history(view.messages),
                               status=self.status(model, view.state_tokens, view.state_bytes),
                               notice=f"Imported “{info.title}”.", remembered=info.id, title=info.title,
                               **self.pager(info.id, view))

    # --- collections -----------------------------------------------------------------------------
    def choose_collection(self, session_id: int | None, collection: str) -> str:
        if session_id is None:
            return ""
        try:
            self.engine.set_collection(session_id, collection or None)
        except Exception as exc:
            return self.problem(exc, "choose_collection")
        return f"This session now searches “{collection}”." if collection else "This session searches no collection."

    def index(self, folder: str, name: str) -> Iterator[Indexing]:
        """Index a folder; streams progress lines, then the summary."""
        yield from self._indexing(lambda progress: self.engine.index_folder(folder, name, progress=progress))

    def index_docs(self) -> Iterator[Indexing]:
        """The first-run offer: Rillet's own Markdown as a collection."""
        yield from self._indexing(lambda progress: self.engine.index_project_docs(progress=progress))

    def _indexing(self, run: Any) -> Iterator[Indexing]:
        """Run `run(progress)` in a worker thread and stream its progress, then the summary or the error."""
        updates: queue.SimpleQueue[Any] = queue.SimpleQueue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["report"] = run(updates.put)
            except Exception as exc:  # shown to the user below; the thread must not die silently
                outcome["error"] = exc
            finally:
                updates.put(None)

        yield Indexing(index_status="Starting…")
        threading.Thread(target=work, name="index", daemon=True).start()
        while (item := updates.get()) is not None:
            yield Indexing(index_status=render.progress_line(item))
        if "error" in outcome:
            yield Indexing(index_status=self.problem(outcome["error"], "indexing"))
            return
        report = outcome["report"]
        yield Indexing(index_status=render.index_summary(report),
                       collection=gr.update(choices=self.collection_choices(), value=report.collection),
                       welcome=gr.update(visible=False))

    def ask_delete_collection(self, collection: str) -> tuple[Any, str]:
        if not collection:
            return gr.update(visible=False), render.error_note(Exception("Pick a collection to delete."))
        return gr.update(visible=True), (f"Delete the collection “{collection}” (its index, not your files)? "
                                         "Sessions that search it will be asked to pick another.")

    def delete_collection(self, collection: str) -> CollectionDeleted:
        try:
            self.engine.delete_collection(collection)
            note = f"Collection “{collection}” deleted."
        except Exception as exc:
            note = self.problem(exc, "delete_collection")
        choices = self.collection_choices()
        return CollectionDeleted(collection=gr.update(choices=choices, value=NO_COLLECTION),
                                 confirm_collection=gr.update(visible=False), notice=note,
                                 welcome=gr.update(visible=len(choices) == 1))

    # --- chat ------------------------------------------------------------------------------------
    def options(self, top_k: float, temperature: float, max_tokens: float, model: str,
                decoding: tuple[float, ...]) -> TurnOptions:
        """The settings' values as turn options. `decoding`: values of the settings named in
        `defaults.DECODING`, in that order (the rest: defaults)."""
        chosen = {name: type(default)(value)
                  for (name, default), value in zip(defaults.DECODING.items(), decoding, strict=False)}
        return TurnOptions(top_k=int(top_k), temperature=float(temperature), max_new_tokens=int(max_tokens),
                           model=model or None, **chosen)

    def respond(self, message: str, session_id: int | None, collection: str, history: list[dict[str, Any]] | None,
                top_k: float, temperature: float, max_tokens: float, model: str, *decoding: float
                ) -> Iterator[Answering]:
        """Stream one answer."""
        history = list(history or [])
        try:
            served = self.engine.served(model or None)
            checked = self.engine.check_message(message, served)
            options = self.options(top_k, temperature, max_tokens, model, decoding)
            if session_id is None:
                session_id = self.engine.create_session(title_from(checked), collection or None).id
            changed_elsewhere = self.visible_count(session_id) != len(history)
            ticket = self.engine.ask(session_id, message, options)  # as typed: the result says what was removed
        except Exception as exc:
            yield Answering(message=message, session=session_id, notice=self.problem(exc, "respond"))
            return
        shown_before = list(history)
        history += [{"role": "user", "content": checked}, {"role": "assistant", "content": "…"}]
        yield Answering(message="", chat=history, session=session_id,
                        sessions=gr.update(choices=self.session_choices(), value=session_id), notice="",
                        remembered=session_id, answers=gr.update(visible=False))
        elsewhere = render.error_note("This session was also changed in another tab; all of its messages are "
                                      "shown.") if changed_elsewhere else ""
        yield from self.follow(ticket, session_id, history, model, Answering(message=message, chat=shown_before),
                               elsewhere)

    def follow(self, ticket: Any, session_id: int, history: list[dict[str, Any]], model: str, failed: Answering,
               note: str = "") -> Iterator[Answering]:
        """Stream a turn's answer into the last bubble of `history`; then show the stored session with `note`
        (Markdown) and the turn's own notice, or, when the turn failed, `failed` with the reason."""
        for turn in follow(ticket):
            if turn.stage == "finished":
                result = turn.result
                notice = " ".join(n for n in (note, result.notice and render.error_note(result.notice)) if n)
                yield Answering(chat=render.chat_history(self.engine.messages(session_id)), session=session_id,
                                sessions=gr.update(choices=self.session_choices(), value=session_id),
                                status=self.status(model, result.state_tokens, result.state_bytes, result),
                                notice=notice, **self.pager(session_id))
                return
            if turn.stage in ("failed", "cancelled"):
                # a failed turn was logged, with its traceback when it is a bug, by the model queue
                text = shown(turn.error) if turn.error is not None else "The turn was cancelled."
                if turn.error is not None and not isinstance(turn.error, UserError) and failed.message is not SKIP:
                    text += " Your message is back in the box; try again."
                yield failed._replace(session=session_id, notice=render.error_note(text), **self.pager(session_id))
                return
            history[-1]["content"] = render.answer_so_far(turn)
            yield Answering(chat=history)

    def regenerate(self, session_id: int | None, history: list[dict[str, Any]] | None, top_k: float,
                   temperature: float, max_tokens: float, model: str, *decoding: float) -> Iterator[Answering]:
        """Answer the last question again; the old answer stays, one click of ‹ away."""
        history = list(history or [])
        try:
            if session_id is None:
                raise TurnRefused("There is no answer to regenerate yet; ask a question first.")
            ticket = self.engine.regenerate(session_id, self.options(top_k, temperature, max_tokens, model, decoding))
        except Exception as exc:
            yield Answering(notice=self.problem(exc, "regenerate"))
            return
        shown_before = list(history)
        history = [*history[:-1], {"role": "assistant", "content": "…"}]
        yield Answering(chat=history, notice="", answers=gr.update(visible=False))
        yield from self.follow(ticket, session_id, history, model, Answering(chat=shown_before))

    def edit(self, data: gr.EditData, session_id: int | None, history: list[dict[str, Any]] | None, top_k: float,
             temperature: float, max_tokens: float, model: str, *decoding: float) -> Iterator[Answering]:
        """An earlier question edited in the chat: ask it in a new branch from the turn before it; the session
        it came from stays as it was (it is under the branch's parent in the sidebar)."""
        shown_before = list(history or [])
        try:
            if session_id is None:
                raise TurnRefused("Open a session to edit its questions.")
            visible = [m for m in self.engine.messages(session_id) if m.role != "system"]
            index = data.index if isinstance(data.index, int) else data.index[0]
            if not 0 <= index < len(visible) or visible[index].role != "user":
                raise TurnRefused("Only your questions can be edited; an answer can be regenerated instead.")
            value = data.value if isinstance(data.value, str) else str(data.value)
            options = self.options(top_k, temperature, max_tokens, model, decoding)
            branch, ticket = self.engine.edit(session_id, visible[index].ordinal, value, options)
        except Exception as exc:
            yield Answering(chat=shown_before, notice=self.problem(exc, "edit"))
            return
        branch_id = branch.info.id
        history = [*render.chat_history(branch.messages), {"role": "user", "content": value.strip()},
                   {"role": "assistant", "content": "…"}]
        yield Answering(chat=history, session=branch_id, remembered=branch_id, title=branch.info.title,
                        sessions=gr.update(choices=self.session_choices(), value=branch_id), notice="",
                        answers=gr.update(visible=False))
        yield from self.follow(ticket, branch_id, history, model,
                               Answering(chat=render.chat_history(self.engine.messages(branch_id))),
                               f"Asked in a new branch, “{branch.info.title}”; the original session is unchanged "
                               "(in the sidebar, above this one).")

    def page_answer(self, session_id: int | None, step: int, model: str) -> Rewound:
        """Show (and make current) the previous or next answer to the last question."""
        if session_id is None:
            return Rewound()
        try:
            place = self.engine.variants(session_id).get(len(self.engine.messages(session_id)) - 1)
            if place is None:
                return Rewound(**self.pager(session_id))
            view = self.engine.choose_answer(session_id, (place.chosen + step) % len(place.answers), model or None)
        except Exception as exc:
            return Rewound(notice=self.problem(exc, "page_answer"))
        return Rewound(chat=render.chat_history(view.messages), status=self.status(model, view.state_tokens,
                                                                                   view.state_bytes),
                       notice="", **self.pager(session_id, view))

    def undo(self, session_id: int | None, model: str) -> Rewound:
        """Delete the last turn."""
        try:
            if session_id is None:
                raise TurnRefused("There is no turn to undo in this session.")
            view = self.engine.undo(session_id, model or None)
        except Exception as exc:
            return Rewound(notice=self.problem(exc, "undo"))
        return Rewound(chat=render.chat_history(view.messages),
                       sessions=gr.update(choices=self.session_choices(), value=session_id),
                       status=self.status(model, view.state_tokens, view.state_bytes),
                       notice="The last turn was deleted.", **self.pager(session_id, view))

    def stop(self, session_id: int | None) -> str:
        if session_id is None or not self.engine.cancel(session_id):
            return ""
        return "Stopping… the answer so far is kept."

    def model_changed(self, session_id: int | None, model: str) -> str:
        if session_id is None:
            return self.status(model)
        view = self.engine.open_session(session_id, model or None)
        return self.status(model, view.state_tokens, view.state_bytes)

    # --- layout ----------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        settings = self.engine.settings
        with gr.Blocks(title="Rillet") as demo:
            session = gr.State(None)
            remembered = gr.BrowserState(None, storage_key="rillet-open-session")
            with gr.Sidebar(label="Sessions", open=True):
                gr.Markdown("## Rillet")
                new_btn = gr.Button("+ New chat", variant="primary", elem_id="rillet-new")
                sessions = gr.Radio(label="Sessions", choices=[], elem_id="rillet-sessions")
                with gr.Accordion("This session", open=False, elem_id="rillet-manage"):
                    title = gr.Textbox(label="Title", max_lines=1, elem_id="rillet-title")
                    rename_btn = gr.Button("Rename", size="sm")
                    export_fmt = gr.Radio(["JSON", "Markdown"], value="JSON", label="Export as")
                    export_btn = gr.Button("Export", size="sm")
                    export_file = gr.File(label="Download", visible=False, interactive=False)
                    delete_btn = gr.Button("Delete session…", size="sm", variant="stop", elem_id="rillet-delete")
                    with gr.Group(visible=False) as confirm_delete:
                        confirm_text = gr.Markdown()
                        with gr.Row():
                            yes_btn = gr.Button("Yes, delete", variant="stop", size="sm", elem_id="rillet-delete-yes")
                            no_btn = gr.Button("Cancel", size="sm")
                import_btn = gr.UploadButton("Import a session (.json)", file_types=[".json"], size="sm")

            with gr.Row(equal_height=True):
                collection = gr.Dropdown(label="Collection", choices=[("(none)", NO_COLLECTION)], value=NO_COLLECTION,
                                         scale=1, elem_id="rillet-collection")
                status = gr.Markdown(elem_id="rillet-status")
            with gr.Group(visible=False) as welcome:
                gr.Markdown("**No collection yet.** Index Rillet's own documentation to try it out, or index one "
                            "of your folders under *Index a folder* below.")
                docs_btn = gr.Button("Index Rillet's documentation", size="sm", elem_id="rillet-index-docs")
            chatbot = gr.Chatbot(label="Chat", height=520, elem_id="rillet-chat", buttons=["copy"], editable="user",
                                 placeholder="Ask about the files of the chosen collection. Edit a question of "
                                             "yours (✎) to ask it in a new branch.")
            with gr.Row():
                with gr.Row(visible=False, elem_id="rillet-answers") as answers:
                    prev_btn = gr.Button("‹", size="sm", scale=0, min_width=36, elem_id="rillet-prev-answer")
                    answer_page = gr.Markdown(elem_id="rillet-answer-page")
                    next_btn = gr.Button("›", size="sm", scale=0, min_width=36, elem_id="rillet-next-answer")
                regenerate_btn = gr.Button("↻ Regenerate", size="sm", scale=0, min_width=140,
                                           elem_id="rillet-regenerate")
                undo_btn = gr.Button("Undo last turn", size="sm", scale=0, min_width=140, elem_id="rillet-undo")
            with gr.Row():
                message = gr.Textbox(placeholder="Ask a question…  (Enter sends, Shift+Enter for a new line)",
                                     show_label=False, lines=2, max_lines=8, scale=8, elem_id="rillet-message")
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="rillet-send")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="rillet-stop")
            notice = gr.Markdown(elem_id="rillet-notice")
            gr.Markdown(STOP_NOTE)

            with gr.Accordion("Index a folder", open=False, elem_id="rillet-index"):
                roots = ", ".join(f"`{r}`" for r in settings.roots)
                gr.Markdown(f"Folders inside {roots} can be indexed (set `RILLET_ALLOWED_ROOTS` to change this).")
                with gr.Row():
                    folder = gr.Textbox(label="Folder", placeholder=str(settings.roots[0]), scale=3,
                                        elem_id="rillet-folder")
                    collection_name = gr.Textbox(label="Collection name (default: the folder's name)", scale=2,
                                                 elem_id="rillet-collection-name")
                index_btn = gr.Button("Index", elem_id="rillet-index-btn")
                index_status = gr.Markdown(elem_id="rillet-index-status")
                delete_coll_btn = gr.Button("Delete the selected collection…", size="sm", variant="stop")
                with gr.Group(visible=False) as confirm_coll:
                    confirm_coll_text = gr.Markdown()
                    with gr.Row():
                        coll_yes = gr.Button("Yes, delete it", variant="stop", size="sm")
                        coll_no = gr.Button("Cancel", size="sm")

            with gr.Accordion("Settings", open=False, elem_id="rillet-settings"), gr.Row():
                top_k = gr.Slider(0, 10, value=defaults.TOP_K, step=1, label="Passages per question (top-k)")
                temperature = gr.Slider(0, 1.5, value=defaults.TEMPERATURE, step=0.05,
                                        label="Temperature (0 = always the same)")
                max_tokens = gr.Slider(16, 1024, value=defaults.MAX_NEW_TOKENS, step=16,
                                       label="Longest answer (tokens)")
                model = gr.Radio(["teacher", "student"], value=settings.model, label="Model",
                                 elem_id="rillet-model")
            with gr.Accordion("Repetition and sampling", open=False, elem_id="rillet-decoding"), gr.Row():
                decoding = [
                    gr.Slider(1.0, 2.0, value=defaults.REPETITION_PENALTY, step=0.05,
                              label="Repetition penalty (1 = off)", elem_id="rillet-repetition_penalty"),
                    gr.Slider(0.0, 2.0, value=defaults.PRESENCE_PENALTY, step=0.1, label="Presence penalty",
                              elem_id="rillet-presence_penalty"),
                    gr.Slider(0.0, 2.0, value=defaults.FREQUENCY_PENALTY, step=0.1, label="Frequency penalty",
                              elem_id="rillet-frequency_penalty"),
                    gr.Slider(0, 512, value=defaults.PENALTY_WINDOW, step=8,
                              label="Penalty window (latest answer tokens; 0 = all)", elem_id="rillet-penalty_window"),
                    gr.Slider(0, 12, value=defaults.NO_REPEAT_NGRAM_SIZE, step=1,
                              label="Never repeat n tokens (0 = off)", elem_id="rillet-no_repeat_ngram_size"),
                    gr.Slider(0.0, 0.5, value=defaults.MIN_P, step=0.01, label="Min-p (when sampling)",
                              elem_id="rillet-min_p"),
                    gr.Slider(0, 32, value=defaults.LOOP_STOP, step=1,
                              label="Stop a loop of n tokens (0 = off)", elem_id="rillet-loop_stop"),
                ]

            add_api(self.engine)  # first: its endpoint names (/regenerate, /undo, /edit) win over the page's events
            on = {"api_visibility": "private"}  # the page's own events; the programmatic API is ui/api.py
            named = {"session": session, "sessions": sessions, "chat": chatbot, "collection": collection,
                     "status": status, "welcome": welcome, "title": title, "notice": notice, "remembered": remembered,
                     "confirm_delete": confirm_delete, "confirm_collection": confirm_coll,
                     "index_status": index_status, "message": message, "answers": answers,
                     "answer_page": answer_page}

            def outputs(kind: type[tuple]) -> list[Any]:
                return [named[name] for name in kind._fields]  # type: ignore[attr-defined]

            demo.load(self.on_load, [remembered, model], outputs(PageLoaded), **on)
            new_btn.click(self.new_session, [collection, model], outputs(SessionSwitched), **on)
            sessions.input(self.open_session, [sessions, model], outputs(SessionOpened), **on)
            rename_btn.click(self.rename, [session, title], [sessions, notice], **on)
            title.submit(self.rename, [session, title], [sessions, notice], **on)
            export_btn.click(self.export, [session, export_fmt], [export_file, notice], **on)
            delete_btn.click(self.ask_delete, [session], [confirm_delete, confirm_text], **on)
            no_btn.click(lambda: gr.update(visible=False), None, [confirm_delete], **on)
            yes_btn.click(self.delete, [session, model], outputs(SessionDeleted), **on)
            import_btn.upload(self.import_file, [import_btn, model], outputs(SessionSwitched), **on)

            collection.input(self.choose_collection, [session, collection], [notice], **on)
            index_btn.click(self.index, [folder, collection_name], outputs(Indexing), concurrency_limit=1,
                            concurrency_id="index", **on)
            docs_btn.click(self.index_docs, None, outputs(Indexing), concurrency_limit=1, concurrency_id="index", **on)
            delete_coll_btn.click(self.ask_delete_collection, [collection], [confirm_coll, confirm_coll_text], **on)
            coll_no.click(lambda: gr.update(visible=False), None, [confirm_coll], **on)
            coll_yes.click(self.delete_collection, [collection], outputs(CollectionDeleted), **on)

            ask_inputs = [message, session, collection, chatbot, top_k, temperature, max_tokens, model, *decoding]
            for trigger in (message.submit, send_btn.click):
                trigger(self.respond, ask_inputs, outputs(Answering), concurrency_limit=None, show_progress="hidden",
                        **on)
            stop_btn.click(self.stop, [session], [notice], concurrency_limit=None, queue=False, **on)
            again_inputs = [session, chatbot, top_k, temperature, max_tokens, model, *decoding]
            for trigger in (regenerate_btn.click, chatbot.retry):
                trigger(self.regenerate, again_inputs, outputs(Answering), concurrency_limit=None,
                        show_progress="hidden", **on)
            chatbot.edit(self.edit, again_inputs, outputs(Answering), concurrency_limit=None, show_progress="hidden",
                         **on)
            for trigger in (undo_btn.click, chatbot.undo):
                trigger(self.undo, [session, model], outputs(Rewound), **on)
            prev_btn.click(lambda s, m: self.page_answer(s, -1, m), [session, model], outputs(Rewound), **on)
            next_btn.click(lambda s, m: self.page_answer(s, 1, m), [session, model], outputs(Rewound), **on)
            model.input(self.model_changed, [session, model], [status], **on)
        return demo


def build_app(engine: ChatEngine) -> gr.Blocks:
    return Page(engine).build()
