"""Benchmarks: each script prints a table, compares with a baseline measured in the same run and writes
its results under bench/results/."""

from pathlib import Path


def write_keeping_notes(path: Path, lines: list[str]) -> None:
    """Write a results file from `lines`, keeping the hand-written `## Notes` section of the previous one."""
    path.parent.mkdir(exist_ok=True)
    previous = path.read_text() if path.exists() else ""
    notes = previous[previous.index("## Notes"):] if "## Notes" in previous else ""
    path.write_text("\n".join(lines) + "\n\n" + notes)
