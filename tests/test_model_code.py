"""The fixed harness and the editable model code as two places; trained models carry their code.

Real processes throughout: workers are started the way the agent starts them (``AUTONAS_MODEL_CODE`` naming the
workspace), models are trained for a few thousand tokens, and loading, evaluation and export are checked against
the code that trained them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ccaa.editor import BuiltinEditor, EditInstruction
from harness.errors import UserError
from harness.model_code import (
    CODE_RECORD,
    EDITABLE_MODULES,
    MODEL_CODE_ENV,
    off_limits_reason,
    read_code_record,
    seed_files,
    stock_code_hash,
    write_code_record,
)
from sandbox.workspace import Workspace
from tests.conftest import TINY_ARCH

GELU_EDIT = ("F.silu(self.gate_proj(x))", "F.gelu(self.gate_proj(x))")


def _env(code_root: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MODEL_CODE_ENV)}
    if code_root is not None:
        env[MODEL_CODE_ENV] = str(code_root)
    return env


def _python(
    args: list[str], cwd: Path, code_root: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """A worker started as the agent starts one (its environment from ``worker_env``)."""
    from agent.editing import worker_env

    env = worker_env(code_root is not None, code_root, _env()) if code_root is not None else _env()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _seeded(tmp_path: Path) -> Workspace:
    ws = Workspace.create(tmp_path / "ws", "r")
    ws.seed_code(seed_files())
    return ws


def _train(cwd: Path, out: str, corpus: Path, code_root: Path | None, folder: Path | None = None) -> dict:
    """Train in ``folder`` (default ``cwd``).

    The worker's working folder is ``cwd``, as the agent's is the workspace.
    """
    folder = folder or cwd
    (folder / "arch.json").write_text(json.dumps(TINY_ARCH))
    _python(
        [
            "-m",
            "nas",
            "train",
            "--arch",
            str(folder / "arch.json"),
            "--budget",
            "12ktok",
            "--out",
            str(folder / out),
            "--corpus",
            str(corpus),
            "--eval-bytes",
            "4096",
            "--batch-size",
            "4",
            "--quiet",
        ],
        cwd,
        code_root,
    )
    return json.loads((folder / out / "metrics.json").read_text())


def test_a_workspace_holds_the_model_code_only_and_workers_measure_with_the_installed_harness(tmp_path: Path) -> None:
    ws = _seeded(tmp_path)
    assert sorted(p.name for p in (ws.root / "nas").iterdir()) == sorted(f"{m}.py" for m in EDITABLE_MODULES)
    assert not (ws.root / "harness").exists() and ws.has_code() and not ws.carries_whole_package()
    from agent.editing import worker_env

    env = worker_env(True, ws.root, _env())
    probe = (
        "import json, nas.model, nas.search, harness.metrics, harness.data; print(json.dumps([nas.model.__file__, "
        "nas.search.__file__, harness.metrics.__file__, harness.data.__file__]))"
    )
    where = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], cwd=ws.root, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert Path(where[0]) == ws.root.resolve() / "nas" / "model.py"  # the model is the workspace's
    installed = Path(__file__).resolve().parents[1]
    assert all(Path(p).is_relative_to(installed) and not Path(p).is_relative_to(ws.root.resolve()) for p in where[1:])


@pytest.mark.parametrize(
    "path, refused",
    [
        ("nas/model.py", False),
        ("nas/space.py", False),
        ("nas/train.py", False),
        ("nas/attention_variants.py", False),
        ("configs/arch.json", False),
        ("notes.md", False),
        ("harness/metrics.py", True),
        ("harness/data.py", True),
        ("nas/hf.py", True),
        ("nas/search.py", True),
        ("nas/__init__.py", True),
        ("nas/cli.py", True),
        ("nas/sub/model.py", True),
        ("nas/Model-2.py", True),
    ],
)
def test_the_editor_rule_names_what_is_fixed(path: str, refused: bool) -> None:
    reason = off_limits_reason(path)
    assert (reason is not None) == refused
    if refused:
        assert path in reason


def test_an_edit_of_the_metric_or_the_split_is_refused_and_undone(tmp_path: Path) -> None:
    from agent.editing import code_instruction
    from agent.plans import parse_plan
    from agent.prompting import Prompts

    ws = _seeded(tmp_path)
    plan = parse_plan({"kind": "train", "config": {"arch": {}}, "rationale": "r", "code_change": "c"})
    instruction = code_instruction(Prompts(), plan, "e001", "t", ws.root, tmp_path / "log", 60)
    assert "harness/" in instruction.system_prompt and "nas/hf.py" in instruction.system_prompt  # the editor is told
    cheat = "def evaluate_bpb(*a, **k):\n    return 0.0\n"
    for files in (
        {"harness/metrics.py": cheat},
        {"nas/hf.py": "x = 1\n"},
        {"nas/__init__.py": ""},
        {"nas/model.py": (ws.root / "nas/model.py").read_text() + "\n# fine\n", "harness/data.py": "SPLITS = 0\n"},
    ):
        result = BuiltinEditor(watch=()).edit(ws.root, EditInstruction(files=files, off_limits=instruction.off_limits))
        assert not result.ok and "off limits" in (result.error or "")
        assert not ws.has_changes() and not [p for p in (ws.root / "harness").rglob("*") if p.is_file()]  # as it was
    ok = BuiltinEditor(watch=()).edit(
        ws.root,
        EditInstruction(
            files={"nas/model.py": (ws.root / "nas/model.py").read_text().replace(*GELU_EDIT)},
            off_limits=instruction.off_limits,
        ),
    )
    assert ok.ok and ok.files_changed == ("nas/model.py",)


def test_metric_code_planted_in_the_workspace_changes_no_recorded_number(
    tmp_path: Path, small_corpus_dir: Path
) -> None:
    """Even a harness/ that reached the workspace past the editor (a commit by hand) is never imported by a worker."""
    ws = _seeded(tmp_path)
    honest = _train(ws.root, "honest", small_corpus_dir, ws.root, tmp_path)  # run from the workspace, as the agent does
    (ws.root / "harness").mkdir()
    (ws.root / "harness" / "__init__.py").write_text("")
    (ws.root / "harness" / "metrics.py").write_text("raise SystemExit('the planted harness was imported')\n")
    planted = _train(ws.root, "planted", small_corpus_dir, ws.root, tmp_path)
    assert planted["val_bpb"] == honest["val_bpb"] and planted["val_bpb"] > 1.0
    (ws.root / "harness" / "metrics.py").unlink()
    (ws.root / "nas" / "hf.py").write_text("raise SystemExit('shadowed')\n")  # a fixed nas module: refused at import
    proc = _python(
        ["-m", "nas", "train", "--arch", str(tmp_path / "arch.json"), "--budget", "1ktok", "--out", "x"],
        tmp_path,
        ws.root,
        check=False,
    )
    assert proc.returncode == 2 and "nas/hf.py is fixed code" in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_trained_from_edited_code_carries_it_everywhere(tmp_path: Path, small_corpus_dir: Path) -> None:
    ws = _seeded(tmp_path)
    model_py = ws.root / "nas" / "model.py"
    edit = BuiltinEditor(watch=()).edit(
        ws.root,
        EditInstruction(files={"nas/model.py": model_py.read_text().replace(*GELU_EDIT)}, off_limits=off_limits_reason),
    )
    assert edit.ok and "F.gelu(self.gate_proj" in edit.diff  # SiLU -> GELU: the arch.json still says swiglu
    edited = _train(tmp_path, "gelu", small_corpus_dir, ws.root)
    run = tmp_path / "gelu"
    record = read_code_record(run)
    assert (
        record is not None
        and record.hash != stock_code_hash()
        and "F.gelu(self.gate_proj" in (run / "code/nas/model.py").read_text()
    )
    assert json.loads((run / "arch.json").read_text())["activation"] == "swiglu"

    # the installed code would build another network: loading it in this process is refused with the reason
    from nas.run_folder import load_trained_model

    with pytest.raises(UserError, match="trained by other model code"):
        load_trained_model(run)
    # a command given the folder restarts itself on the carried code: val by the right code equals the trainer's
    scored = json.loads(
        _python(
            [
                "-m",
                "nas",
                "evaluate",
                "--model",
                str(run),
                "--split",
                "val",
                "--corpus",
                str(small_corpus_dir),
                "--eval-bytes",
                "4096",
            ],
            tmp_path,
        ).stdout
    )
    assert scored["val_bpb"] == pytest.approx(edited["val_bpb"], abs=1e-6) and scored["code_hash"] == record.hash
    stock_view = _python(
        [
            "-c",
            "import json, sys; from nas.run_folder import load_trained_model\n"
            "from harness.metrics import evaluate_bpb\nfrom harness.data import CorpusSpec, prepare_corpus\n"
            "import safetensors.torch as st, nas.model as m, nas.space as s\n"
            "net = m.build_model(s.ArchConfig.load(sys.argv[1] + '/arch.json'));"
            " st.load_model(net, sys.argv[1] + '/model.safetensors')\n"
            "c = prepare_corpus(CorpusSpec(source=sys.argv[2]), 'byte')\n"
            "print(evaluate_bpb(net.eval(), c['val'], c.token_bytes, 4096).bpb)",
            str(run),
            str(small_corpus_dir),
        ],
        tmp_path,
    )
    assert float(stock_view.stdout) != pytest.approx(edited["val_bpb"], abs=1e-4)  # the wrong code gives another number

    # held-out, HumanEval generation and best/ use it too
    held = json.loads(
        _python(
            ["-m", "nas", "evaluate", "--model", str(run), "--corpus", str(small_corpus_dir), "--eval-bytes", "4096"],
            tmp_path,
        ).stdout
    )
    assert held["heldout_bpb"] > 1.0 and held["code_hash"] == record.hash
    gen = _python(
        [
            "-m",
            "distill",
            "eval",
            "humaneval",
            "--model",
            str(run),
            "--out",
            str(tmp_path / "he"),
            "--generate-only",
            "--limit",
            "2",
            "-n",
            "1",
            "-k",
            "1",
            "--max-new-tokens",
            "8",
        ],
        tmp_path,
    )
    assert len((tmp_path / "he" / "samples.jsonl").read_text().splitlines()) == 2, gen.stderr
    from agent.best import copy_best

    (tmp_path / "agent-run").mkdir()
    best = copy_best(run, tmp_path / "agent-run")
    assert read_code_record(best) == record
    assert (best / "code/nas/model.py").read_bytes() == (run / "code/nas/model.py").read_bytes()

    # the Hugging Face export (stock Llama modelling code) is refused with the reason, by the model's own code
    why = _python(
        [
            "-c",
            "from nas.hf import export_blockers; from nas.space import ArchConfig; import sys\n"
            "print('; '.join(export_blockers(ArchConfig.load(sys.argv[1]))))",
            str(run / "arch.json"),
        ],
        tmp_path,
        run / "code",
    ).stdout
    assert "model code was edited" in why
    stock = _python(
        [
            "-c",
            "from nas.hf import export_blockers; from nas.space import ArchConfig; import sys\n"
            "print(export_blockers(ArchConfig.load(sys.argv[1])))",
            str(run / "arch.json"),
        ],
        tmp_path,
    ).stdout
    assert stock.strip() == "[]"


def test_a_carried_code_folder_that_was_changed_after_training_is_refused(
    tmp_path: Path, small_corpus_dir: Path
) -> None:
    ws = _seeded(tmp_path)
    _train(tmp_path, "r", small_corpus_dir, ws.root)
    run = tmp_path / "r"
    model_py = run / "code" / "nas" / "model.py"
    model_py.write_text(model_py.read_text().replace(*GELU_EDIT))
    proc = _python(
        ["-m", "nas", "evaluate", "--model", str(run), "--corpus", str(small_corpus_dir)], tmp_path, check=False
    )
    # the record says stock code, so this process (stock) may load it; but a process on the changed copy may not
    assert proc.returncode == 0
    record = read_code_record(run)
    (run / CODE_RECORD).write_text(
        json.dumps({"hash": "0" * 64, "files": list(record.files), "commit": None, "source": "workspace"})
    )
    proc = _python(
        ["-m", "nas", "evaluate", "--model", str(run), "--corpus", str(small_corpus_dir)], tmp_path, check=False
    )
    assert (
        proc.returncode == 2 and "does not match its code.json hash" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_a_command_restarted_on_carried_code_leaves_the_users_keys_behind(
    tmp_path: Path, small_corpus_dir: Path, tiny_run: Path
) -> None:
    """Carried code may be a hostile agent's edit, run when the user evaluates its model in the morning: the restarted
    command gets the workers' allow-listed environment, so code that reads the environment at import finds no key."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    overlay = tmp_path / "edited"
    (overlay / "nas").mkdir(parents=True)
    seen = tmp_path / "seen.json"
    stock_model = seed_files()["nas/model.py"].decode()
    (overlay / "nas" / "model.py").write_text(
        stock_model + f"\nimport json as _j, os as _o\nopen({str(seen)!r}, 'w').write(_j.dumps(dict(_o.environ)))\n"
    )
    record = write_code_record(run, overlay)
    assert record.hash != stock_code_hash()
    secrets = {
        "OPENAI_API_KEY": "sk-leak-openai",
        "ANTHROPIC_API_KEY": "sk-ant-leak",
        "MY_SERVICE_CREDENTIALS": "leak-credentials",
        "DATABASE_URL": "postgresql://u:leakpw@h/db",
    }
    env = {**_env(), **secrets, "OMP_NUM_THREADS": "1"}
    args = ["-m", "nas", "evaluate", "--model", str(run), "--split", "val", "--corpus", str(small_corpus_dir)]
    proc = subprocess.run(
        [sys.executable, *args, "--eval-bytes", "1024"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["code_hash"] == record.hash  # scored by the carried code, which ran its import
    environ = json.loads(seen.read_text())
    assert environ[MODEL_CODE_ENV] == str((run / "code").absolute()) and environ["OMP_NUM_THREADS"] == "1"
    assert "PATH" in environ
    leaked = [name for name, value in environ.items() if name in secrets or "leak" in value]
    assert leaked == []
