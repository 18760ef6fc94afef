"""The longer fuzzing run: the property tests of tests/fuzz/ with many more (and new random) examples.

    python scripts/fuzz.py                      # 1,000 examples per test, SQLite and PostgreSQL
    python scripts/fuzz.py --examples 5000 -k indexer

`make test` runs the same tests with 20 fixed examples each. A failure prints the smallest example found
and a `@reproduce_failure` blob; add it to the test as an `@example(...)` next to the fix, so it is
checked on every run from then on. Hypothesis keeps what it found in .hypothesis/ and tries it first
next time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="examples per test and database")
    parser.add_argument("-k", default=None, help="only tests matching this pytest expression")
    args = parser.parse_args()
    env = {**os.environ, "RILLET_FUZZ_PROFILE": "fuzz", "RILLET_FUZZ_EXAMPLES": str(args.examples),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics", *(["-k", args.k] if args.k else [])]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
