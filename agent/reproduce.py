"""``autonas reproduce RUN EXPERIMENT``: re-make a kept result from its commit and say whether it lands in the noise.

What a kept commit holds is enough to re-make its number: the tree (configs and model code) at that commit, the
worker command the run node stored beside the result (``command.json``: the interpreter's arguments, seed, timeout),
the code hash and the corpus fingerprint in its trailers, and the measured noise. The tree is exported with
``git archive`` into a fresh folder (the workspace is never touched, so a run can be reproduced while it goes on),
its model code is checked against the recorded hash, and the command runs again, confined like the original when it
runs edited code, into ``RUN/reproduce/<experiment>-<n>``; the re-made model is scored by the harness as the run's
was. Token budgets make the re-made number independent of the machine's load; the comparison uses the run's noise
margin (2 standard deviations, the floor when unmeasured).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.confining import model_confinement, prepare_shared_cache, score_model
from agent.judge import MIN_NOISE
from agent.plans import MODEL_KINDS
from agent.settings import RunSettings
from harness.errors import UserError
from harness.model_code import MODEL_CODE_ENV, hash_files, model_files, write_code_record
from harness.run_folder_layout import COMMAND_JSON, WORKER_PACKAGES, is_worker_invocation
from harness.scoring import ScoringRefused
from sandbox.confine import ConfinementUnavailable
from sandbox.environment import WORKER, child_env
from sandbox.runner import run_limited
from sandbox.safe_files import UnsafeFile, read_json_object
from sandbox.workspace import ExperimentCommit, Workspace

COMMAND_FILE = COMMAND_JSON
MARGIN_SIGMAS = 2.0


@dataclass(frozen=True)
class WorkerCommand:
    """How an experiment's worker was started: the interpreter's arguments (the interpreter is this one), relative to
    the workspace, and the limits it ran under."""

    python_args: list[str]
    out: str
    timeout_s: float
    model_code: bool

    def save(self, folder: Path) -> None:
        (folder / COMMAND_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> WorkerCommand:
        try:
            raw = read_json_object(folder / COMMAND_FILE)
        except UnsafeFile as err:
            raise UserError(str(err)) from None
        if raw is None:
            raise UserError(
                f"{folder / COMMAND_FILE} is missing: the experiment was run by an older version, which did not "
                "store its command"
            )
        if not is_worker_invocation(raw.get("python_args")):
            raise UserError(
                f"{folder / COMMAND_FILE} does not start one of the workers (python -m "
                f"{'|'.join(WORKER_PACKAGES)} ... --out DIR): it was changed after the agent wrote it; not run"
            )
        try:
            return cls(
                python_args=[str(a) for a in raw["python_args"]],
                out=str(raw["out"]),
                timeout_s=float(raw["timeout_s"]),
                model_code=bool(raw["model_code"]),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{folder / COMMAND_FILE} is corrupt") from None

    def display(self) -> str:
        return "python " + " ".join(self.python_args)


def stored_command(cmd: list[str], out: Path, timeout_s: float, model_code: bool) -> WorkerCommand:
    """The run node's command as it is stored (the interpreter left out: a reproduction uses the installed one)."""
    assert cmd[0] == sys.executable, cmd[0]
    return WorkerCommand(python_args=list(cmd[1:]), out=str(out), timeout_s=timeout_s, model_code=model_code)


@dataclass(frozen=True)
class Reproduction:
    experiment: str
    commit: str
    command: str
    recorded_bpb: float
    remade_bpb: float | None
    noise_bpb: float
    noise_measured: bool
    margin_bpb: float
    inside: bool
    out_dir: str
    fail_reason: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.remade_bpb is None else self.remade_bpb - self.recorded_bpb


def without_run_caps(args: list[str]) -> list[str]:
    """The command without the wall cap the run gave it (the time left in that run, not part of the experiment): a
    token budget decides where training ends, the stored timeout still bounds the worker."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--max-seconds":
            skip = True
        elif not a.startswith("--max-seconds="):
            out.append(a)
    return out


def find_experiment(ws: Workspace, ref: str) -> ExperimentCommit:
    """A kept experiment by its id (``e003``) or by a prefix of its commit (at least 7 hex digits)."""
    kept = ws.experiments()
    for e in kept:
        if e.trailers.get("experiment") == ref:
            return e
    if len(ref) >= 7 and all(c in "0123456789abcdef" for c in ref.lower()):
        hits = [e for e in kept if e.sha.startswith(ref.lower())]
        if len(hits) == 1:
            return hits[0]
    ids = ", ".join(e.trailers.get("experiment", e.sha[:10]) for e in kept) or "none"
    raise UserError(f"no kept experiment or commit {ref!r} in run {ws.run_id} (kept: {ids})")


def export_tree(ws: Workspace, sha: str, dest: Path) -> None:
    """The commit's files into ``dest`` (git archive; links and paths outside ``dest`` refused by tarfile's filter)."""
    buf = io.BytesIO()
    ws.repo.archive(buf, treeish=sha, format="tar")
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dest, filter="data")


def check_code(tree: Path, recorded: str | None) -> None:
    """The model code at the commit is the code the result was recorded with."""
    if recorded is None:
        return
    actual = hash_files(model_files(tree if (tree / "nas").is_dir() else None))
    if actual != recorded:
        raise UserError(
            f"the model code at this commit (hash {actual[:12]}) does not match the recorded code hash "
            f"{recorded[:12]}: the workspace or the installed package changed since the run"
        )


def reproduce(settings: RunSettings, ws: Workspace, ref: str) -> Reproduction:
    """Re-run a kept model experiment from its commit; never changes the workspace or the recorded run."""
    exp = find_experiment(ws, ref)
    exp_id = exp.trailers.get("experiment", exp.sha[:10])
    if exp.trailers.get("kind") not in MODEL_KINDS or "val-bpb" not in exp.trailers:
        raise UserError(
            f"{exp_id} is a {exp.trailers.get('kind', 'set-up')} experiment: only train and distill results "
            "carry a val bpb to re-make"
        )
    command = WorkerCommand.load(ws.root / "runs" / exp_id)
    out_root = (settings.run_dir / "reproduce").absolute()
    n = 1
    while (out_root / f"{exp_id}-{n}").exists():
        n += 1
    work = out_root / f"{exp_id}-{n}"
    tree, out = work / "tree", work / "out"
    tree.mkdir(parents=True)
    out.mkdir()
    export_tree(ws, exp.sha, tree)
    check_code(tree, exp.trailers.get("code-hash"))
    args = without_run_caps(command.python_args)
    args[args.index("--out") + 1] = str(out)
    env = child_env(WORKER, {"PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"})  # the tree is not on the import path
    env.pop(MODEL_CODE_ENV, None)
    confinement = None
    if command.model_code:
        env[MODEL_CODE_ENV] = str(tree)
        prepare_shared_cache(settings)
        confinement = model_confinement(settings, writable=out, readable=(tree,))
    outcome = run_limited(
        [sys.executable, *args],
        tree,
        work / "worker.log",
        timeout_s=command.timeout_s,
        memory_mb=settings.memory_mb,
        env=env,
        confinement=confinement,
    )
    try:
        metrics = read_json_object(out / "metrics.json") or {}
    except UnsafeFile as err:
        metrics = {"fail_reason": str(err)}
    remade = metrics.get("val_bpb") if outcome.ok and isinstance(metrics.get("val_bpb"), (int, float)) else None
    if remade is not None:  # the number that counts is the harness's own score, as in the run
        write_code_record(out, tree if command.model_code else None, commit=exp.sha)
        try:
            remade = score_model(settings, out, "val", work / "scoring", command.timeout_s).bpb
        except (ScoringRefused, ConfinementUnavailable, UserError) as err:
            remade, metrics = None, {"fail_reason": f"the harness could not score the re-made model: {err}"}
    recorded = float(exp.trailers["val-bpb"])
    noise_text = exp.trailers.get("noise-bpb")
    noise = float(noise_text) if noise_text else MIN_NOISE
    measured = exp.trailers.get("noise-source", "measured" if noise_text else "floor") == "measured"
    margin = MARGIN_SIGMAS * max(noise, MIN_NOISE)
    reason = (
        ""
        if remade is not None
        else str(
            metrics.get("fail_reason") or ("timed out" if outcome.timed_out else f"exit code {outcome.returncode}")
        )
    )
    result = Reproduction(
        experiment=exp_id,
        commit=exp.sha,
        command=command.display(),
        recorded_bpb=recorded,
        remade_bpb=float(remade) if remade is not None else None,
        noise_bpb=noise,
        noise_measured=measured,
        margin_bpb=margin,
        inside=remade is not None and abs(float(remade) - recorded) <= margin,
        out_dir=str(work),
        fail_reason=reason,
    )
    (work / "reproduce.json").write_text(json.dumps({**asdict(result), "delta_bpb": result.delta}, indent=2) + "\n")
    return result
