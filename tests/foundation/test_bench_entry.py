"""`python -m bench` (what `make bench` runs) lists the benchmarks and runs one by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_lists_the_benchmarks_with_what_each_measures() -> None:
    listed = bench()
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    perplexity = next(line for line in lines if line.split()[:1] == ["perplexity"])
    assert "Perplexity on the first 4,096 tokens of WikiText-2" in perplexity
    assert "shared evaluation data" in perplexity
    indexing = next(line for line in lines if line.split()[:1] == ["indexing"])
    assert "Python standard library" in indexing and "shared" not in indexing
    assert {"teacher", "student", "kernels_gpu", "search_latency"} <= {line.split()[0] for line in lines[1:]}


def test_runs_one_by_name_and_refuses_an_unknown_name() -> None:
    helped = bench("search_latency", "--help")
    assert helped.returncode == 0 and "--queries" in helped.stdout, helped.stderr
    unknown = bench("no_such_bench")
    assert unknown.returncode == 2 and "No benchmark named 'no_such_bench'" in unknown.stderr
