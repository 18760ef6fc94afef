"""Outlines: definitions of every supported language with their names and line spans; prose headings."""

from __future__ import annotations

import pytest

from retrieval.code_outline import outline
from retrieval.document import Section, split_lines
from retrieval.prose_outline import markdown_outline, rst_outline


def flat(sections: list[Section], depth: int = 0) -> list[tuple[int, str | None, int, int]]:
    """(depth, name, first line, last line) with 1-based inclusive lines, as an editor shows them."""
    out = []
    for s in sections:
        if s.name:
            out.append((depth, s.name, s.start + 1, s.end))
        out += flat(s.children, depth + 1 if s.name else depth)
    return out


def names(src: str, language: str) -> list[tuple[int, str | None, int, int]]:
    return flat(outline(src, split_lines(src), language))


def test_python_definitions_with_decorators_and_comments() -> None:
    src = (
        "import os\n"             # 1
        "\n"                      # 2
        "# A point.\n"            # 3
        "@dataclass\n"            # 4
        "class Point:\n"          # 5
        "    x: int\n"            # 6
        "\n"                      # 7
        "    def norm(self):\n"   # 8
        "        return self.x\n"  # 9
        "\n"                      # 10
        "async def main():\n"     # 11
        "    pass\n"              # 12
    )
    assert names(src, "python") == [(0, "class Point", 3, 9), (1, "def norm", 8, 9), (0, "def main", 11, 12)]


def test_python_2_code_falls_back_to_tree_sitter() -> None:
    src = "def old():\n    print 'hello'\n\nclass Legacy:\n    pass\n"
    found = [n for _, n, _, _ in names(src, "python")]
    assert "class Legacy" in found


CASES = {
    "javascript": ("// adds\nfunction add(a, b) {\n  return a + b;\n}\n"
                   "class Shape {\n  area() {\n    return 0;\n  }\n}\n"
                   "export function sub(a, b) { return a - b; }\n",
                   [(0, "function add", 1, 4), (0, "class Shape", 5, 9), (1, "method area", 6, 8),
                    (0, "function sub", 10, 10)]),
    "typescript": ("interface Point { x: number }\nexport class Box {\n  width(): number { return 1; }\n}\n",
                   [(0, "interface Point", 1, 1), (0, "class Box", 2, 4), (1, "method width", 3, 3)]),
    "go": ("package main\n\n// Area computes.\nfunc Area(r float64) float64 {\n\treturn r * r\n}\n\n"
           "type Point struct {\n\tX int\n}\n\nfunc (p Point) Norm() int {\n\treturn p.X\n}\n",
           [(0, "function Area", 3, 6), (0, "type Point", 8, 10), (0, "method Norm", 12, 14)]),
    "rust": ("struct Point { x: i32 }\nimpl Point {\n    fn norm(&self) -> i32 { self.x }\n}\n",
             [(0, "struct Point", 1, 1), (0, "impl Point", 2, 4), (1, "function norm", 3, 3)]),
    "java": ("public class Circle {\n  public Circle() {}\n  double area() { return 1.0; }\n}\n",
             [(0, "class Circle", 1, 4), (1, "constructor Circle", 2, 2), (1, "method area", 3, 3)]),
    "c": ("struct point { int x; };\nint add(int a, int b) {\n  return a + b;\n}\n"
          "static char *name(void) { return 0; }\n",
          [(0, "struct point", 1, 1), (0, "function add", 2, 4), (0, "function name", 5, 5)]),
    "cpp": ("namespace geo {\nclass Circle {\n public:\n  double area() const { return 1; }\n};\n}\n",
            [(0, "namespace geo", 1, 6), (1, "class Circle", 2, 5), (2, "function area", 4, 4)]),
    "csharp": ("namespace App {\n  class Program {\n    static void Main() {}\n  }\n}\n",
               [(0, "namespace App", 1, 5), (1, "class Program", 2, 4), (2, "method Main", 3, 3)]),
    "ruby": ("module Geo\n  class Circle\n    def area\n      1\n    end\n  end\nend\n",
             [(0, "module Geo", 1, 7), (1, "class Circle", 2, 6), (2, "method area", 3, 5)]),
    "php": ("<?php\nclass Circle {\n  function area() { return 1; }\n}\nfunction helper() {}\n",
            [(0, "class Circle", 2, 4), (1, "method area", 3, 3), (0, "function helper", 5, 5)]),
    "kotlin": ("class Circle {\n  fun area(): Double = 1.0\n}\n",
               [(0, "class Circle", 1, 3), (1, "function area", 2, 2)]),
    "bash": ("greet() {\n  echo hi\n}\n", [(0, "function greet", 1, 3)]),
}


@pytest.mark.parametrize("language", sorted(CASES))
def test_tree_sitter_definitions(language: str) -> None:
    src, expected = CASES[language]
    assert names(src, language) == expected


def test_language_without_grammar_has_no_outline() -> None:
    assert outline("a = 1\n", ["a = 1", ""], "make") == []


def test_markdown_headings_nest_and_fences_hide_hashes() -> None:
    lines = split_lines("# Top\nintro\n## A\n```\n# not a heading\n```\n### A1\ntext\n## B\nSetext\n------\nend\n")
    # "------" under a line makes a level-2 heading, a sibling of "## B".
    assert flat(markdown_outline(lines)) == [(0, "Top", 1, 13), (1, "A", 3, 8), (2, "A1", 7, 8), (1, "B", 9, 9),
                                             (1, "Setext", 10, 13)]


def test_rst_levels_follow_first_use_of_each_adornment() -> None:
    lines = split_lines("=====\nTitle\n=====\n\nIntro\n\nPart\n----\n\ntext\n\nOther\n-----\nmore\n")
    assert flat(rst_outline(lines)) == [(0, "Title", 1, 15), (1, "Part", 7, 11), (1, "Other", 12, 15)]
