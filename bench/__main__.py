"""List the benchmarks, or run one or all of them.

    python -m bench                     list them, with what each measures
    python -m bench NAME [ARGS ...]     run one: the same as `python -m bench.NAME [ARGS ...]`
    python -m bench all                 run every one in turn, each with its defaults (hours on a CPU)

Each runs in its own process (several set OpenMP's settings before torch loads) and writes
bench/results/NAME.md. Some read the shared evaluation data (RILLET_SHARED_DATA, by default
../shared/data) and say what is missing when it is absent; kernels_gpu needs a CUDA GPU.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    """Every benchmark module's name and the first paragraph of its docstring (read without importing it),
    marked when the module reads the shared evaluation data."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        needs = " [reads the shared evaluation data]" if "shared_file(" in source else ""
        found[path.stem] = doc.split("\n\n")[0].replace("\n", " ") + needs
    return found


def listing() -> str:
    known = benchmarks()
    width = max(map(len, known))
    rows = [f"  {name:<{width}}  {summary}" for name, summary in known.items()]
    return "\n".join(["Benchmarks (python -m bench NAME [ARGS], or `all`; NAME --help for its options):", *rows])


def run(name: str, args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", f"bench.{name}", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name, args = argv[0], argv[1:]
    if name == "all":
        failed = [each for each in benchmarks() if run(each, args) != 0]
        if failed:
            print(f"Failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    if name not in benchmarks():
        print(f"No benchmark named {name!r}.\n\n{listing()}", file=sys.stderr)
        return 2
    return run(name, args)


if __name__ == "__main__":
    sys.exit(main())
