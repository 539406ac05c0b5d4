"""The import rules of ARCHITECTURE.md hold in the code: the table is read from the document itself, so the
document and the code cannot drift apart, and any import outside it (module-level or inside a function) fails."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root, with forward slashes
    line: int
    module: str  # the full dotted name imported

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def _table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, cells stripped of backticks."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    return rows


def _names(cell: str) -> set[str]:
    return {name.strip() for name in cell.split(",") if name.strip() and name.strip() != "—"}


def package_rules(text: str) -> dict[str, set[str]]:
    return {row[0]: _names(row[2]) for row in _table(text, "| package |")}


def library_rules(text: str) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for row in _table(text, "| library |"):
        for library in _names(row[0]):
            rules[library] = {name.split(" ")[0] for name in _names(row[1])}
    return rules


def imports_under(root: Path, packages: list[str]) -> list[Import]:
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
                if isinstance(node, ast.Import):
                    found += [Import(rel, node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.append(Import(rel, node.lineno, node.module))
    return found


def violations(root: Path, text: str) -> list[str]:
    packages = package_rules(text)
    libraries = library_rules(text)
    bad = []
    for imp in imports_under(root, sorted(packages)):
        own = imp.file.split("/")[0]
        if imp.top in packages and imp.top != own and imp.top not in packages[own]:
            bad.append(
                f"{imp.file}:{imp.line} imports {imp.module}: "
                f"{own} may import only {sorted(packages[own]) or 'none of ours'}"
            )
        if imp.top in libraries:
            allowed = libraries[imp.top]
            if own not in allowed and imp.file not in allowed:
                bad.append(f"{imp.file}:{imp.line} imports {imp.module}: only {sorted(allowed)} may")
    return bad


def test_every_package_folder_is_in_the_table() -> None:
    rules = package_rules(DOC.read_text())
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk == set(rules), f"packages on disk {sorted(on_disk)} vs ARCHITECTURE.md {sorted(rules)}"
    for allowed in rules.values():
        assert allowed <= set(rules), f"unknown package in the table: {sorted(allowed - set(rules))}"


def test_imports_follow_architecture_md() -> None:
    assert violations(ROOT, DOC.read_text()) == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The rule is real: a harness module importing the model, even inside a function, is reported."""
    text = DOC.read_text()
    for package in package_rules(text):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "harness" / "sneaky.py").write_text("def f():\n    from nas.model import CodeLM\n    return CodeLM\n")
    (tmp_path / "nas" / "chatty.py").write_text("import langgraph.graph\n")
    found = violations(tmp_path, text)
    assert any(
        re.match(r"harness/sneaky.py:2 imports nas.model: harness may import only \['sandbox'\]", v) for v in found
    ), found
    assert any(v.startswith("nas/chatty.py:1 imports langgraph.graph") for v in found), found
    assert len(found) == 2
