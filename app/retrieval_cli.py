"""What `rillet index` and `rillet search` do: wire the retrieval service to settings, draw progress,
print summaries and hits. Kept out of app/cli.py so `rillet --help` stays fast."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.config import Settings
from app.database import open_database
from app.terminal_text import line, visible
from retrieval.indexer import IndexReport
from retrieval.indexer import Progress as IndexProgress
from retrieval.service import CollectionElsewhereError, Retrieval

MiB = 1 << 20


def open_retrieval(settings: Settings, max_file_mb: float | None = None) -> Retrieval:
    settings.ensure_dirs()
    return Retrieval(open_database(settings.db_url), settings.indexes, vector_store=settings.vector_store,
                     max_file_bytes=int(max_file_mb * MiB) if max_file_mb else None)


def ensure_collection(retrieval: Retrieval, name: str, path: Path, ignore: list[str]) -> None:
    """`Retrieval.ensure_collection`, with the command line's advice when the name is taken."""
    try:
        retrieval.ensure_collection(name, path, ignore)
    except CollectionElsewhereError as exc:
        raise ValueError(f"Collection {name!r} indexes {', '.join(exc.roots)}, not {exc.root}. Choose another "
                         f"--collection name, or delete it first with `rillet collections --delete {name}`.") from None


@contextmanager
def progress_bar(console: Console) -> Iterator[callable]:  # type: ignore[valid-type]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("files · {task.fields[chunks]} chunks · {task.fields[embedded]} embedded"),
               TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("crawling", total=None, chunks=0, embedded=0, eta="?")

        def update(p: IndexProgress) -> None:
            eta = "?" if p.eta_s is None else f"{p.eta_s:.0f}s"
            bar.update(task, description=p.stage, total=p.files_total, completed=p.files_done, chunks=p.chunks,
                       embedded=p.embedded, eta=eta)

        yield update


def print_report(console: Console, report: IndexReport) -> None:
    table = Table(title=f"Collection {line(repr(report.collection))}", show_header=False)
    table.add_row("files seen", str(report.files_total))
    table.add_row("indexed (new or changed)", str(report.indexed))
    table.add_row("unchanged", str(report.unchanged))
    table.add_row("removed (gone from disk)", str(report.removed))
    for reason, count in report.skip_reasons().most_common():
        table.add_row(f"skipped: {line(reason)}", str(count))
    table.add_row("failed", str(len(report.failed)))
    table.add_row("chunks added / removed / total",
                  f"{report.chunks_added} / {report.chunks_removed} / {report.chunks_total}")
    table.add_row("embedded / reused from cache", f"{report.embedded} / {report.reused}")
    share = f" ({report.embed_seconds / report.seconds:.0%} embedding)" if report.seconds else ""
    table.add_row("time", f"{report.seconds:.1f} s{share}")
    console.print(table)
    for path, reason in report.failed:
        console.print(f"[red]failed[/red] {line(path)}: {line(reason)}")


def print_hits(console: Console, retrieval: Retrieval, name: str, query: str, k: int, path_glob: str | None,
               language: str | None, mode: str, lines: int) -> int:
    hits = retrieval.search(name, query, k, path_glob=path_glob, language=language, mode=mode)  # type: ignore[arg-type]
    if not hits:
        console.print("No matches.")
    for rank, hit in enumerate(hits, start=1):
        console.print(f"[bold]{rank:>2}. {line(hit.citation)}[/bold]  [dim]{hit.score:.4f}  {line(hit.header or '')}",
                      highlight=False)
        for text_line in hit.text.split("\n")[:lines]:
            console.print(f"      {visible(text_line)}", markup=False, highlight=False)
    return len(hits)
