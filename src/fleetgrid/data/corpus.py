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


def stdlib_docstrings(limit: int | None = None, min_chars: int = 20, max_chars: int | None = None) -> list[str]:
    """Up to ``limit`` distinct docstrings of at least ``min_chars`` characters, whitespace collapsed to single
    spaces (one line each, ready for JSON Lines). The order is fixed for a given Python version.

    ``max_chars`` cuts each docstring at the last word boundary before that many characters: a text model's
    cost grows with the longest text in a batch (MiniLM reads up to 256 tokens, roughly 1,000 characters).
    """
    if limit is not None and limit < 1:
        raise InvalidInput(f"corpus limit {limit}; expected a positive integer or None for all docstrings")
    if max_chars is not None and max_chars < min_chars:
        raise InvalidInput(f"corpus max_chars {max_chars} is below min_chars {min_chars}; expected max >= min")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}  # insertion-ordered set
    for path in _source_files(stdlib):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. a file written for another Python version; the corpus does not need every file
        for doc in _docstrings(tree):
            text = " ".join(doc.split())
            if max_chars is not None and len(text) > max_chars:
                text = text[: max_chars + 1].rsplit(" ", 1)[0][:max_chars]
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
