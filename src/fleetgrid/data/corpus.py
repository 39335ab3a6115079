"""A real English text corpus found on every machine: the docstrings of the Python standard library's own source.

Sources are parsed with `ast`, never imported, so collecting the corpus runs no module code (no `antigravity`).
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from fleetgrid.errors import InvalidInput

__all__ = ["stdlib_docstrings"]

# Test suites and demos: large, repetitive, and not prose.
_SKIPPED = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "__phello__", "ensurepip"}


def _source_files(stdlib: Path) -> Iterator[Path]:
    """The stdlib's .py files, in sorted module-name order, each package's files in sorted path order."""
    for name in sorted(sys.stdlib_module_names):
        if name in _SKIPPED or name.startswith("_"):
            continue
        module_file, package_dir = stdlib / f"{name}.py", stdlib / name
        if module_file.is_file():
            yield module_file
        elif (package_dir / "__init__.py").is_file():
            for path in sorted(package_dir.rglob("*.py")):
                if not _SKIPPED.intersection(path.relative_to(package_dir).parts):
                    yield path


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.Try)):
            yield from _docstrings(child)


def stdlib_docstrings(limit: int | None = None, min_chars: int = 20) -> list[str]:
    """Up to ``limit`` distinct docstrings of at least ``min_chars`` characters, whitespace collapsed to single
    spaces (one line each, ready for JSON Lines). The order is fixed for a given Python version."""
    if limit is not None and limit < 1:
        raise InvalidInput(f"corpus limit {limit}; expected a positive integer or None for all docstrings")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}  # insertion-ordered set
    for path in _source_files(stdlib):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. a file written for another Python version; the corpus does not need every file
        for doc in _docstrings(tree):
            text = " ".join(doc.split())
            if len(text) >= min_chars and text not in seen:
                seen[text] = None
                if limit is not None and len(seen) >= limit:
                    return list(seen)
    if not seen:
        raise InvalidInput(
            f"no docstrings of at least {min_chars} characters found under {stdlib}; expected the standard "
            "library's .py sources (some minimal Python builds ship only compiled files)"
        )
    return list(seen)
