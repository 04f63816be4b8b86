"""The shape of the package's functions, computed from the code: none longer than :data:`MAX_LINES` lines and
none with compound statements (``if``, ``for``, ``while``, ``with``, ``try``, ``match``) nested deeper than
:data:`MAX_DEPTH` levels inside it, so that every function can be read on one screen.

A function's length runs from its ``def`` to its last line (docstring included); an ``elif`` is as deep as its
``if``; a function nested in another is measured on its own and does not deepen the outer one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("benchmark", "model_zoo", "kernel")
MAX_LINES = 80
MAX_DEPTH = 4

COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match) + (
    (ast.TryStar,) if hasattr(ast, "TryStar") else ())
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def nesting(node: ast.AST, depth: int = 0) -> int:
    """The deepest level of compound statements under ``node`` (``depth`` = the level of ``node`` itself)."""
    deepest = depth
    for field, value in ast.iter_fields(node):
        children = value if isinstance(value, list) else [value]
        for child in children:
            if not isinstance(child, ast.AST) or isinstance(child, SCOPES):
                continue
            if isinstance(child, COMPOUND):
                is_elif = (isinstance(node, ast.If) and field == "orelse" and len(value) == 1
                           and isinstance(child, ast.If))
                deepest = max(deepest, nesting(child, depth if is_elif else depth + 1))
            else:
                deepest = max(deepest, nesting(child, depth))
    return deepest


def function_shapes(source: str) -> list[tuple[str, int, int, int]]:
    """``(name, first line, lines, depth)`` of every function (methods and nested functions included)."""
    return [(node.name, node.lineno, node.end_lineno - node.lineno + 1, nesting(node))
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def package_shapes() -> dict[tuple[str, str], list[tuple[int, int, int]]]:
    shapes: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for name, line, lines, depth in function_shapes(path.read_text()):
                shapes.setdefault((rel, name), []).append((line, lines, depth))
    return shapes


def test_no_function_is_too_long_or_too_deep():
    problems = []
    for (rel, name), found in package_shapes().items():
        for line, lines, depth in found:
            if lines > MAX_LINES or depth > MAX_DEPTH:
                problems.append(f"{rel}:{line} {name}: {lines} lines, nesting {depth} "
                                f"(at most {MAX_LINES} lines, nesting {MAX_DEPTH})")
    assert not problems, "split these functions:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, lines, depth", [
    ("def f():\n    return 1\n", 2, 0),
    ("def f(x):\n    if x:\n        pass\n    elif x > 1:\n        pass\n    else:\n        pass\n", 7, 1),
    ("def f(x):\n    for a in x:\n        with a:\n            try:\n                while a:\n"
     "                    if a:\n                        pass\n            except E:\n                pass\n", 9, 5),
    ("def f(x):\n    if x:\n        def g():\n            if x:\n                pass\n", 5, 1),
])
def test_the_measure_counts_lines_and_nesting(source, lines, depth):
    name, _, got_lines, got_depth = function_shapes(source)[0]
    assert (name, got_lines, got_depth) == ("f", lines, depth)
