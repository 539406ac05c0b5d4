"""Per-package code-structure figures for the before/after table of a clean-up.

For each top-level package (and tests/, benchmarks/, scripts/) it prints: Python files, lines, lines over the
line-length limit, function-local imports, and functions longer than 50 lines. The counts come from `ast`, so a
string or comment that looks like an import is not counted.

A function-local import is an `import`/`from ... import` whose nearest enclosing scope is a function (a class
body or module-level `if`/`try` does not count). A function's length is `end_lineno - lineno + 1`, decorators
excluded; nested functions are counted on their own as well as inside their parent.

Usage: python scripts/code_stats.py [--root DIR] [--max-lines 50] [--line-length 120] [--list]
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = (
    "agent",
    "ccaa",
    "distill",
    "harness",
    "kernels",
    "nas",
    "sandbox",
    "serve",
    "triton_ops",
    "benchmarks",
    "scripts",
    "tests",
)


@dataclass
class FileStats:
    """What one file contributes; the `*_at` lists name each finding as 'path:line name' for --list."""

    lines: int = 0
    long_lines: int = 0
    local_imports_at: list[str] = field(default_factory=list)
    long_functions_at: list[str] = field(default_factory=list)


@dataclass
class PackageStats:
    """The sum over one package's files."""

    files: int = 0
    lines: int = 0
    long_lines: int = 0
    local_imports_at: list[str] = field(default_factory=list)
    long_functions_at: list[str] = field(default_factory=list)

    def add(self, one: FileStats) -> None:
        self.files += 1
        self.lines += one.lines
        self.long_lines += one.long_lines
        self.local_imports_at += one.local_imports_at
        self.long_functions_at += one.long_functions_at


class _Visitor(ast.NodeVisitor):
    """Walks one module keeping the stack of enclosing functions, so an import knows whether it is local."""

    def __init__(self, path: str, max_function_lines: int) -> None:
        self.path = path
        self.max_function_lines = max_function_lines
        self.functions: list[str] = []
        self.local_imports_at: list[str] = []
        self.long_functions_at: list[str] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > self.max_function_lines:
            self.long_functions_at.append(f"{self.path}:{node.lineno} {node.name} ({length} lines)")
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if self.functions:
            names = ", ".join(alias.name for alias in node.names)
            module = f"{'.' * node.level}{node.module or ''}" if isinstance(node, ast.ImportFrom) else ""
            what = f"from {module} import {names}" if module else f"import {names}"
            self.local_imports_at.append(f"{self.path}:{node.lineno} in {self.functions[-1]}(): {what}")

    visit_Import = _import
    visit_ImportFrom = _import


def file_stats(path: Path, shown_as: str, max_function_lines: int, line_length: int) -> FileStats:
    """Figures for one Python file; a file that does not parse is counted by lines only and reported on stderr."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    stats = FileStats(lines=len(lines), long_lines=sum(len(line) > line_length for line in lines))
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        print(
            f"warning: {shown_as} does not parse ({err.msg}, line {err.lineno}); counted by lines only", file=sys.stderr
        )
        return stats
    visitor = _Visitor(shown_as, max_function_lines)
    visitor.visit(tree)
    stats.local_imports_at = visitor.local_imports_at
    stats.long_functions_at = visitor.long_functions_at
    return stats


def package_stats(root: Path, package: str, max_function_lines: int, line_length: int) -> PackageStats:
    """Sum over every .py file under root/package (generated benchmark results are not code and are skipped)."""
    total = PackageStats()
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root)
        if "results" in relative.parts[:2] and relative.parts[0] == "benchmarks":
            continue
        total.add(file_stats(path, str(relative), max_function_lines, line_length))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--max-lines", type=int, default=50, help="a function longer than this is counted")
    parser.add_argument("--line-length", type=int, default=120, help="a line longer than this is counted")
    parser.add_argument("--list", action="store_true", help="also list every local import and long function")
    args = parser.parse_args(argv)

    rows: list[tuple[str, PackageStats]] = []
    for package in PACKAGES:
        if (args.root / package).is_dir():
            rows.append((package, package_stats(args.root, package, args.max_lines, args.line_length)))
    total = PackageStats()
    for _, stats in rows:
        total.files += stats.files
        total.lines += stats.lines
        total.long_lines += stats.long_lines
        total.local_imports_at += stats.local_imports_at
        total.long_functions_at += stats.long_functions_at
    rows.append(("total", total))

    header = f"{'package':<12}{'files':>7}{'lines':>8}{'>' + str(args.line_length) + ' cols':>10}"
    header += f"{'local imports':>15}{'fns >' + str(args.max_lines) + ' lines':>16}"
    print(header)
    for name, stats in rows:
        print(
            f"{name:<12}{stats.files:>7}{stats.lines:>8}{stats.long_lines:>10}"
            f"{len(stats.local_imports_at):>15}{len(stats.long_functions_at):>16}"
        )
    if args.list:
        print("\nfunction-local imports:")
        print("\n".join(f"  {where}" for where in total.local_imports_at))
        print(f"\nfunctions over {args.max_lines} lines:")
        print("\n".join(f"  {where}" for where in total.long_functions_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
