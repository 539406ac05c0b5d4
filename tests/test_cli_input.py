"""Careless and hostile input to every command: one line, exit 2, no traceback, nothing on disk changed.

Each row feeds one bad input to one command. Every row runs in one shared folder (also the working
directory, so a default output such as ``runs/...`` would show), and the whole folder is hashed before and
after: a row passes only if no file or folder appeared, vanished or changed. Most rows run in-process
through Typer's runner; the rows marked ``SUB`` run as real ``autonas`` processes, to prove the exit code
and that stderr holds the one line and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from nas.validate import MAX_BUDGET_S

REPO = Path(__file__).resolve().parents[1]
AUTONAS = str(Path(sys.executable).with_name("autonas"))
SUB = "subprocess"
RUN = "r1"
GOAL = "find the best code model under 2 MB"

# (id, argv with {placeholders} for the world's paths, a phrase the one line must hold[, SUB])
ROWS: list[tuple] = [
    # compress
    ("compress-out-file", ["compress", "--model", "{model}", "--int8", "--out", "{file}"], "is a file", SUB),
    ("compress-out-proc", ["compress", "--model", "{model}", "--int8", "--out", "/proc/nope/x"], "not writable"),
    ("compress-out-done", ["compress", "--model", "{model}", "--int8", "--out", "{done}"], "--overwrite"),
    ("compress-out-under-file", ["compress", "--model", "{model}", "--int8", "--out", "{file}/sub"], "is a file"),
    ("compress-model-missing", ["compress", "--model", "{missing}", "--int8"], "does not exist"),
    ("compress-model-file", ["compress", "--model", "{file}", "--int8"], "a folder is expected"),
    (
        "compress-recover-huge",
        ["compress", "--model", "{model}", "--prune", "magnitude:0.5", "--recover", "99999h", "--out", "{fresh}"],
        "30 days",
    ),
    ("compress-threads-zero", ["compress", "--model", "{model}", "--threads", "0", "--out", "{fresh}"], "at least 1"),
    (
        "compress-recover-lr-nan",
        ["compress", "--model", "{model}", "--int8", "--recover-lr", "nan", "--out", "{fresh}"],
        "finite",
    ),
    # latency
    ("latency-out-folder", ["latency", "--model", "{model}", "--out", "{folder}"], "is a folder"),
    ("latency-out-exists", ["latency", "--model", "{model}", "--out", "{file}"], "--overwrite"),
    ("latency-threads-zero", ["latency", "--model", "{model}", "--threads", "0"], "at least 1"),
    ("latency-threads-words", ["latency", "--model", "{model}", "--threads", "two"], "--threads 'two'"),
    ("latency-model-missing", ["latency", "--model", "{missing}"], "does not exist"),
    ("latency-repeats-zero", ["latency", "--model", "{model}", "--repeats", "0"], "--repeats"),
    # eval humaneval
    ("eval-out-file", ["eval", "humaneval", "--samples", "{samples}", "--out", "{file}"], "is a file"),
    ("eval-out-proc", ["eval", "humaneval", "--samples", "{samples}", "--out", "/proc/nope/x"], "not writable"),
    ("eval-out-done", ["eval", "humaneval", "--samples", "{samples}", "--out", "{done}"], "--overwrite"),
    ("eval-samples-binary", ["eval", "humaneval", "--samples", "{binary}"], "not UTF-8", SUB),
    ("eval-samples-latin1", ["eval", "humaneval", "--samples", "{latin1}"], "not UTF-8"),
    ("eval-samples-folder", ["eval", "humaneval", "--samples", "{folder}"], "a file is expected"),
    ("eval-samples-missing", ["eval", "humaneval", "--samples", "{missing}"], "does not exist"),
    ("eval-samples-device", ["eval", "humaneval", "--samples", "/dev/zero"], "not a regular file"),
    ("eval-samples-not-objects", ["eval", "humaneval", "--samples", "{list_jsonl}"], "not a JSON object"),
    ("eval-samples-not-json", ["eval", "humaneval", "--samples", "{file}"], "not valid JSON"),
    ("eval-timeout-negative", ["eval", "humaneval", "--samples", "{samples}", "--timeout", "-1"], "--timeout"),
    ("eval-timeout-nan", ["eval", "humaneval", "--samples", "{samples}", "--timeout", "nan"], "finite", SUB),
    ("eval-timeout-inf", ["eval", "humaneval", "--samples", "{samples}", "--timeout", "inf"], "finite"),
    ("eval-timeout-huge", ["eval", "humaneval", "--samples", "{samples}", "--timeout", "1e12"], "at most 600"),
    ("eval-timeout-zero", ["eval", "humaneval", "--samples", "{samples}", "--timeout", "0"], "greater than 0"),
    ("eval-n-zero", ["eval", "humaneval", "--model", "{model}", "-n", "0"], "-n must be"),
    ("eval-k-zero", ["eval", "humaneval", "--samples", "{samples}", "-k", "0"], "-k"),
    ("eval-k-words", ["eval", "humaneval", "--samples", "{samples}", "-k", "one"], "-k 'one'"),
    ("eval-temperature-nan", ["eval", "humaneval", "--model", "{model}", "--temperature", "nan"], "finite"),
    ("eval-top-p-zero", ["eval", "humaneval", "--model", "{model}", "--top-p", "0"], "--top-p"),
    ("eval-problems-binary", ["eval", "humaneval", "--samples", "{samples}", "--problems", "{binary}"], "not UTF-8"),
    ("eval-problems-gz-not-gzip", ["eval", "humaneval", "--samples", "{samples}", "--problems", "{fake_gz}"], "gzip"),
    ("eval-model-and-samples", ["eval", "humaneval", "--samples", "{samples}", "--model", "{model}"], "exactly one"),
    ("eval-workers-zero", ["eval", "humaneval", "--samples", "{samples}", "--workers", "0"], "--workers"),
    ("eval-default-out-done", ["eval", "humaneval", "--model", "{model}"], "--overwrite"),  # runs/humaneval-<model>
    # nas search
    ("search-out-file", ["nas", "search", "--out", "{file}", "--trials", "1"], "is a file"),
    ("search-out-done-run", ["nas", "search", "--out", "{done}", "--trials", "1"], "--overwrite"),
    ("eval-model-missing", ["eval", "humaneval", "--model", "{missing}"], "is not a run folder"),
    ("search-budget-huge", ["nas", "search", "--out", "{fresh}", "--budget", "99999h"], "30 days"),
    ("search-budget-tokens", ["nas", "search", "--out", "{fresh}", "--budget", "2Mtok"], "wall-clock"),
    (
        "search-stage1-nan",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--stage1", "nan"],
        "cannot read budget",
    ),
    (
        "search-stage2-huge",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--stage2", "100000000Gtok"],
        "10^13",
    ),
    ("search-max-mb-nan", ["nas", "search", "--out", "{fresh}", "--trials", "1", "--max-mb", "nan"], "finite"),
    (
        "search-max-mb-negative",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--max-mb", "-1"],
        "greater than 0",
    ),
    (
        "search-max-latency-inf",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--max-latency-ms", "inf"],
        "finite",
    ),
    ("search-max-params-inf", ["nas", "search", "--out", "{fresh}", "--trials", "1", "--max-params", "inf"], "finite"),
    (
        "search-corpus-missing",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--corpus", "/missing.jsonl"],
        "does not exist",
    ),
    (
        "search-space-binary",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--space", "{binary_json}"],
        "not UTF-8",
    ),
    (
        "search-storage-folder",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--storage", "{folder}"],
        "is a folder",
    ),
    ("search-trials-zero", ["nas", "search", "--out", "{fresh}", "--trials", "0"], "--trials"),
    # arch
    ("arch-sample-out-exists", ["arch", "sample", "--out", "{file}"], "--overwrite"),
    ("arch-sample-out-folder", ["arch", "sample", "--out", "{folder}"], "is a folder"),
    ("arch-sample-max-mb-nan", ["arch", "sample", "--max-mb", "nan"], "finite"),
    ("arch-sample-max-params-inf", ["arch", "sample", "--max-params", "inf"], "finite"),
    ("arch-sample-n-huge", ["arch", "sample", "-n", "1000000000"], "at most"),
    ("arch-sample-space-binary", ["arch", "sample", "--space", "{binary_json}"], "not UTF-8"),
    ("arch-show-folder", ["arch", "show", "{folder}"], "a file is expected"),
    ("arch-show-binary", ["arch", "show", "{binary}"], "cannot read"),
    ("arch-show-missing", ["arch", "show", "{missing}"], "does not exist"),
    # train
    ("train-budget-huge", ["train", "--budget", "99999h", "--out", "{fresh}"], "30 days", SUB),
    ("train-budget-tokens-huge", ["train", "--budget", "100000Gtok", "--out", "{fresh}"], "10^13"),
    ("train-out-file", ["train", "--budget", "10s", "--out", "{file}"], "is a file"),
    ("train-out-done", ["train", "--budget", "10s", "--out", "{done}"], "--overwrite"),
    ("train-lr-nan", ["train", "--lr", "nan", "--out", "{fresh}"], "finite"),
    ("train-checkpoint-zero", ["train", "--checkpoint-every", "0", "--out", "{fresh}"], "--checkpoint-every"),
    ("train-corpus-missing", ["train", "--corpus", "/missing.jsonl", "--out", "{fresh}"], "does not exist"),
    ("train-corpus-binary", ["train", "--corpus", "{binary}", "--out", "{fresh}"], "not UTF-8"),
    ("train-corpus-fake-parquet", ["train", "--corpus", "{fake_parquet}", "--out", "{fresh}"], "not a Parquet file"),
    ("train-corpus-unsupported", ["train", "--corpus", "{binary_json}.png", "--out", "{fresh}"], "does not exist"),
    ("train-corpus-suffix", ["train", "--corpus", "{odd_suffix}", "--out", "{fresh}"], "unsupported corpus file"),
    ("train-arch-folder", ["train", "--arch", "{folder}", "--out", "{fresh}"], "a file is expected"),
    ("train-arch-binary", ["train", "--arch", "{binary}", "--out", "{fresh}"], "cannot read"),
    ("train-batch-size-zero", ["train", "--batch-size", "0"], "--batch-size", SUB),
    ("train-unknown-option", ["train", "--bogus"], "No such option"),
    ("unknown-command", ["bogus"], "No such command"),
    # distill
    ("distill-student-missing", ["distill", "--teacher", "{model}", "--student", "{missing}"], "does not exist"),
    ("distill-student-folder", ["distill", "--teacher", "{model}", "--student", "{folder}"], "a file is expected"),
    ("distill-teacher-missing", ["distill", "--teacher", "{missing}", "--student", "{arch}"], "does not exist"),
    (
        "distill-temperature-zero",
        ["distill", "--teacher", "{model}", "--student", "{arch}", "--temperature", "0"],
        "--temperature",
    ),
    (
        "distill-ce-weight",
        ["distill", "--teacher", "{model}", "--student", "{arch}", "--ce-weight", "2"],
        "--ce-weight",
    ),
    ("distill-skew-nan", ["distill", "--teacher", "{model}", "--student", "{arch}", "--skew", "nan"], "finite"),
    (
        "distill-budget-huge",
        ["distill", "--teacher", "{model}", "--student", "{arch}", "--budget", "99999h"],
        "30 days",
    ),
    ("distill-out-done", ["distill", "--teacher", "{model}", "--student", "{arch}", "--out", "{done}"], "--overwrite"),
    (
        "distill-cache-file",
        ["distill", "--teacher", "{model}", "--student", "{arch}", "--topk", "5", "--cache-topk", "{file}"],
        "is a file",
    ),
    (
        "distill-teacher-data-binary",
        ["distill", "--teacher", "openai:m", "--student", "{arch}", "--loss", "seq", "--teacher-data", "{binary}"],
        "not UTF-8",
    ),
    (
        "distill-teacher-data-folder",
        ["distill", "--teacher", "openai:m", "--student", "{arch}", "--loss", "seq", "--teacher-data", "{folder}"],
        "is a folder",
    ),
    # sizes no machine here holds, addresses that are not addresses
    ("train-batch-size-huge", ["train", "--batch-size", "1000000000", "--out", "{fresh}"], "--batch-size"),
    (
        "search-population-huge",
        ["nas", "search", "--out", "{fresh}", "--trials", "1", "--population", "10000000"],
        "--population",
    ),
    (
        "compress-eval-bytes-huge",
        ["compress", "--model", "{model}", "--int8", "--out", "{fresh}", "--eval-bytes", "1" + "0" * 15],
        "--eval-bytes",
    ),
    ("eval-base-url", ["eval", "humaneval", "--model", "openai:m", "--base-url", "localhost:8000"], "http://"),
    (
        "distill-base-url",
        ["distill", "--teacher", "openai:m", "--student", "{arch}", "--loss", "seq", "--teacher-base-url", "ftp://x"],
        "http://",
    ),
    # seeds no library takes
    ("seed-train-negative", ["train", "--seed", "-1", "--out", "{fresh}"], "--seed"),
    ("seed-train-huge", ["train", "--seed", str(2**70), "--out", "{fresh}"], "--seed"),
    ("seed-search", ["nas", "search", "--out", "{fresh}", "--trials", "1", "--seed", "-5"], "--seed"),
    ("seed-distill", ["distill", "--teacher", "{model}", "--student", "{arch}", "--seed", str(2**40)], "--seed"),
    ("seed-compress", ["compress", "--model", "{model}", "--int8", "--out", "{fresh}", "--seed", "-1"], "--seed"),
    ("seed-eval", ["eval", "humaneval", "--model", "{model}", "--seed", "-1"], "--seed"),
    ("seed-run", ["run", GOAL, "--seed", "-1", "--runs-dir", "{runs_new}"], "--seed"),
    ("seed-arch-sample", ["arch", "sample", "--seed", "-1"], "--seed"),
    # names longer than the file system allows
    ("long-compress-out", ["compress", "--model", "{model}", "--int8", "--out", "{long}"], "too long"),
    ("long-search-out", ["nas", "search", "--out", "{long}", "--trials", "1"], "too long"),
    ("long-eval-model", ["eval", "humaneval", "--model", "{long}"], "is not a run folder"),
    ("long-eval-samples", ["eval", "humaneval", "--samples", "{long}"], "too long"),
    ("long-arch-sample-out", ["arch", "sample", "--out", "{long}"], "too long"),
    ("long-train-corpus", ["train", "--corpus", "{long}", "--out", "{fresh}"], "too long"),
    ("long-run-id", ["run", GOAL, "--run-id", "x" * 300, "--runs-dir", "{runs_new}"], "at most 128"),
    ("long-status-runs-dir", ["status", RUN, "--runs-dir", "{long}"], "too long"),
    # run
    ("run-goal-not-utf8", ["run", GOAL + " \udcff", "--runs-dir", "{runs_new}"], "not valid UTF-8", SUB),
    ("arch-show-name-not-utf8", ["arch", "show", "\udcff.json"], "not valid UTF-8"),
    (
        "run-corpus-missing",
        ["run", GOAL, "--corpus", "/missing.jsonl", "--runs-dir", "{runs_new}"],
        "does not exist",
        SUB,
    ),
    ("run-prompts-missing", ["run", GOAL, "--prompts", "/missing", "--runs-dir", "{runs_new}"], "does not exist"),
    ("run-prompts-file", ["run", GOAL, "--prompts", "{file}", "--runs-dir", "{runs_new}"], "a folder is expected"),
    ("run-prompts-empty", ["run", GOAL, "--prompts", "{folder}", "--runs-dir", "{runs_new}"], "none of the templates"),
    ("run-prompts-binary", ["run", GOAL, "--prompts", "{bad_prompts}", "--runs-dir", "{runs_new}"], "not UTF-8"),
    ("run-budget-huge", ["run", GOAL, "--budget", "99999h", "--runs-dir", "{runs_new}"], "30 days"),
    (
        "run-budget-just-over",
        ["run", GOAL, "--budget", f"{int(MAX_BUDGET_S) + 1}s", "--runs-dir", "{runs_new}"],
        "30 days",
    ),
    (
        "run-experiment-budget-huge",
        ["run", GOAL, "--experiment-budget", "99999h", "--runs-dir", "{runs_new}"],
        "30 days",
    ),
    ("run-editor-timeout-zero", ["run", GOAL, "--editor-timeout", "0s", "--runs-dir", "{runs_new}"], "positive"),
    ("run-llm-timeout-nan", ["run", GOAL, "--llm-timeout", "nan", "--runs-dir", "{runs_new}"], "finite"),
    ("run-max-cost-negative", ["run", GOAL, "--max-cost", "-1", "--runs-dir", "{runs_new}"], "--max-cost"),
    ("run-max-cost-inf", ["run", GOAL, "--max-cost", "inf", "--runs-dir", "{runs_new}"], "finite"),
    ("run-gpu-hours-zero", ["run", GOAL, "--max-gpu-hours", "0", "--runs-dir", "{runs_new}"], "--max-gpu-hours"),
    ("run-price-nan", ["run", GOAL, "--price-in", "nan", "--price-out", "1", "--runs-dir", "{runs_new}"], "finite"),
    ("run-runs-dir-file", ["run", GOAL, "--runs-dir", "{file}"], "is a file"),
    ("run-base-url", ["run", GOAL, "--base-url", "localhost:8000", "--runs-dir", "{runs_new}"], "http://"),
    ("run-existing-id", ["run", GOAL, "--run-id", RUN, "--runs-dir", "{runs}"], "already exists"),
    # resume / status / review on corrupt run state
    (
        "resume-sqlite-truncated",
        ["resume", RUN, "--runs-dir", "{runs_truncated}"],
        "checkpoints.sqlite is corrupt",
        SUB,
    ),
    ("resume-sqlite-garbage", ["resume", RUN, "--runs-dir", "{runs_garbage}"], "checkpoints.sqlite is corrupt"),
    ("resume-results-not-utf8", ["resume", RUN, "--runs-dir", "{runs}"], "results.tsv is corrupt"),
    ("resume-sqlite-empty", ["resume", RUN, "--runs-dir", "{runs_empty}"], "holds no checkpoint"),
    ("resume-sqlite-no-rows", ["resume", RUN, "--runs-dir", "{runs_no_rows}"], "holds no checkpoint"),
    ("resume-sqlite-missing", ["resume", RUN, "--runs-dir", "{runs_missing}"], "is missing"),
    ("resume-sqlite-folder", ["resume", RUN, "--runs-dir", "{runs_sqlite_dir}"], "checkpoints.sqlite is corrupt"),
    ("resume-run-json-binary", ["resume", RUN, "--runs-dir", "{runs_bad_json}"], "run.json is corrupt"),
    ("resume-run-json-invalid", ["resume", RUN, "--runs-dir", "{runs_invalid_json}"], "run.json is corrupt"),
    ("resume-run-id-traversal", ["resume", "..", "--runs-dir", "{runs}"], "run id"),
    ("resume-runs-dir-missing", ["resume", RUN, "--runs-dir", "{missing}"], "does not exist"),
    ("status-results-not-utf8", ["status", RUN, "--runs-dir", "{runs}"], "results.tsv is corrupt", SUB),
    ("status-ledger-not-utf8", ["status", RUN, "--runs-dir", "{runs_ledger}"], "llm_calls.jsonl is corrupt"),
    ("status-run-json-binary", ["status", RUN, "--runs-dir", "{runs_bad_json}"], "run.json is corrupt"),
    ("review-run-json-invalid", ["review", RUN, "--runs-dir", "{runs_invalid_json}"], "run.json is corrupt"),
    ("review-run-id-path", ["review", "a/../b", "--runs-dir", "{runs}"], "run id"),
]


def _digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the hash of its bytes (folders and links marked as such)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _settings(runs: Path) -> str:
    from agent.settings import RunSettings

    return RunSettings(run_id=RUN, goal=GOAL, runs_dir=str(runs), budget_s=60).model_dump_json()


RECORDED = b"experiment\tkind\tdecision\ne001\ttrain\tkeep\n"  # a run that recorded an experiment


def _real_checkpoints(path: Path, thread: str = RUN) -> None:
    """A sound SQLite file shaped like the agent's checkpointer, several pages long."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE checkpoints (thread_id TEXT, checkpoint_ns TEXT, checkpoint_id TEXT, checkpoint BLOB)")
    conn.executemany(
        "INSERT INTO checkpoints VALUES (?, '', ?, ?)", [(thread, str(i), os.urandom(900)) for i in range(64)]
    )
    conn.commit()
    conn.close()


def _run_folder(
    runs: Path,
    checkpoints: str | None,
    run_json: bytes | None = None,
    results: bytes = RECORDED,
    ledger: bytes | None = None,
) -> None:
    run_dir = runs / RUN
    (run_dir / "workspace").mkdir(parents=True)
    (run_dir / "run.json").write_bytes(run_json if run_json is not None else _settings(runs).encode())
    (run_dir / "workspace" / "results.tsv").write_bytes(results)
    if ledger is not None:
        (run_dir / "llm_calls.jsonl").write_bytes(ledger)
    db = run_dir / "checkpoints.sqlite"
    if checkpoints == "truncated":
        _real_checkpoints(db)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    elif checkpoints == "garbage":
        db.write_bytes(b"SQLite format 3\0" + b"\xff" * 300)
    elif checkpoints == "empty":
        db.write_bytes(b"")
    elif checkpoints == "folder":
        db.mkdir()
    elif checkpoints == "ok":
        _real_checkpoints(db)
    elif checkpoints == "other-run":
        _real_checkpoints(db, thread="another-run")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("world")
    paths: dict[str, Path] = {"root": root}
    model = root / "model"  # validation never reads the weights, so a folder of the right shape is enough
    model.mkdir()
    (model / "arch.json").write_text(
        json.dumps(
            {
                "n_layers": 1,
                "d_model": 32,
                "n_heads": 2,
                "n_kv_heads": 2,
                "d_ff": 64,
                "context_length": 64,
                "vocab_size": 256,
            }
        )
    )
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    paths["model"] = model
    paths["arch"] = model / "arch.json"
    paths["file"] = root / "notes.txt"
    paths["file"].write_text("just a file\n")
    paths["folder"] = root / "folder"
    paths["folder"].mkdir()
    paths["missing"] = root / "missing"
    paths["fresh"] = root / "fresh-out"  # never created by any row
    paths["done"] = root / "done"
    paths["done"].mkdir()
    (paths["done"] / "metrics.json").write_text('{"val_bpb": 2.5}\n')
    (root / "runs" / "humaneval-model").mkdir(parents=True)  # eval --model's default --out, already used
    (root / "runs" / "humaneval-model" / "metrics.json").write_text("{}\n")
    paths["samples"] = root / "samples.jsonl"
    paths["samples"].write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    paths["binary"] = root / "blob.jsonl"
    paths["binary"].write_bytes(bytes(range(256)) * 4)
    paths["binary_json"] = root / "blob.json"
    paths["binary_json"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    paths["latin1"] = root / "latin1.jsonl"
    paths["latin1"].write_bytes('{"task_id": "HumanEval/0", "completion": "caf\u00e9"}\n'.encode("latin-1"))
    paths["list_jsonl"] = root / "lists.jsonl"
    paths["list_jsonl"].write_text("[1, 2]\n")
    paths["odd_suffix"] = root / "corpus.xyz"
    paths["odd_suffix"].write_text("text\n")
    paths["fake_parquet"] = root / "corpus.parquet"
    paths["fake_parquet"].write_bytes(b"PAR1" + bytes(range(256)))
    paths["fake_gz"] = root / "problems.jsonl.gz"
    paths["fake_gz"].write_text('{"task_id": "x"}\n')
    paths["bad_prompts"] = root / "prompts"
    paths["bad_prompts"].mkdir()
    (paths["bad_prompts"] / "planner.txt").write_bytes(b"\xff\xfe plan $goal")
    paths["runs_new"] = root / "runs-new"  # a run that must never be created
    for key, kind, extra in [
        ("runs", "ok", {"results": b"experiment\tkind\ne001\t\xe9t\xe9\n"}),
        ("runs_truncated", "truncated", {}),
        ("runs_garbage", "garbage", {}),
        ("runs_empty", "empty", {}),
        ("runs_missing", None, {}),
        ("runs_sqlite_dir", "folder", {}),
        ("runs_no_rows", "other-run", {}),
        ("runs_bad_json", "ok", {"run_json": b"\x00\xff" * 40}),
        ("runs_invalid_json", "ok", {"run_json": b'{"run_id": "r1", "goal": '}),
        ("runs_ledger", "ok", {"ledger": b'{"role": "planner"}\n\xff\xfe\n'}),
    ]:
        paths[key] = root / key
        _run_folder(paths[key], kind, **extra)
    paths["long"] = root / ("x" * 300)
    return {k: str(v) for k, v in paths.items()}


def _argv(row: tuple, world: dict[str, str]) -> list[str]:
    return [a.format(**world) for a in row[1]]


def _check_one_line(text: str, phrase: str, what: str) -> None:
    assert "Traceback" not in text, what + "\n" + text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, what + "\n" + text
    assert lines[0].startswith("error:") and phrase in lines[0], what + "\n" + text


@pytest.mark.parametrize("row", [r for r in ROWS if SUB not in r], ids=lambda r: r[0])
def test_bad_input_in_process(row: tuple, world: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(world["root"])
    monkeypatch.chdir(root)  # default outputs (runs/...) land where the digest sees them
    before = _digest(root)
    result = CliRunner().invoke(app, _argv(row, world))
    assert result.exit_code == 2, f"{row[0]}: exit {result.exit_code}\n{result.output}"
    _check_one_line(result.output, row[2], row[0])
    assert _digest(root) == before, f"{row[0]} changed the files"


def test_bad_input_in_real_processes(world: dict[str, str]) -> None:
    """The SUB rows as real processes, all at once: exit 2, stderr one line, stdout empty, no file changed."""
    root = Path(world["root"])
    rows = [r for r in ROWS if SUB in r]
    before = _digest(root)
    env = {**os.environ, "COLUMNS": "80"}
    procs = [
        (
            row,
            subprocess.Popen(
                [AUTONAS, *_argv(row, world)],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for row in rows
    ]
    for row, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, f"{row[0]}: exit {proc.returncode}\n{out}\n{err}"
        assert out == "", f"{row[0]} wrote to stdout: {out}"
        _check_one_line(err, row[2], row[0])
    assert _digest(root) == before


def test_worker_entry_points_speak_one_line_too(world: dict[str, str]) -> None:
    """``python -m nas|distill|kernels`` share the same one-line errors (usage errors included)."""
    cases = [
        (["nas", "train", "--batch-size", "0"], "--batch-size"),
        (["kernels", "compress", "--model", world["model"], "--int8", "--out", world["file"]], "is a file"),
        (["distill", "eval", "humaneval", "--samples", world["samples"], "--timeout", "inf"], "finite"),
    ]
    procs = [
        (
            args,
            phrase,
            subprocess.Popen(
                [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
        for args, phrase in cases
    ]
    for args, phrase, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, f"{args}: {out}{err}"
        _check_one_line(err, phrase, " ".join(args))


def test_sound_checkpoints_pass_the_check(tmp_path: Path) -> None:
    """The corrupt-state check does not refuse a sound checkpoint file (and leaves it as it was)."""
    from agent.commands import _resume_from_start
    from agent.settings import RunSettings

    _run_folder(tmp_path / "ok", "ok")
    _run_folder(tmp_path / "fresh", None, results=b"experiment\tkind\n")  # killed before its first step
    before = _digest(tmp_path)
    for name, from_start in (("ok", False), ("fresh", True)):
        settings = RunSettings.model_validate_json(_settings(tmp_path / name))
        assert _resume_from_start(settings, (settings.workspace / "results.tsv").read_text()) is from_start
    assert _digest(tmp_path) == before


def test_overwrite_lets_the_output_folder_be_reused(world: dict[str, str], tmp_path: Path) -> None:
    """``--overwrite`` is the way past the refusal: the same folder is then accepted (validation only)."""
    from nas import validate

    done = Path(world["done"])
    assert validate.output_dir(done, overwrite=True) == done
    f = tmp_path / "arch.json"
    f.write_text("{}")
    assert validate.output_file(f, overwrite=True) == f
    assert validate.budget("720h", "--budget").seconds == MAX_BUDGET_S
    result = CliRunner().invoke(app, ["arch", "sample", "--space", "tiny", "--out", str(f), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads(f.read_text())["d_model"] > 0
