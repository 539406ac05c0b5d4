"""One experiment in full, for the console's experiment page: its commit (kept) or discarded ref with the whole
diff, the code and configuration at that commit (shown side by side, the files the commit changed marked and listed
first), the model code the trained model carries (its ``code.json``), the plan's words, the editor's transcript, the
metrics and the command that re-makes it.

Git is only read (``git show``, ``git ls-tree``) through :func:`sandbox.workspace.run_git`, the project's one way
of running git in a workspace (no hooks, no config, no keys), so a run can be inspected while it is being written.
Every text shown passes :func:`sandbox.redact.redact`: API keys never reach the page, nor a tail of one.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import run_folder_layout as layout
from harness.errors import UserError
from harness.model_code import CODE_DIR, CodeRecord, read_code_record
from sandbox.redact import redact, secret_values
from serve.console_runs import EXPERIMENT_ID, Experiment, Run, UnknownRun, valid_id

MAX_DIFF_BYTES = 2_000_000  # a diff over this is cut (and says so): a page stays loadable
MAX_FILE_BYTES = 200_000
CODE_SUFFIXES = (".py",)
CONFIG_DIR = "configs/"
TRANSCRIPTS = ("claude_transcript.jsonl", "gui_transcript.jsonl")
COMMAND_JSON = "command.json"  # written by the agent beside each worker's output: how the worker was started
CARRIED_NAME = re.compile(r"^nas/[a-z_][a-z0-9_]*\.py$")  # a carried model-code file, as code.json names them


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    changed: bool = False  # the experiment's commit added or modified it


@dataclass
class ExperimentDetail:
    row: Experiment
    ref: str  # the commit sha shown ("" when the experiment left no commit)
    ref_kind: str  # "commit" (kept), "discarded ref" or "none"
    diff: str
    code: list[SourceFile]  # changed files first, then the rest in tree order
    configs: list[SourceFile]
    changed: list[str]  # every path the commit changed against its parent (deleted ones too)
    carried: CodeRecord | None  # the code.json beside the trained model: which model code it was trained with
    carried_files: list[SourceFile]  # that code's files, shown where the commit's tree holds no model code
    rationale: str
    code_change: str | None
    journal: str
    transcript: str
    metrics: dict[str, Any]
    reproduce: str
    problems: list[str] = field(default_factory=list)


def read_experiment(run: Run, exp_id: str, runs_dir: Path, api_key: str | None = None) -> ExperimentDetail:
    """The experiment ``exp_id`` of ``run`` (404 for an id that is not an experiment id or not in results.tsv)."""
    if not valid_id(exp_id, EXPERIMENT_ID):
        raise UnknownRun(exp_id)
    row = next((e for e in run.experiments if e.id == exp_id), None)
    if row is None:
        raise UnknownRun(exp_id)
    secrets = secret_values(extra=[api_key])
    workspace = run.folder / layout.WORKSPACE
    problems: list[str] = []
    ref, kind = _find_ref(workspace, row, problems)
    diff, plan = "", {}
    code: list[SourceFile] = []
    configs: list[SourceFile] = []
    changed: list[str] = []
    if ref:
        diff = _git_text(workspace, problems, "show", "--format=fuller", "--stat", "--patch", ref, limit=MAX_DIFF_BYTES)
        names = _git_text(workspace, problems, "diff-tree", "--root", "--no-commit-id", "-r", "--name-only", ref)
        changed = names.splitlines()
        code, configs = _tree_files(workspace, ref, set(changed), problems)
        plan_file = next((c for c in configs if c.path == f"{CONFIG_DIR}plan.json"), None)
        if plan_file is not None:
            try:
                loaded = json.loads(plan_file.text)
                plan = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                problems.append("configs/plan.json at that commit is not JSON")
    exp_folder = workspace / layout.EXPERIMENT_RUNS / exp_id
    metrics = _read_metrics(exp_folder / layout.METRICS_JSON, problems)
    carried = _carried_code(exp_folder, problems)
    # a configuration-only run's workspace holds no model code: the code its model was built by is the carried copy
    carried_files = _carried_files(exp_folder, carried) if carried is not None and not code else []
    code_change = plan.get("code_change") if isinstance(plan.get("code_change"), str) else None
    return ExperimentDetail(
        row=row,
        ref=ref,
        ref_kind=kind,
        diff=redact(diff, secrets),
        code=[SourceFile(f.path, redact(f.text, secrets), f.changed) for f in code],
        configs=[SourceFile(f.path, redact(f.text, secrets), f.changed) for f in configs],
        changed=changed,
        carried=carried,
        carried_files=[SourceFile(f.path, redact(f.text, secrets)) for f in carried_files],
        rationale=redact(str(plan.get("rationale") or row.rationale), secrets),
        code_change=redact(code_change, secrets) if code_change else None,
        journal=redact(_journal_section(workspace / layout.JOURNAL, exp_id), secrets),
        transcript=redact(_transcripts(exp_folder / layout.EDIT_LOGS), secrets),
        metrics=metrics,
        reproduce=_reproduce_command(run, row, ref, kind, exp_folder, runs_dir),
        problems=problems,
    )


def _find_ref(workspace: Path, row: Experiment, problems: list[str]) -> tuple[str, str]:
    if row.decision == "keep" and row.commit:
        sha = _git_text(workspace, problems, "rev-parse", "--verify", "--quiet", f"{row.commit}^{{commit}}").strip()
        return (sha, "commit") if sha else ("", "none")
    ref = f"{layout.DISCARDED_REF_PREFIX}{row.id}"
    sha = _git_text(workspace, [], "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    if sha:
        return sha, "discarded ref"
    problems.append(f"no commit and no {ref}: this experiment changed nothing in the workspace (or its ref is gone)")
    return "", "none"


def _git_text(workspace: Path, problems: list[str], *args: str, limit: int = MAX_FILE_BYTES) -> str:
    if not (workspace / ".git").exists():
        problems.append("the workspace has no git repository: diffs cannot be shown")
        return ""
    try:
        # GitPython refuses to import where git is not installed: `autonas` (and the server) start without it
        from sandbox.workspace import run_git

        out = run_git(workspace, *args, check=False)
    except (OSError, RuntimeError, ImportError) as err:  # ImportError: GitPython finds no git installed
        problems.append(f"git {args[0]} failed: {str(err).splitlines()[0] if str(err) else err}")
        return ""
    text = out[:limit].decode("utf-8", "replace")
    return text + (f"\n… cut at {limit:,} bytes\n" if len(out) > limit else "")


def _tree_files(
    workspace: Path, ref: str, changed: set[str], problems: list[str]
) -> tuple[list[SourceFile], list[SourceFile]]:
    """The model code (``.py`` files) and the configurations at ``ref``, each list with the ``changed`` files first."""
    names = _git_text(workspace, problems, "ls-tree", "-r", "--name-only", ref).splitlines()
    code: list[SourceFile] = []
    configs: list[SourceFile] = []
    for name in names:
        if name.startswith(CONFIG_DIR) or name.endswith(CODE_SUFFIXES):
            f = SourceFile(name, _git_text(workspace, problems, "show", f"{ref}:{name}"), name in changed)
            (configs if name.startswith(CONFIG_DIR) else code).append(f)
    return _changed_first(code), _changed_first(configs)


def _changed_first(files: list[SourceFile]) -> list[SourceFile]:
    return sorted(files, key=lambda f: not f.changed)  # stable: tree order within each group


def _carried_code(exp_folder: Path, problems: list[str]) -> CodeRecord | None:
    """The experiment's ``code.json`` (written beside a trained model), or None where it trained nothing."""
    try:
        return read_code_record(exp_folder)
    except UserError as err:
        problems.append(str(err))
    except OSError as err:
        problems.append(f"code.json cannot be read: {err.strerror or err}")
    return None


def _carried_files(exp_folder: Path, record: CodeRecord) -> list[SourceFile]:
    """The files ``code.json`` names, read from the experiment's ``code/``: plain files only, never through a link,
    only ``nas/<module>.py`` names (a record cannot point the page at another file)."""
    root = exp_folder / CODE_DIR
    out = []
    for name in record.files:
        path = root / name
        if not CARRIED_NAME.match(name) or any(p.is_symlink() for p in (root, path.parent, path)):
            continue
        try:
            data = path.read_bytes()[:MAX_FILE_BYTES]
        except OSError:
            continue
        out.append(SourceFile(name, data.decode("utf-8", "replace")))
    return out


def _read_metrics(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        problems.append(f"{layout.EXPERIMENT_RUNS}/{path.parent.name}/{layout.METRICS_JSON} is missing")
        return {}
    except (OSError, ValueError):
        problems.append(f"{layout.METRICS_JSON} cannot be read: it may be being written")
        return {}
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))} if isinstance(data, dict) else {}


def _journal_section(path: Path, exp_id: str) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    start = text.find(f"## {exp_id}:")
    if start < 0:
        return ""
    end = text.find("\n## e", start + 1)
    return text[start : end if end >= 0 else len(text)].strip()


def _transcripts(edit_dir: Path) -> str:
    """The editors' transcripts (JSON lines), one event a line in readable form."""
    parts = []
    for name in TRANSCRIPTS:
        path = edit_dir / name
        if not path.is_file() or path.is_symlink():
            continue
        lines = [f"# {name}"]
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines()[:5000]:
            try:
                event = json.loads(raw)
            except ValueError:
                lines.append(raw)
                continue
            lines.append(_event_line(event) if isinstance(event, dict) else raw)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _event_line(event: dict[str, Any]) -> str:
    if "action" in event or "text" in event:  # the GUI editor: a screen's text and the key pressed
        action = f"[{event.get('action')}] " if event.get("action") else ""
        return f"step {event.get('step', '?')}: {action}{str(event.get('text') or '').strip()}"
    kind = event.get("type", "event")
    message = event.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        texts = [
            str(c.get("text") or c.get("name") or json.dumps(c.get("input", ""))[:400])
            for c in message["content"]
            if isinstance(c, dict)
        ]
        return f"{kind}: " + " | ".join(texts)
    return f"{kind}: {json.dumps(event)[:600]}"


def _reproduce_command(run: Run, row: Experiment, ref: str, kind: str, exp_folder: Path, runs_dir: Path) -> str:
    if kind == "commit":
        return f"autonas reproduce {shlex.quote(run.id)} {row.id} --runs-dir {shlex.quote(str(runs_dir))}"
    try:
        stored = json.loads((exp_folder / COMMAND_JSON).read_text())
        args = [str(a) for a in stored["python_args"]]
    except (OSError, ValueError, KeyError, TypeError):
        args = []
    workspace = shlex.quote(str(run.folder / layout.WORKSPACE))
    target = shlex.quote(f"/tmp/{run.id}-{row.id}")
    # git archive exports the tree without touching the workspace (a worktree or checkout would change it)
    export = f"mkdir -p {target} && git -C {workspace} archive {ref} | tar -x -C {target}" if ref else ""
    if not args:
        return export or "(this experiment left no commit and no stored command: it cannot be re-run)"
    worker = "python " + " ".join(shlex.quote(a) for a in args)
    return f"{export} && cd {target} && {worker}" if export else worker
