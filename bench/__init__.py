"""Benchmarks: each script prints a table, compares with a baseline measured in the same run and writes
its results under bench/results/."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# As `rillet serve` runs (app/cli.py): idle OpenMP threads sleep after a short spin. Set before any
# benchmark imports torch; a benchmark that runs llama.cpp removes both for its worker.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def shared_file(relative: str) -> Path:
    """A file of the shared evaluation data: RILLET_SHARED_DATA, by default `../shared/data` beside the
    repository (WikiText-2 in text/, the Paul Graham essays in niah/, CoSQA in cosqa/). A clone has none of
    it, so when the file is absent the benchmark stops, naming the file and where it was looked for."""
    root = Path(os.environ.get("RILLET_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
    path = root / relative
    if not path.is_file():
        raise SystemExit(f"This benchmark reads {relative} from the shared evaluation data, and {path} is "
                         "missing. Set RILLET_SHARED_DATA to the folder that holds it (text/, niah/, cosqa/).")
    return path


def write_keeping_notes(path: Path, lines: list[str]) -> None:
    """Write a results file from `lines`, keeping the hand-written `## Notes` section of the previous one."""
    path.parent.mkdir(exist_ok=True)
    previous = path.read_text() if path.exists() else ""
    notes = previous[previous.index("## Notes"):] if "## Notes" in previous else ""
    path.write_text("\n".join(lines) + "\n\n" + notes)
