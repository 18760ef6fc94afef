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
from typing import Any

import gradio as gr

from app.chat import defaults
from app.chat.generation import Piece
from app.chat.scheduler import Cancelled, Failed, Finished, Waiting
from app.engine import USER_ERRORS, ChatEngine, Retrieved, SessionNotFoundError, TurnOptions
from ui import render
from ui.api import add_api

log = logging.getLogger(__name__)

NO_COLLECTION = ""
STOP_NOTE = "**Stop** ends the answer where it is; what was written so far is kept in the session, marked _(stopped)_."
CSS = """
#rillet-status { font-size: 0.85em; opacity: 0.85; }
#rillet-notice:empty { display: none; }
.rillet-source summary { cursor: pointer; }
"""


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
        return [(render.session_label(s), s.id) for s in self.engine.list_sessions()]

    def collection_choices(self) -> list[tuple[str, str]]:
        return [("(none)", NO_COLLECTION)] + [(f"{c.name} · {c.files} files", c.name)
                                            for c in self.engine.list_collections()]

    def status(self, model: str | None, tokens: int = 0, state_bytes: int = 0) -> str:
        served = self.engine.served(model or None)
        return render.status_line(served.label, served.device, tokens, state_bytes, served.model.max_context,
                                  served.note)

    def visible_count(self, session_id: int) -> int:
        return sum(m.role != "system" for m in self.engine.messages(session_id))

    # --- sessions --------------------------------------------------------------------------------
    def on_load(self, remembered: int | None, model: str) -> tuple[Any, ...]:
        """Fill the page; reopen the session this browser had open, if it still exists."""
        collections = self.collection_choices()
        welcome = gr.update(visible=len(collections) == 1)
        if remembered is not None:
            try:
                view = self.engine.open_session(int(remembered), model or None)
                return (view.info.id, gr.update(choices=self.session_choices(), value=view.info.id),
                        render.chat_history(view.messages), gr.update(choices=collections,
                                                                      value=view.info.collection or NO_COLLECTION),
                        self.status(model, view.state_tokens, view.state_bytes), welcome, view.info.title,
                        render.error_note(Exception(view.notice)) if view.notice else "")
            except SessionNotFoundError:
                pass
        return (None, gr.update(choices=self.session_choices(), value=None), [],
                gr.update(choices=collections, value=collections[-1][1] if len(collections) > 1 else NO_COLLECTION),
                self.status(model), welcome, "", "")

    def new_session(self, collection: str, model: str) -> tuple[Any, ...]:
        try:
            info = self.engine.create_session(collection=collection or None)
        except USER_ERRORS as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), render.error_note(exc), gr.skip(), gr.skip()
        return (info.id, gr.update(choices=self.session_choices(), value=info.id), [], self.status(model), "",
                info.id, info.title)

    def open_session(self, session_id: int | None, model: str) -> tuple[Any, ...]:
        if session_id is None:
            return (gr.skip(),) * 7
        try:
            view = self.engine.open_session(int(session_id), model or None)
        except USER_ERRORS as exc:
            return None, [], gr.skip(), self.status(model), render.error_note(exc), None, ""
        return (view.info.id, render.chat_history(view.messages),
                gr.update(value=view.info.collection or NO_COLLECTION),
                self.status(model, view.state_tokens, view.state_bytes),
                render.error_note(Exception(view.notice)) if view.notice else "", view.info.id, view.info.title)

    def rename(self, session_id: int | None, title: str) -> tuple[Any, str]:
        if session_id is None:
            return gr.skip(), render.error_note(Exception("Open or start a session first."))
        try:
            self.engine.rename_session(session_id, title)
        except USER_ERRORS as exc:
            return gr.skip(), render.error_note(exc)
        return gr.update(choices=self.session_choices(), value=session_id), f"Renamed to “{title.strip()}”."

    def ask_delete(self, session_id: int | None) -> tuple[Any, str]:
        if session_id is None:
            return gr.update(visible=False), render.error_note(Exception("Open a session to delete it."))
        title = self.engine.session(session_id).title
        return gr.update(visible=True), f"Delete “{title}” and all its messages? This cannot be undone."

    def delete(self, session_id: int | None, model: str) -> tuple[Any, ...]:
        if session_id is not None:
            with contextlib.suppress(SessionNotFoundError):  # deleted meanwhile in another tab: same outcome
                self.engine.delete_session(session_id)
        return (None, gr.update(choices=self.session_choices(), value=None), [], self.status(model),
                gr.update(visible=False), "Session deleted.", None, "")

    def export(self, session_id: int | None, fmt: str) -> tuple[Any, str]:
        if session_id is None:
            return gr.update(visible=False), render.error_note(Exception("Open a session to export it."))
        try:
            path = self.engine.export_session(session_id, self.export_dir, "markdown" if fmt == "Markdown" else "json")
        except USER_ERRORS as exc:
            return gr.update(visible=False), render.error_note(exc)
        return gr.update(value=str(path), visible=True), f"Exported to {path.name}."

    def import_file(self, upload: Any, model: str) -> tuple[Any, ...]:
        try:
            data = Path(upload if isinstance(upload, str) else upload.name).read_bytes()
            info = self.engine.import_session(data)
        except USER_ERRORS as exc:
            return (gr.skip(),) * 4 + (render.error_note(exc), gr.skip(), gr.skip())
        view = self.engine.open_session(info.id, model or None)
        return (info.id, gr.update(choices=self.session_choices(), value=info.id), render.chat_history(view.messages),
                self.status(model, view.state_tokens, view.state_bytes), f"Imported “{info.title}”.", info.id,
                info.title)

    # --- collections -----------------------------------------------------------------------------
    def choose_collection(self, session_id: int | None, collection: str) -> str:
        if session_id is None:
            return ""
        try:
            self.engine.set_collection(session_id, collection or None)
        except USER_ERRORS as exc:
            return render.error_note(exc)
        return f"This session now searches “{collection}”." if collection else "This session searches no collection."

    def index(self, folder: str, name: str) -> Iterator[tuple[Any, ...]]:
        """Index a folder; streams progress lines, then the summary (outputs: status, collection, welcome)."""
        yield from self._indexing(lambda progress: self.engine.index_folder(folder, name, progress=progress))

    def index_docs(self) -> Iterator[tuple[Any, ...]]:
        """The first-run offer: Rillet's own Markdown as a collection."""
        yield from self._indexing(lambda progress: self.engine.index_project_docs(progress=progress))

    def _indexing(self, run: Any) -> Iterator[tuple[Any, ...]]:
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

        yield "Starting…", gr.skip(), gr.skip()
        threading.Thread(target=work, name="index", daemon=True).start()
        while (item := updates.get()) is not None:
            yield render.progress_line(item), gr.skip(), gr.skip()
        if "error" in outcome:
            if not isinstance(outcome["error"], USER_ERRORS):
                log.error("indexing failed", exc_info=outcome["error"])
            yield render.error_note(outcome["error"]), gr.skip(), gr.skip()
            return
        report = outcome["report"]
        yield (render.index_summary(report), gr.update(choices=self.collection_choices(), value=report.collection),
               gr.update(visible=False))

    def ask_delete_collection(self, collection: str) -> tuple[Any, str]:
        if not collection:
            return gr.update(visible=False), render.error_note(Exception("Pick a collection to delete."))
        return gr.update(visible=True), (f"Delete the collection “{collection}” (its index, not your files)? "
                                         "Sessions that search it will be asked to pick another.")

    def delete_collection(self, collection: str) -> tuple[Any, ...]:
        try:
            self.engine.delete_collection(collection)
            note = f"Collection “{collection}” deleted."
        except USER_ERRORS as exc:
            note = render.error_note(exc)
        choices = self.collection_choices()
        return gr.update(choices=choices, value=NO_COLLECTION), gr.update(visible=False), note, \
            gr.update(visible=len(choices) == 1)

    # --- chat ------------------------------------------------------------------------------------
    def respond(self, message: str, session_id: int | None, collection: str, history: list[dict[str, Any]] | None,
                top_k: float, temperature: float, max_tokens: float, model: str, *decoding: float
                ) -> Iterator[tuple[Any, ...]]:
        """Stream one answer. Outputs: message box, chat, session, sessions list, status, notice, remembered.
        `decoding`: values of the settings named in `defaults.DECODING`, in that order (the rest: defaults)."""
        history = list(history or [])
        skip = gr.skip()
        try:
            served = self.engine.served(model or None)
            message = self.engine.check_message(message, served)
            chosen = {name: type(default)(value)
                      for (name, default), value in zip(defaults.DECODING.items(), decoding, strict=False)}
            options = TurnOptions(top_k=int(top_k), temperature=float(temperature), max_new_tokens=int(max_tokens),
                                  model=model or None, **chosen)
            if session_id is None:
                session_id = self.engine.create_session(title_from(message), collection or None).id
            changed_elsewhere = self.visible_count(session_id) != len(history)
            ticket = self.engine.ask(session_id, message, options)
        except USER_ERRORS as exc:
            yield message, skip, session_id, skip, skip, render.error_note(exc), skip
            return
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": "…"}]
        yield "", history, session_id, gr.update(choices=self.session_choices(), value=session_id), skip, "", \
            session_id
        answer = ""
        for event in ticket:
            if isinstance(event, Waiting):
                history[-1]["content"] = f"_Waiting for the model: {event.ahead + 1} turn(s) ahead of this one…_"
            elif isinstance(event, Retrieved):
                history[-1]["content"] = f"_Reading {len(event.sources)} passage(s)…_" if event.sources else "…"
            elif isinstance(event, Piece) and event.text:
                answer += event.text
                history[-1]["content"] = answer
            elif isinstance(event, Finished):
                result = event.result
                notice = result.notice or ""
                if changed_elsewhere:
                    notice = ("This session was also changed in another tab; all of its messages are shown. "
                              + notice).strip()
                yield (skip, render.chat_history(self.engine.messages(session_id)), session_id,
                       gr.update(choices=self.session_choices(), value=session_id),
                       self.status(model, result.state_tokens, result.state_bytes),
                       render.error_note(Exception(notice)) if notice else "", skip)
                return
            elif isinstance(event, Failed | Cancelled):
                error = event.error if isinstance(event, Failed) else Exception("The turn was cancelled.")
                if not isinstance(error, USER_ERRORS):
                    log.error("turn failed", exc_info=error)
                    error = Exception(f"The answer failed: {error}. Your message is back in the box; try again.")
                yield message, history[:-2], session_id, skip, skip, render.error_note(error), skip
                return
            else:
                continue
            yield skip, history, skip, skip, skip, skip, skip

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
            chatbot = gr.Chatbot(label="Chat", height=520, elem_id="rillet-chat", buttons=["copy"],
                                 placeholder="Ask about the files of the chosen collection.")
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

            on = {"api_visibility": "private"}  # the page's own events; the programmatic API is ui/api.py
            session_outputs = [session, sessions, chatbot, status, notice, remembered, title]
            demo.load(self.on_load, [remembered, model],
                      [session, sessions, chatbot, collection, status, welcome, title, notice], **on)
            new_btn.click(self.new_session, [collection, model], session_outputs, **on)
            sessions.input(self.open_session, [sessions, model],
                           [session, chatbot, collection, status, notice, remembered, title], **on)
            rename_btn.click(self.rename, [session, title], [sessions, notice], **on)
            title.submit(self.rename, [session, title], [sessions, notice], **on)
            export_btn.click(self.export, [session, export_fmt], [export_file, notice], **on)
            delete_btn.click(self.ask_delete, [session], [confirm_delete, confirm_text], **on)
            no_btn.click(lambda: gr.update(visible=False), None, [confirm_delete], **on)
            yes_btn.click(self.delete, [session, model],
                          [session, sessions, chatbot, status, confirm_delete, notice, remembered, title], **on)
            import_btn.upload(self.import_file, [import_btn, model], session_outputs, **on)

            collection.input(self.choose_collection, [session, collection], [notice], **on)
            index_btn.click(self.index, [folder, collection_name], [index_status, collection, welcome],
                            concurrency_limit=1, concurrency_id="index", **on)
            docs_btn.click(self.index_docs, None, [index_status, collection, welcome], concurrency_limit=1,
                           concurrency_id="index", **on)
            delete_coll_btn.click(self.ask_delete_collection, [collection], [confirm_coll, confirm_coll_text], **on)
            coll_no.click(lambda: gr.update(visible=False), None, [confirm_coll], **on)
            coll_yes.click(self.delete_collection, [collection], [collection, confirm_coll, notice, welcome], **on)

            ask_inputs = [message, session, collection, chatbot, top_k, temperature, max_tokens, model, *decoding]
            ask_outputs = [message, chatbot, session, sessions, status, notice, remembered]
            for trigger in (message.submit, send_btn.click):
                trigger(self.respond, ask_inputs, ask_outputs, concurrency_limit=None, show_progress="hidden", **on)
            stop_btn.click(self.stop, [session], [notice], concurrency_limit=None, queue=False, **on)
            model.input(self.model_changed, [session, model], [status], **on)
            add_api(self.engine)
        return demo


def build_app(engine: ChatEngine) -> gr.Blocks:
    return Page(engine).build()
