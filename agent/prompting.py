"""Prompt templates: plain text files in ``prompts/`` (or a folder the user names with ``--prompts``) filled
with ``$field`` placeholders (``string.Template``: JSON braces in a template need no escaping). A person
edits them without touching code; a template that names a field the agent does not provide is refused at
start, in one line, instead of failing mid-run.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from harness.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "prompts"

FIELDS: dict[str, frozenset[str]] = {
    "planner_system": frozenset(),
    "planner": frozenset(
        {
            "goal",
            "limits",
            "time_left",
            "experiment_budget",
            "tokenizer",
            "vocab_size",
            "space",
            "incumbent",
            "noise",
            "history",
            "front",
            "feedback",
            "code_editing",
        }
    ),
    "judge_system": frozenset(),
    "judge": frozenset({"goal", "limits", "experiment", "rationale", "metrics", "incumbent", "statistics"}),
    "editor": frozenset({"workspace", "experiment", "title", "rationale", "instructions"}),
    "editor_system": frozenset({"workspace"}),
}


class Prompts:
    """The templates of one run, read and checked once."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else PACKAGE_DIR
        self.templates: dict[str, Template] = {}
        for name, allowed in FIELDS.items():
            path = self.folder / f"{name}.txt"
            if not path.is_file():
                path = PACKAGE_DIR / f"{name}.txt"  # a user folder may override only some templates
            try:
                template = Template(path.read_text())
            except OSError as err:
                raise UserError(f"cannot read prompt template {path}: {err.strerror or err}") from None
            if not template.is_valid():
                raise UserError(f"prompt template {path} has a malformed $placeholder (write $$ for a literal $)")
            unknown = set(template.get_identifiers()) - allowed
            if unknown:
                raise UserError(
                    f"prompt template {path} uses unknown field(s) {', '.join(sorted('$' + u for u in unknown))}; "
                    f"available: {', '.join(sorted('$' + a for a in allowed)) or 'none'}"
                )
            self.templates[name] = template

    def render(self, name: str, **fields: object) -> str:
        missing = FIELDS[name] - fields.keys()
        if missing:
            raise KeyError(f"prompt {name} needs {sorted(missing)}")
        return self.templates[name].substitute({k: str(v) for k, v in fields.items()})
