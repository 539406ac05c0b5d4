"""One experiment in full, for the console's experiment page: its commit (kept) or discarded ref with the whole
diff, the code and configuration at that commit, the plan's words, the editor's transcript, the metrics and the
command that re-makes it.

Git is only read (``git show``, ``git ls-tree``) through :func:`sandbox.workspace.run_git`, the project's one way
of running git in a workspace (no hooks, no config, no keys), so a run can be inspected while it is being written.
Every text shown passes :func:`sandbox.redact.redact`: API keys never reach the page, nor a tail of one.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import run_folder_layout as layout
from sandbox.redact import redact, secret_values
from serve.console_runs import EXPERIMENT_ID, Experiment, Run, UnknownRun, valid_id

MAX_DIFF_BYTES = 2_000_000  # a diff over this is cut (and says so): a page stays loadable
MAX_FILE_BYTES = 200_000
CODE_SUFFIXES = (".py",)
CONFIG_DIR = "configs/"
TRANSCRIPTS = ("claude_transcript.jsonl", "gui_transcript.jsonl")
COMMAND_JSON = "command.json"  # written by the agent beside each worker's output: how the worker was started


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str


@dataclass
class ExperimentDetail:
    row: Experiment
    ref: str  # the commit sha shown ("" when the experiment left no commit)
    ref_kind: str  # "commit" (kept), "discarded ref" or "none"
    diff: str
    code: list[SourceFile]
    configs: list[SourceFile]
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
    if ref:
        diff = _git_text(workspace, problems, "show", "--format=fuller", "--stat", "--patch", ref, limit=MAX_DIFF_BYTES)
        code, configs = _tree_files(workspace, ref, problems)
        plan_file = next((c for c in configs if c.path == f"{CONFIG_DIR}plan.json"), None)
        if plan_file is not None:
            try:
                loaded = json.loads(plan_file.text)
                plan = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                problems.append("configs/plan.json at that commit is not JSON")
    exp_folder = workspace / layout.EXPERIMENT_RUNS / exp_id
    metrics = _read_metrics(exp_folder / layout.METRICS_JSON, problems)
    code_change = plan.get("code_change") if isinstance(plan.get("code_change"), str) else None
    return ExperimentDetail(
        row=row,
        ref=ref,
        ref_kind=kind,
        diff=redact(diff, secrets),
        code=[SourceFile(f.path, redact(f.text, secrets)) for f in code],
        configs=[SourceFile(f.path, redact(f.text, secrets)) for f in configs],
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


def _tree_files(workspace: Path, ref: str, problems: list[str]) -> tuple[list[SourceFile], list[SourceFile]]:
    """The model code (``.py`` files) and the configurations at ``ref``."""
    names = _git_text(workspace, problems, "ls-tree", "-r", "--name-only", ref).splitlines()
    code, configs = [], []
    for name in names:
        if name.startswith(CONFIG_DIR):
            configs.append(SourceFile(name, _git_text(workspace, problems, "show", f"{ref}:{name}")))
        elif name.endswith(CODE_SUFFIXES):
            code.append(SourceFile(name, _git_text(workspace, problems, "show", f"{ref}:{name}")))
    return code, configs


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
