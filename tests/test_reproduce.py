"""``autonas reproduce``: a kept result is re-made from its commit, and lands within the run's noise margin."""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.reproduce import WorkerCommand, check_code
from harness.errors import UserError
from harness.model_code import hash_files, seed_files, stock_code_hash

runner = CliRunner()


@pytest.mark.slow
def test_a_kept_result_is_re_made_from_its_commit(tmp_path: Path, small_corpus_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            "find the best Python code model under 1 MB",
            "--run-id",
            "rp",
            "--runs-dir",
            str(tmp_path),
            "--budget",
            "30m",
            "--experiment-budget",
            "16ktok",
            "--max-experiments",
            "2",
            "--corpus",
            str(small_corpus_dir),
            "--eval-bytes",
            "6000",
        ],
    )
    assert result.exit_code == 0, result.output
    ws = tmp_path / "rp" / "workspace"
    kept = next(c for c in git.Repo(ws).iter_commits("autonas/rp") if "experiment: e001" in c.message)
    message = str(kept.message)
    # the commit carries what re-makes it
    assert "Command: python -m nas train --arch configs/arch.json --budget 16ktok" in message
    for trailer in ("seed: ", "tokens: ", f"code-hash: {stock_code_hash()}", "corpus: "):
        assert trailer in message, trailer
    assert json.loads((ws / "runs" / "e001" / "code.json").read_text())["commit"] == kept.hexsha

    again = runner.invoke(app, ["reproduce", "rp", "e001", "--runs-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "reproduced: within the noise margin" in again.output
    record = json.loads((tmp_path / "rp" / "reproduce" / "e001-1" / "reproduce.json").read_text())
    assert record["inside"] and record["remade_bpb"] == pytest.approx(record["recorded_bpb"], abs=record["margin_bpb"])
    by_commit = runner.invoke(app, ["reproduce", "rp", kept.hexsha[:8], "--runs-dir", str(tmp_path)])
    assert by_commit.exit_code == 0 and (tmp_path / "rp" / "reproduce" / "e001-2" / "reproduce.json").is_file()
    assert not git.Repo(ws).is_dirty(untracked_files=True)  # the workspace was never touched

    missing = runner.invoke(app, ["reproduce", "rp", "e042", "--runs-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no kept experiment or commit 'e042'" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    gone = runner.invoke(app, ["reproduce", "nope", "e001", "--runs-dir", str(tmp_path)])
    assert gone.exit_code == 2 and "no run 'nope'" in gone.output


def test_code_that_no_longer_matches_its_recorded_hash_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nas").mkdir()
    files = seed_files()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    check_code(tmp_path, hash_files(files))  # the same code passes
    (tmp_path / "nas" / "model.py").write_bytes(files["nas/model.py"] + b"\n# changed after the run\n")
    with pytest.raises(UserError, match="does not match the recorded code hash"):
        check_code(tmp_path, hash_files(files))


@pytest.mark.parametrize(
    "python_args",
    [
        ["-c", "import os; os.system('sh')", "--out", "x"],
        ["-m", "pip", "install", "evil", "--out", "x"],
        ["-m", "nas", "train", "--seed", "0"],
        ["-m", "nas", "train", "--out"],
        ["-m", "nas", "train", "--out", "x\x00y", "--seed", "0"],
        ["-m", "nas", "train", "--out", "x", "--seed", "0", "--out", "/home/user/.config"],
        ["-m", "nas", "train", "--out", "x", "--out=/home/user/.config"],
        "-m nas train --out x",
    ],
)
def test_a_stored_command_rewritten_in_the_workspace_is_refused_before_anything_runs(
    tmp_path: Path, python_args: object
) -> None:
    """A later editor can write runs/<experiment>/command.json; reproduce runs only a worker the agent starts (and
    runs one without model code unconfined), so any other shape ends in one line before a tree is exported."""
    (tmp_path / "command.json").write_text(
        json.dumps({"python_args": python_args, "out": "x", "timeout_s": 60, "model_code": False})
    )
    with pytest.raises(UserError, match="does not start one of the workers"):
        WorkerCommand.load(tmp_path)
    real = ["-m", "distill", "distill", "--teacher", "runs/e001", "--out", "runs/e004", "--seed", "0"]
    (tmp_path / "command.json").write_text(
        json.dumps({"python_args": real, "out": "runs/e004", "timeout_s": 60, "model_code": True})
    )
    assert WorkerCommand.load(tmp_path).python_args == real
