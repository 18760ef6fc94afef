"""The `rillet` command line (typer)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.chat import defaults
from app.config import Settings, get_settings
from app.terminal_text import line, text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: with other work on the CPU, spinning threads made
# decoding 4x slower (bench/results/teacher.md). A short spin first (~0.1 ms) keeps the back-to-back
# parallel regions of one decoding step from each waiting for a thread to wake (1.5x faster decoding).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

cli = typer.Typer(help="Rillet: a self-hosted assistant for long conversations over code and documents.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
users_cli = typer.Typer(help="User accounts of a shared server: each user logs in and sees only their own "
                        "sessions.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
console = Console()


@cli.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "alembic", "httpx", "sentence_transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@cli.command()
def config() -> None:
    """Print the effective configuration and where each value can be changed."""
    settings = get_settings()
    table = Table("setting", "value", "environment variable", title="Rillet configuration")
    for name in Settings.model_fields:
        table.add_row(name, line(getattr(settings, name)), f"RILLET_{name.upper()}")
    table.add_row("(database in force)", line(settings.db_url), "")
    console.print(table)


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations to the configured database."""
    from app.database import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.db_url, revision)
    console.print(f"Database at {line(settings.db_url)} is at revision {line(revision)}.")


def _accounts() -> object:
    from ui.server import open_accounts

    settings = get_settings()
    settings.ensure_dirs()
    accounts = open_accounts(settings)
    if accounts is None:
        console.print("[red]The database is in memory (sqlite://): users would be gone at once. Set "
                      "RILLET_DATABASE_URL to a file or a server.")
        raise typer.Exit(2)
    return accounts


def _password(password_file: Path | None) -> str:
    if password_file is not None:
        try:
            return password_file.expanduser().read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            console.print(f"[red]Cannot read a password from the first line of {line(password_file)}: {text(exc)}")
            raise typer.Exit(2) from None
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_cli.command("add")
def users_add(
    name: str = typer.Argument(..., help="User name (letters, digits, _.@-)."),
    password_file: Annotated[Path | None, typer.Option(help="Read the password from this file's first line "
                                                       "(default: ask for it).")] = None,
) -> None:
    """Add a user. The first user also takes the sessions made before; restart `rillet serve` after it."""
    from backbone.errors import UserError

    accounts = _accounts()
    first = not accounts.any()
    try:
        user = accounts.add(name, _password(password_file))
    except UserError as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    console.print(f"Added user {line(user.name)}.")
    if first:
        console.print("The first user: the existing sessions are theirs now, and from the next start of `rillet "
                      "serve` everyone logs in. `rillet users key NAME` makes an API key for /v1.")


@users_cli.command("list")
def users_list() -> None:
    """The users, with their number of sessions and API keys."""
    table = Table("name", "sessions", "API keys", "added", title="Users")
    for user in _accounts().list():
        table.add_row(line(user.name), str(user.sessions), str(user.keys), user.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@users_cli.command("remove")
def users_remove(name: str, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
    """Remove a user with their API keys and all their sessions."""
    from backbone.errors import UserError

    accounts = _accounts()
    try:
        user = next((u for u in accounts.list() if u.name == name), None) or accounts.get(name)
        if not yes and not typer.confirm(f"Remove {name} and their {user.sessions} sessions?"):
            raise typer.Exit(1)
        removed = accounts.remove(name)
    except UserError as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    from memory.recall import recall_paths

    for session_id in removed:  # the sessions' recall indexes go with them
        for path in recall_paths(get_settings().recall_dir, session_id):
            path.unlink(missing_ok=True)
    console.print(f"Removed user {line(name)} with {len(removed)} session{'' if len(removed) == 1 else 's'}.")


@users_cli.command("key")
def users_key(name: str) -> None:
    """Make an API key for the user (shown once: only its hash is stored)."""
    from backbone.errors import UserError

    try:
        key = _accounts().create_key(name)
    except UserError as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    console.print(f"API key for {line(name)} (shown this once; keep it secret):")
    print(key)


@users_cli.command("revoke")
def users_revoke(name: str, key_start: str = typer.Argument("", help="The first characters of the key "
                                                            "(default: every key of the user).")) -> None:
    """Revoke the user's API keys (those starting with KEY_START)."""
    from backbone.errors import UserError

    try:
        count = _accounts().revoke_keys(name, key_start)
    except UserError as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    console.print(f"Revoked {count} API key{'s' if count != 1 else ''} of {line(name)}.")


@cli.command()
def doctor() -> None:
    """Check every component and say how to fix what is missing."""
    from app.doctor import run_checks

    ok = True
    table = Table("component", "state", "fix", title="rillet doctor")
    for check in run_checks(get_settings()):
        ok &= check.ok or not check.required
        color = "[green]" if check.ok else "[red]" if check.required else "[yellow]"
        table.add_row(check.name, color + line(check.state), "" if check.ok else text(check.hint))
    console.print(table)
    raise typer.Exit(0 if ok else 1)


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (default from settings: 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default from settings: 7860)."),
    auth: str | None = typer.Option(None, help="user:password required to open the page (visible in ps: prefer "
                                    "--auth-file or RILLET_AUTH)."),
    auth_file: Annotated[Path | None, typer.Option(help="A file whose first line is user:password.")] = None,
) -> None:
    """Start the web UI.

    With a credential (--auth, --auth-file or RILLET_AUTH) the page asks for it first."""
    from ui.auth import read_credential
    from ui.server import OpenBindRefused
    from ui.server import serve as run_server

    try:
        credential, warnings = read_credential(auth, auth_file)
    except ValueError as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    for warning in warnings:
        console.print(f"[yellow]{text(warning)}")
    settings = get_settings()
    settings.ensure_dirs()
    try:
        run_server(settings, host=host or settings.host, port=port or settings.port, auth=credential)
    except OpenBindRefused as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None


@cli.command()
def chat(
    model: str | None = typer.Option(None, help="teacher or student (default from settings; the teacher serves "
                                                "while the student is not trained)."),
    collection: str | None = typer.Option(None, "--collection", "-c", help="Collection the questions search."),
    session: int | None = typer.Option(None, "--session", "-s", help="Continue this session (default: a new one)."),
    top_k: int = typer.Option(defaults.TOP_K, help="Passages retrieved per question."),
    max_new_tokens: int = typer.Option(defaults.MAX_NEW_TOKENS, help="Longest answer, in tokens."),
    temperature: float = typer.Option(defaults.TEMPERATURE, help="0 answers greedily; higher values vary more."),
    top_p: float = typer.Option(defaults.TOP_P, help="Nucleus sampling mass, in (0, 1]."),
    seed: int | None = typer.Option(None, help="Makes sampled answers repeatable."),
    repetition_penalty: float = typer.Option(defaults.REPETITION_PENALTY,
                                             help="Divides positive (multiplies negative) logits of tokens the "
                                                  "answer used recently; 1 is off."),
    presence_penalty: float = typer.Option(defaults.PRESENCE_PENALTY,
                                           help="Subtracted once from a recently used token's logit, in [-2, 2]."),
    frequency_penalty: float = typer.Option(defaults.FREQUENCY_PENALTY,
                                            help="Subtracted per use from a recently used token's logit, in [-2, 2]."),
    penalty_window: int = typer.Option(defaults.PENALTY_WINDOW,
                                       help="Latest answer tokens the penalties look at (0: the whole answer)."),
    no_repeat_ngram_size: int = typer.Option(defaults.NO_REPEAT_NGRAM_SIZE,
                                             help="Never repeat an n-gram of this many tokens in an answer (0: off)."),
    min_p: float = typer.Option(defaults.MIN_P,
                                help="When sampling, drop tokens below min-p times the top one's probability."),
    loop_stop: int = typer.Option(defaults.LOOP_STOP,
                                  help="End an answer that starts repeating a run of this many words (0: off)."),
) -> None:
    """Chat in the terminal, with the web app's sessions and collections (an empty line or Ctrl-D quits)."""
    from app.chat.terminal import run

    settings = get_settings()
    options = {"top_k": top_k, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
               "seed": seed, "repetition_penalty": repetition_penalty, "presence_penalty": presence_penalty,
               "frequency_penalty": frequency_penalty, "penalty_window": penalty_window,
               "no_repeat_ngram_size": no_repeat_ngram_size, "min_p": min_p, "loop_stop": loop_stop}
    raise typer.Exit(run(settings, console, model=model, collection=collection, session_id=session, options=options))


@cli.command()
def convert(
    stage: str = typer.Option("transfer", help="transfer (stage 1), finetune (stage 2, LoRA + KL), widen (the "
                              "newest checkpoint's feature maps, to --feature-dim) or export."),
    max_minutes: float = typer.Option(60.0, help="Stop (after a checkpoint) when this much time has passed."),
    out: str = typer.Option("backbone/checkpoints/training", help="Folder of the resumable checkpoints."),
    checkpoint_minutes: float = typer.Option(10.0, help="Minutes between checkpoints."),
    steps: int | None = typer.Option(None, help="Total steps of the stage (default: the recipe's)."),
    model_dir: Annotated[Path | None, typer.Option(help="Teacher from a Hugging Face folder (config.json, "
                                                   "*.safetensors, tokenizer.json; llama architecture).")] = None,
    gguf: Annotated[Path | None, typer.Option(help="Teacher from this GGUF file (default: RILLET_MODEL_PATH or "
                                              "the packaged SmolLM2).")] = None,
    student_path: Annotated[Path | None, typer.Option(help="Where export writes the parameters (default: "
                                                      "RILLET_STUDENT_PATH or the shipped file).")] = None,
    device: str | None = typer.Option(None, help="cpu, cuda or auto (default: RILLET_DEVICE, auto)."),
    batch_size: int | None = typer.Option(None, min=1, help="Sequences per step (default: the recipe's, 2)."),
    seq_len: int | None = typer.Option(None, min=16, help="Tokens per sequence (default: the recipe's, 1024)."),
    feature_lr_scale: float | None = typer.Option(None, min=0.0, help="The feature maps' learning rate as a "
                                                  "multiple of the schedule's (default 1)."),
    window: str | None = typer.Option(None, help="Softmax window in tokens, e.g. 128, or a window with layers "
                                      "of their own, e.g. 64,17:512,20:1024, or with one per key/value head, e.g. "
                                      "64,20:1024/128/512 (default: the checkpoint's; 128 for a new run); a resumed "
                                      "run switches to it from its next step; export writes the file with it."),
    feature_dim: int | None = typer.Option(None, min=2, help="widen: the new number of linear-attention features "
                                           "(a whole multiple of the present one, e.g. 256 from 128)."),
) -> None:
    """Linearize the teacher into the student; resumes where the last run stopped."""
    from dataclasses import replace

    import torch

    from backbone.convert import run
    from backbone.loader import load_model
    from backbone.student import DEFAULT_STUDENT, WindowError

    if model_dir is not None and gguf is not None:
        raise typer.BadParameter("give the teacher as --model-dir or as --gguf, not both")
    if device not in (None, "auto", "cpu", "cuda"):
        raise typer.BadParameter(f"unknown device {device!r}; choose cpu, cuda or auto")
    settings = get_settings(**({"device": device} if device else {}))
    if settings.resolved_device() == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device is visible to PyTorch; use --device cpu, or a CUDA build of torch")
    settings.ensure_dirs()
    folder = Path(out)
    teacher = load_model("teacher", gguf_path=gguf or (None if model_dir else settings.model_path),
                         model_dir=model_dir, cache_dir=settings.cache_dir, device=settings.resolved_device())
    if stage == "export":
        target = student_path or settings.student_path
        if target is None and (model_dir or gguf):
            raise typer.BadParameter("exporting a student of another teacher needs --student-path (the default "
                                     "file is the shipped SmolLM2 student)")
        target = target or DEFAULT_STUDENT
        try:
            digest = run.export(teacher, folder, target, window)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        console.print(f"Wrote {line(target)} (sha256 {digest[:16]}…)")
        return
    if stage == "widen":
        if feature_dim is None:
            raise typer.BadParameter("widen needs --feature-dim, e.g. 256")
        if not run.has_checkpoint(folder / "transfer"):
            raise typer.BadParameter(f"no checkpoint to widen in {folder}; run `rillet convert` first")
        try:
            record = run.widen(teacher.model, folder, feature_dim)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        console.print(f"Widened the features from {record['widened_from']} to {record['widened_to']} at step "
                      f"{record['step']}; resume with `rillet convert --stage {run.newest_stage(folder)}`.")
        return
    recipes = {"transfer": run.TRANSFER, "finetune": run.FINETUNE}
    if stage not in recipes:
        raise typer.BadParameter(f"unknown stage {stage!r}; choose transfer, finetune, widen or export")
    shape = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len),
                               ("feature_lr_scale", feature_lr_scale)) if v is not None}
    recipe = replace(recipes[stage], **shape)
    try:
        progress = run.run_stage(teacher, recipe, folder, settings.shared_data, settings.cache_dir,
                                 max_seconds=max_minutes * 60, checkpoint_seconds=checkpoint_minutes * 60,
                                 window=window)
    except WindowError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"{stage}: step {progress['step']}/{recipe.steps}, {progress['tokens']:,} tokens, "
                  f"{progress['seconds']:.0f} s of training")


@cli.command()
def index(
    path: Annotated[Path, typer.Argument(help="Folder to index (a repository or a folder of documents).")],
    collection: str | None = typer.Option(None, "--collection", "-c", help="Collection name (default: folder name)."),
    ignore: Annotated[list[str] | None,
                      typer.Option("--ignore", "-i", help="Extra gitignore pattern (repeatable).")] = None,
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep running; re-index whenever files change."),
    max_file_mb: float | None = typer.Option(None, help="Skip files larger than this (default 2 MiB, 64 for PDFs)."),
) -> None:
    """Index a folder into a collection (only new and changed files cost time), with progress."""
    from app.retrieval_cli import ensure_collection, open_retrieval, print_report, progress_bar

    name = collection or path.expanduser().resolve().name
    retrieval = open_retrieval(get_settings(), max_file_mb)
    try:
        ensure_collection(retrieval, name, path, ignore or [])
        if watch:
            from retrieval.watch import watch_collection

            console.print(f"Watching {line(path)} for changes (Ctrl-C stops).")
            watch_collection(retrieval, name, lambda report: print_report(console, report),
                             own_paths=[get_settings().data_dir])
            return
        with progress_bar(console) as update:
            report = retrieval.index(name, progress=update)
    except (ValueError, RuntimeError, NotADirectoryError) as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None
    print_report(console, report)


@cli.command()
def search(
    query: str = typer.Argument(..., help="A question or some words to look for."),
    collection: str = typer.Option(..., "--collection", "-c", help="Collection to search."),
    k: int = typer.Option(8, "-k", min=1, help="Number of hits."),
    path_glob: str | None = typer.Option(None, "--path", help="Only paths matching this glob, e.g. 'src/*.py'."),
    language: str | None = typer.Option(None, "--language", help="Only this language, e.g. python, markdown."),
    mode: str = typer.Option("hybrid", help="hybrid, vector or bm25."),
    lines: int = typer.Option(3, help="Lines of text shown under each hit."),
) -> None:
    """Search a collection; prints ranked hits as path:line."""
    from app.retrieval_cli import open_retrieval, print_hits
    from retrieval.service import CollectionNotFoundError

    retrieval = open_retrieval(get_settings())
    try:
        print_hits(console, retrieval, collection, query, k, path_glob, language, mode, lines)
    except (ValueError, CollectionNotFoundError) as exc:
        console.print(f"[red]{text(exc)}")
        raise typer.Exit(2) from None


@cli.command()
def collections(delete: str | None = typer.Option(None, "--delete", help="Delete this collection's index.")) -> None:
    """List the indexed collections (or delete one; the files themselves stay)."""
    from app.retrieval_cli import open_retrieval
    from retrieval.service import CollectionNotFoundError

    retrieval = open_retrieval(get_settings())
    if delete:
        try:
            retrieval.delete_collection(delete)
        except CollectionNotFoundError as exc:
            console.print(f"[red]{text(exc)}")
            raise typer.Exit(2) from None
        console.print(f"Deleted collection {line(repr(delete))}.")
        return
    table = Table("name", "folders", "files", "chunks", "indexed at", title="Collections")
    for info in retrieval.list_collections():
        indexed = info.indexed_at.strftime("%Y-%m-%d %H:%M") if info.indexed_at else "never"
        table.add_row(line(info.name), "\n".join(line(r) for r in info.roots) or "(documents)", str(info.files),
                      str(info.chunks), indexed)
    console.print(table)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
