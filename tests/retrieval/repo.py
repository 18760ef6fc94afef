"""A small repository on disk with every awkward case the crawler and indexer must handle."""

from __future__ import annotations

import os
from pathlib import Path

HUGE_BYTES = 96 * 1024  # over the 64 KiB cap the tests set
MAX_FILE_BYTES = 64 * 1024

GEOMETRY = '''"""Shapes and their areas."""

import math


class Circle:
    """A circle given by its radius."""

    def __init__(self, radius: float) -> None:
        self.radius = radius

    # Area grows with the square of the radius.
    def area(self) -> float:
        return math.pi * self.radius ** 2


def rectangle_perimeter(width: float, height: float) -> float:
    """Twice the sum of the sides."""
    return 2 * (width + height)
'''

GUIDE = """# Guide

Intro paragraph about the project.

## Installation

Run the installer with the offline flag, then restart the daemon.

## Usage

Call the service and read the answer.
"""

TOPICS = [
    ("celsius_to_fahrenheit", "Convert a temperature from degrees Celsius to Fahrenheit.", "c * 9 / 5 + 32"),
    ("median_of_list", "Return the median value of a list of numbers.", "sorted(xs)[len(xs) // 2]"),
    ("is_palindrome", "Check whether a word reads the same backwards.", "w == w[::-1]"),
    ("count_vowels", "Count the vowels in an English sentence.", "sum(ch in 'aeiou' for ch in s)"),
    ("gzip_bytes", "Compress bytes with gzip before sending them over the network.", "gzip.compress(b)"),
    ("parse_iso_date", "Parse an ISO 8601 date string into a datetime object.", "datetime.fromisoformat(s)"),
    ("retry_request", "Retry an HTTP request with exponential backoff on failure.", "backoff(request)"),
    ("hash_password", "Hash a password with a random salt for storage.", "scrypt(password, salt)"),
    ("flatten_nested", "Flatten a nested list of lists into one list.", "[y for x in xs for y in x]"),
    ("read_csv_rows", "Read the rows of a CSV file as dictionaries.", "list(csv.DictReader(f))"),
    ("slugify_title", "Turn an article title into a URL slug.", "re.sub('[^a-z0-9]+', '-', t.lower())"),
    ("matrix_transpose", "Transpose a matrix given as a list of rows.", "list(map(list, zip(*m)))"),
]


def helpers_module(topics: list[tuple[str, str, str]] = TOPICS) -> str:
    """A module of small documented functions, several chunks long, one topic per function."""
    parts = ['"""Assorted helpers."""\n']
    for name, doc, body in topics:
        parts.append(f'def {name}(x):\n    """{doc}\n\n    Used across the code base; see the tests.\n    """\n'
                     f"    result = {body}\n    return result\n")
    return "\n\n".join(parts)


# Skipped by the crawler (from the name, size or kind of file alone), with the start of the reason.
CRAWL_SKIPS = {
    "image.png": "binary file (.png)",
    "app.min.js": "minified or bundled file",
    "huge.txt": "larger than",
    "loop": "symbolic link to a folder that is indexed already",
    "pkg/up": "symbolic link to a folder that is indexed already",
    "outside": "outside the indexed folder",
    "dangling": "broken symbolic link",
    "pipe": "not a regular file",
    "pkg/alias.py": "symbolic link to a file indexed under its own path (pkg/geometry.py)",
}
# Skipped once read.
CONTENT_SKIPS = {"blob.dat": "binary file (contains NUL bytes)", "empty.py": "empty file"}
EXPECTED_FAILS = {"broken.txt": "no text encoding fits"}
EXPECTED_INDEXED = {".gitignore", "pkg/.gitignore", "pkg/geometry.py", "pkg/generated_keep.py", "pkg/helpers.py",
                    "docs/guide.md", "legacy.txt"}
# Hidden by .gitignore files or tool-folder rules: never reported at all.
EXPECTED_HIDDEN = {"app.log", "secret.txt", "build/out.py", "pkg/generated_a.py", ".venv/lib.py",
                   "myenv/tool.py", "node_modules/dep.js", ".git/config", "notes/draft.md"}


def build_repo(root: Path, outside: Path) -> Path:
    """Write the repository under `root`; `outside` is a folder elsewhere for a link to point at."""
    files = {
        ".gitignore": "*.log\nbuild/\nsecret.txt\nnotes/\n",
        "app.log": "log line\n",
        "secret.txt": "password\n",
        "build/out.py": "print('built')\n",
        "notes/draft.md": "# Draft\n",
        "pkg/.gitignore": "generated_*.py\n!generated_keep.py\n",
        "pkg/generated_a.py": "A = 1\n",
        "pkg/generated_keep.py": "KEEP = 'kept despite the pattern above it'\n",
        "pkg/geometry.py": GEOMETRY,
        "pkg/helpers.py": helpers_module(),
        "docs/guide.md": GUIDE,
        ".venv/pyvenv.cfg": "home = /usr\n",
        ".venv/lib.py": "x = 1\n",
        "myenv/pyvenv.cfg": "home = /usr\n",
        "myenv/tool.py": "y = 2\n",
        "node_modules/dep.js": "module.exports = 1\n",
        ".git/config": "[core]\n",
        "app.min.js": "var a=1;\n",
        "empty.py": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "blob.dat").write_bytes(b"header\x00\x01\x02binary payload")
    (root / "legacy.txt").write_bytes("Recette: café crème brûlée, déjà vu à la française.\n".encode("cp1252"))
    (root / "broken.txt").write_bytes(bytes(range(1, 256)) * 4)
    (root / "huge.txt").write_text(("a line of filler text\n" * (HUGE_BYTES // 22 + 1)), encoding="utf-8")
    os.symlink(".", root / "loop")
    os.symlink("..", root / "pkg" / "up")
    os.symlink("geometry.py", root / "pkg" / "alias.py")
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "elsewhere.py").write_text("z = 3\n")
    os.symlink(outside, root / "outside")
    os.symlink(root / "missing-target", root / "dangling")
    os.mkfifo(root / "pipe")
    return root
