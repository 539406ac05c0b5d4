"""One experiment in full, for the console's experiment page: its commit (kept) or discarded ref with the whole
diff, the code and configuration at that commit (shown side by side, the files the commit changed marked and listed
first), the model code the trained model carries (its ``code.json``), the plan's words, the editor's transcript, the
metrics and the command that re-makes it.

Git is only read (``git show`` with no diff driver, ``ls-tree``, ``cat-file``) through
:func:`sandbox.workspace.run_git_head`, the project's way of running git in a workspace (no hooks, no global config,
no keys) holding no more of its output than is shown, so a run can be inspected while it is being written.
Every text shown passes :func:`sandbox.redact.redact`: API keys never reach the page, nor a tail of one.

The experiment's folder and the workspace files beside git (metrics, code record, carried code, transcripts, journal)
are written by edited, untrusted code: they are read only through :func:`_read_inside`, never through a link (the
file or a folder on the way), only as regular files (a FIFO is refused, not waited on) and only their start, and what
git shows is capped per file and in all, so a page stays bounded whatever the run folder holds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import run_folder_layout as layout
from harness.errors import UserError
from harness.model_code import CODE_DIR, CODE_RECORD, CodeRecord, parse_code_record
from harness.run_folder_layout import COMMAND_JSON, is_worker_invocation
from sandbox.redact import redact, secret_values
from sandbox.safe_files import UnsafeFile, read_regular_head
from serve.console_runs import EXPERIMENT_ID, MAX_JOURNAL_BYTES, Experiment, Run, UnknownRun, valid_id

MAX_DIFF_BYTES = 2_000_000  # a diff over this is cut (and says so): a page stays loadable
MAX_FILE_BYTES = 200_000
MAX_SHOWN_BYTES = 3_000_000  # the code and configuration files shown, all together; past it a file is only named
MAX_SHOWN_FILES = 400
MAX_JSON_BYTES = 4 * 2**20  # metrics.json, code.json, command.json
MAX_TRANSCRIPT_BYTES = 2_000_000  # per transcript file; the rest is cut (and says so)
MAX_LINE_CHARS = 2_000  # per transcript line
NO_DRIVERS = ("show", "--no-textconv", "--no-ext-diff")  # git show running nothing the repository names
SHA = re.compile(r"[0-9a-f]{1,40}")  # a commit as results.tsv names it: hex only, so never an option or a path
CODE_SUFFIXES = (".py",)
CONFIG_DIR = "configs/"
TRANSCRIPTS = ("claude_transcript.jsonl", "gui_transcript.jsonl")
CARRIED_NAME = re.compile(r"^nas/[a-z_][a-z0-9_]*\.py$")  # a carried model-code file, as code.json names them


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    changed: bool = False  # the experiment's commit added or modified it
    note: str = ""  # why the text is cut or left out (too large, over the page's budget)


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
        # no textconv, no external diff: a .git/config planted during an edit (restored only after it) or a driver
        # named in .gitattributes would otherwise run a command of the editor's choosing in the server
        diff = _git_text(
            workspace, problems, *NO_DRIVERS, "--format=fuller", "--stat", "--patch", ref, limit=MAX_DIFF_BYTES
        )
        names = _git_text(
            workspace,
            problems,
            "diff-tree",
            "--root",
            "--no-commit-id",
            "-r",
            "--name-only",
            "-z",
            ref,
            limit=MAX_DIFF_BYTES,
        )
        changed = [name for name in names.split("\0") if name]
        code, configs = _tree_files(workspace, ref, set(changed), problems)
        plan_file = next((c for c in configs if c.path == f"{CONFIG_DIR}plan.json"), None)
        if plan_file is not None:
            try:
                loaded = json.loads(plan_file.text)
                plan = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                problems.append("configs/plan.json at that commit is not JSON")
    exp_folder = workspace / layout.EXPERIMENT_RUNS / exp_id
    metrics = _read_metrics(workspace, exp_folder / layout.METRICS_JSON, problems)
    carried = _carried_code(workspace, exp_folder, problems)
    # a configuration-only run's workspace holds no model code: the code its model was built by is the carried copy
    carried_files = _carried_files(workspace, exp_folder, carried, problems) if carried is not None and not code else []
    code_change = plan.get("code_change") if isinstance(plan.get("code_change"), str) else None
    return ExperimentDetail(
        row=row,
        ref=ref,
        ref_kind=kind,
        diff=redact(diff, secrets),
        code=[SourceFile(f.path, redact(f.text, secrets), f.changed, f.note) for f in code],
        configs=[SourceFile(f.path, redact(f.text, secrets), f.changed, f.note) for f in configs],
        changed=changed,
        carried=carried,
        carried_files=[SourceFile(f.path, redact(f.text, secrets), note=f.note) for f in carried_files],
        rationale=redact(str(plan.get("rationale") or row.rationale), secrets),
        code_change=redact(code_change, secrets) if code_change else None,
        journal=redact(_journal_section(workspace, exp_id, problems), secrets),
        transcript=redact(_transcripts(workspace, exp_folder / layout.EDIT_LOGS, problems), secrets),
        metrics=metrics,
        reproduce=redact(_reproduce_command(run, row, ref, kind, exp_folder, runs_dir, problems), secrets),
        problems=problems,
    )


def _find_ref(workspace: Path, row: Experiment, problems: list[str]) -> tuple[str, str]:
    if row.decision == "keep" and row.commit:
        if not SHA.fullmatch(row.commit):  # results.tsv lies in the workspace: its commit is checked, never passed on
            problems.append(f"results.tsv names the commit {row.commit[:60]!r}, which is not a commit id")
            return "", "none"
        sha = _git_text(workspace, problems, "rev-parse", "--verify", "--quiet", f"{row.commit}^{{commit}}").strip()
        return (sha, "commit") if sha else ("", "none")
    ref = f"{layout.DISCARDED_REF_PREFIX}{row.id}"
    sha = _git_text(workspace, [], "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    if sha:
        return sha, "discarded ref"
    problems.append(f"no commit and no {ref}: this experiment changed nothing in the workspace (or its ref is gone)")
    return "", "none"


def _git_text(workspace: Path, problems: list[str], *args: str, limit: int = MAX_FILE_BYTES) -> str:
    dot_git = workspace / ".git"
    if not dot_git.exists():
        problems.append("the workspace has no git repository: diffs cannot be shown")
        return ""
    if dot_git.is_symlink() or not dot_git.is_dir():  # a gitdir file or a link would point git at another repository
        problems.append("the workspace's .git is not a folder (a link or a gitdir file): its history is not read")
        return ""
    try:
        # GitPython refuses to import where git is not installed: `autonas` (and the server) start without it
        from sandbox.workspace import run_git_head

        out, cut = run_git_head(workspace, *args, limit=limit)  # never more than limit bytes held, whatever git says
    except (OSError, RuntimeError, ImportError) as err:  # ImportError: GitPython finds no git installed
        problems.append(f"git {args[0]} failed: {str(err).splitlines()[0] if str(err) else err}")
        return ""
    text = out.decode("utf-8", "replace")
    return text + (f"\n… cut at {limit:,} bytes\n" if cut else "")


def _tree_files(
    workspace: Path, ref: str, changed: set[str], problems: list[str]
) -> tuple[list[SourceFile], list[SourceFile]]:
    """The model code (``.py`` files) and the configurations at ``ref``, each list with the ``changed`` files first.

    Names come NUL-separated (a newline, quote or non-ASCII letter in a name is read as it is, not C-quoted); a
    file over :data:`MAX_FILE_BYTES`, past :data:`MAX_SHOWN_FILES` files or past :data:`MAX_SHOWN_BYTES` in all is
    named with a note and never read, and a submodule entry is not a file."""
    listing = _git_text(workspace, problems, "ls-tree", "-r", "-l", "-z", ref, limit=MAX_DIFF_BYTES)
    picked: list[tuple[str, int | None]] = []
    for entry in listing.split("\0"):
        meta, tab, name = entry.partition("\t")
        fields = meta.split()
        if not tab or len(fields) != 4 or fields[1] != "blob":
            continue
        if name.startswith(CONFIG_DIR) or name.endswith(CODE_SUFFIXES):
            picked.append((name, int(fields[3]) if fields[3].isdigit() else None))
    picked.sort(key=lambda item: item[0] not in changed)  # the changed files get the page's budget first
    shown, files = 0, list[SourceFile]()
    for name, size in picked:
        if len(files) >= MAX_SHOWN_FILES:
            problems.append(f"{len(picked) - len(files)} more code/configuration files at this commit are not listed")
            break
        if size is None or size > MAX_FILE_BYTES:
            text, note = "", f"{size or '?'} bytes: too large to show here (git show {ref[:10]}:{name})"
        elif shown + size > MAX_SHOWN_BYTES:
            text, note = "", f"not shown: the page shows {MAX_SHOWN_BYTES:,} bytes of files at most"
        else:
            text, note = _git_text(workspace, problems, "cat-file", "blob", f"{ref}:{name}"), ""  # plumbing: no driver
            shown += size
        files.append(SourceFile(name, text, name in changed, note))
    code = [f for f in files if not f.path.startswith(CONFIG_DIR)]
    configs = [f for f in files if f.path.startswith(CONFIG_DIR)]
    return code, configs  # changed first, each group in tree order (a stable sort)


def _read_inside(workspace: Path, path: Path, limit: int, problems: list[str]) -> tuple[str, bool] | None:
    """The first ``limit`` bytes of ``path`` (under ``workspace``) as text and whether it was cut; None when it does
    not exist or may not be read: a link (the file itself or a folder between the workspace and it: a page must not
    show a host file an editor pointed at) or not a regular file (a FIFO would hang the page)."""
    rel = path.relative_to(workspace)
    try:
        if Path(os.path.realpath(path.parent)) != Path(os.path.realpath(workspace)) / rel.parent:
            problems.append(f"{rel} is reached through a link: not read")
            return None
        got = read_regular_head(path, limit)
    except UnsafeFile:
        problems.append(f"{rel} is a link or not a regular file: not read")
        return None
    except OSError as err:
        problems.append(f"{rel} cannot be read: {err.strerror or err}")
        return None
    if got is None:
        return None
    data, cut = got
    return data.decode("utf-8", "replace"), cut


def _read_json(workspace: Path, path: Path, problems: list[str]) -> Any:
    """The JSON in ``path`` (None when missing, unreadable or not JSON, said in ``problems``)."""
    got = _read_inside(workspace, path, MAX_JSON_BYTES, problems)
    if got is None:
        return None
    text, cut = got
    try:
        if cut:
            raise ValueError("too large")
        return json.loads(text)
    except (ValueError, RecursionError):
        problems.append(f"{path.name} cannot be read: it may be being written")
        return None


def _carried_code(workspace: Path, exp_folder: Path, problems: list[str]) -> CodeRecord | None:
    """The experiment's ``code.json`` (written beside a trained model), or None where it trained nothing."""
    got = _read_inside(workspace, exp_folder / CODE_RECORD, MAX_JSON_BYTES, problems)
    if got is None:
        return None
    try:
        return parse_code_record(got[0], f"{exp_folder.name}/{CODE_RECORD}")
    except UserError as err:
        problems.append(f"{err} (it may be being written)")
    return None


def _carried_files(workspace: Path, exp_folder: Path, record: CodeRecord, problems: list[str]) -> list[SourceFile]:
    """The files ``code.json`` names, read from the experiment's ``code/``: plain files only, never through a link,
    only ``nas/<module>.py`` names (a record cannot point the page at another file)."""
    root = exp_folder / CODE_DIR
    out = []
    for name in record.files[:MAX_SHOWN_FILES]:
        if not CARRIED_NAME.fullmatch(name):
            continue
        got = _read_inside(workspace, root / name, MAX_FILE_BYTES, problems)
        if got is not None:
            out.append(SourceFile(name, got[0], note=f"cut at {MAX_FILE_BYTES:,} bytes" if got[1] else ""))
    return out


def _read_metrics(workspace: Path, path: Path, problems: list[str]) -> dict[str, Any]:
    if not os.path.lexists(path):
        problems.append(f"{layout.EXPERIMENT_RUNS}/{path.parent.name}/{layout.METRICS_JSON} is missing")
        return {}
    data = _read_json(workspace, path, problems)
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))} if isinstance(data, dict) else {}


def _journal_section(workspace: Path, exp_id: str, problems: list[str]) -> str:
    got = _read_inside(workspace, workspace / layout.JOURNAL, MAX_JOURNAL_BYTES, problems)
    text = got[0] if got else ""
    start = text.find(f"## {exp_id}:")
    if start < 0:
        return ""
    end = text.find("\n## e", start + 1)
    return text[start : end if end >= 0 else len(text)].strip()[:MAX_FILE_BYTES]


def _transcripts(workspace: Path, edit_dir: Path, problems: list[str]) -> str:
    """The editors' transcripts (JSON lines), one event a line in readable form, each line and file cut to size."""
    parts = []
    for name in TRANSCRIPTS:
        got = _read_inside(workspace, edit_dir / name, MAX_TRANSCRIPT_BYTES, problems)
        if got is None:
            continue
        lines = [f"# {name}"]
        for raw in got[0].splitlines()[:5000]:
            try:
                event = json.loads(raw)
            except (ValueError, RecursionError):
                lines.append(raw[:MAX_LINE_CHARS])
                continue
            lines.append((_event_line(event) if isinstance(event, dict) else raw)[:MAX_LINE_CHARS])
        if got[1]:
            lines.append(f"… cut at {MAX_TRANSCRIPT_BYTES:,} bytes")
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


def _reproduce_command(
    run: Run, row: Experiment, ref: str, kind: str, exp_folder: Path, runs_dir: Path, problems: list[str]
) -> str:
    if kind == "commit":
        return f"autonas reproduce {shlex.quote(run.id)} {row.id} --runs-dir {shlex.quote(str(runs_dir))}"
    stored = _read_json(run.folder / layout.WORKSPACE, exp_folder / COMMAND_JSON, problems)
    raw = stored.get("python_args") if isinstance(stored, dict) else None
    if raw is not None and not is_worker_invocation(raw):  # rewritten in the workspace: never offered to be run
        problems.append(f"{COMMAND_JSON} does not start one of the workers: it was changed after the agent wrote it")
        raw = None
    args = [str(a) for a in raw] if isinstance(raw, list) else []
    workspace = shlex.quote(str(run.folder / layout.WORKSPACE))
    target = shlex.quote(f"/tmp/{run.id}-{row.id}")
    # git archive exports the tree without touching the workspace (a worktree or checkout would change it)
    export = f"mkdir -p {target} && git -C {workspace} archive {ref} | tar -x -C {target}" if ref else ""
    if not args:
        return export or "(this experiment left no commit and no stored command: it cannot be re-run)"
    worker = "python " + " ".join(shlex.quote(a) for a in args)
    return f"{export} && cd {target} && {worker}" if export else worker
