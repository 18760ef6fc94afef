"""Outlines of source code: where each function, class and method starts and ends, with its name.

Python uses the standard `ast` (exact, and it knows decorators); every other language uses the
tree-sitter grammars bundled in `tree-sitter-language-pack` (no download at run time). Comment lines
right above a definition belong to it, so a chunk keeps a function together with its documentation.
"""

from __future__ import annotations

import ast
import functools
import logging

from retrieval.document import Section
from retrieval.languages import DEFINITIONS, NEEDS_BODY, WRAPPERS

log = logging.getLogger(__name__)

COMMENT_STARTS = ("#", "//", "/*", "*", "--", ";", "%", "'''", '"""')
NAME_TYPES = frozenset({"identifier", "field_identifier", "type_identifier", "constant", "name",
                        "property_identifier", "simple_identifier", "qualified_identifier", "operator_name",
                        "destructor_name", "scoped_identifier"})
KIND_SUFFIXES = ("_declaration", "_definition", "_item", "_specifier", "_statement")


def outline(text: str, lines: list[str], language: str) -> list[Section]:
    """Definitions of `text` in `language`; [] when the language has no grammar or does not parse."""
    if language == "python":
        sections = python_outline(text, lines)
        if sections is not None:
            return sections
    if language in DEFINITIONS:
        return treesitter_outline(text, lines, language)
    return []


def python_outline(text: str, lines: list[str]) -> list[Section] | None:
    """Every statement as a section (definitions named), so long code splits between statements;
    None when the file is not valid Python 3 (the tree-sitter grammar is lenient and takes over)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return _python_body(tree.body, lines, floor=0)


def _python_body(body: list[ast.stmt], lines: list[str], floor: int) -> list[Section]:
    sections: list[Section] = []
    for node in body:
        start = node.lineno - 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            start = min([start] + [d.lineno - 1 for d in node.decorator_list])
            start = _with_comments_above(lines, start, floor)
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            children = _python_body(node.body, lines, floor=start)
            section = Section(start, node.end_lineno or start + 1, f"{kind} {node.name}", children)
        else:
            section = Section(start, node.end_lineno or start + 1)
        sections.append(section)
        floor = section.end
    return sections


def _with_comments_above(lines: list[str], start: int, floor: int) -> int:
    while start > floor and lines[start - 1].strip().startswith(COMMENT_STARTS):
        start -= 1
    return start


@functools.cache
def _parser(language: str):  # type: ignore[no-untyped-def]
    from tree_sitter_language_pack import get_parser

    return get_parser(language)  # type: ignore[arg-type]


def treesitter_outline(text: str, lines: list[str], language: str) -> list[Section]:
    try:
        parser = _parser(language)
    except LookupError:
        log.debug("No tree-sitter grammar for %s; splitting by lines.", language)
        return []
    tree = parser.parse(text.encode("utf-8"))
    return _definitions(tree.root_node, lines, DEFINITIONS[language], floor=0)


def _definitions(node, lines: list[str], kinds: frozenset[str], floor: int) -> list[Section]:  # type: ignore[no-untyped-def]
    """Definitions below `node`, nested as in the source; nodes in between are looked through."""
    found: list[Section] = []
    for child in node.named_children:
        definition = _definition(child, kinds)
        if definition is not None:
            start = _with_comments_above(lines, child.start_point[0], floor)
            end = child.end_point[0] + 1
            found.append(Section(start, end, _label(definition), _definitions(definition, lines, kinds, start)))
            floor = end
        else:
            inner = _definitions(child, lines, kinds, floor)
            found.extend(inner)
            if inner:
                floor = inner[-1].end
    return found


def _definition(node, kinds: frozenset[str]):  # type: ignore[no-untyped-def]
    """The definition `node` is or wraps (`export function f`, `@decorator def f`), else None."""
    if node.type in WRAPPERS:
        return next((d for d in (_definition(c, kinds) for c in node.named_children) if d is not None), None)
    if node.type in kinds and not (node.type in NEEDS_BODY and node.child_by_field_name("body") is None):
        return node
    return None


def _label(node) -> str:  # type: ignore[no-untyped-def]
    """'class Parser', 'function parse', 'impl Point': the kind and the name of a definition."""
    kind = node.type
    for suffix in KIND_SUFFIXES:
        kind = kind.removesuffix(suffix)
    name = _name(node)
    return f"{kind} {name}" if name else kind


def _name(node) -> str | None:  # type: ignore[no-untyped-def]
    target = node.child_by_field_name("name")
    if target is None:
        declarator = node.child_by_field_name("declarator")  # C and C++: int *name(args)
        while declarator is not None and declarator.type not in NAME_TYPES:
            declarator = declarator.child_by_field_name("declarator") or next(
                (c for c in declarator.named_children if c.type in NAME_TYPES), None)
        target = declarator or node.child_by_field_name("type")  # Rust: impl Point
    if target is None:  # Kotlin keeps the name as a plain child
        target = next((c for c in node.named_children if c.type in NAME_TYPES), None)
    if target is None and node.type == "type_declaration":  # Go: type Point struct {...}
        spec = next((c for c in node.named_children if c.type == "type_spec"), None)
        return _name(spec) if spec is not None else None
    return target.text.decode("utf-8", "replace")[:80] if target is not None else None
