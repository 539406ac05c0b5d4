"""The run-file contract: one schema, one writer, one reader for ``metrics.json``; ``log.txt`` from every worker;
one default for how many validation bytes a bpb figure is scored on."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.errors import UserError
from harness.run_files import (
    EVAL_BYTES,
    LOG_FILE,
    MAX_METRICS_BYTES,
    METRICS_FILE,
    MissingRunFile,
    RunFileError,
    RunMetrics,
    append_log,
    parse_metrics,
    read_metrics,
    write_metrics,
)
from tests.conftest import TINY_ARCH

GOOD = {
    "status": "ok",
    "kind": "train",
    "val_bpb": 2.375,
    "params": 12_345,
    "size_bytes_int8": 13_000,
    "latency_ms_p50": 0.25,
    "wall_s": 1.5,
    "eval_bytes": 8192,
    "tokens_trained": 40_960,
    "seed": 3,
    "tokenizer": "byte",
    "resumed": False,
    "train_loss_first": None,
    "flops_per_token": 99,
}


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError) and message and "\n" not in message and len(message) <= 500
    return message


def test_round_trip_keeps_every_key_and_type(tmp_path: Path) -> None:
    written = write_metrics(tmp_path, GOOD)
    back = read_metrics(tmp_path / METRICS_FILE)
    assert back == written and back.flat() == GOOD
    assert read_metrics(tmp_path).flat() == GOOD  # the run folder names its metrics.json
    assert isinstance(back.val_bpb, float) and isinstance(back.params, int) and back.model_extra["tokenizer"] == "byte"
    on_disk = json.loads((tmp_path / METRICS_FILE).read_text())
    assert on_disk == GOOD and list(on_disk) == sorted(GOOD)  # plain, sorted JSON any tool reads
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]  # no temporary file left behind


def test_writer_takes_numpy_and_torch_scalars_as_numbers(tmp_path: Path) -> None:
    import numpy as np
    import torch

    m = write_metrics(
        tmp_path, {"status": "ok", "params": np.int64(7), "val_bpb": torch.tensor(1.25), "val_tokens": np.int32(5)}
    )
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {
        "status": "ok",
        "params": 7,
        "val_bpb": 1.25,
        "val_tokens": 5,
    }
    assert m.params == 7


def test_a_typed_key_written_as_null_reads_as_absent(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"status": "ok", "val_bpb": 1.5, "latency_ms_p50": null, "note": null}')
    flat = read_metrics(tmp_path).flat()
    assert flat == {"status": "ok", "val_bpb": 1.5, "note": None}
    assert flat.get("latency_ms_p50", 0) == 0  # what the judge's limit check relies on


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"status": "ok", "arch": {"d_model": 64}}, "arch: a dict is not flat"),
        ({"status": "ok", "sizes": [1, 2]}, "sizes: a list is not flat"),
        ({"status": "ok", "val_bpb": float("nan")}, "val_bpb: Input should be a finite number"),
        ({"status": "ok", "ratio": float("inf")}, "ratio: inf is not a finite number"),
        ({"status": "ok", "note": "x" * 5000}, "note: string of 5000 characters"),
        ({"status": "ok", "fail_reason": "y" * 5000}, "fail_reason: String should have at most 4096 characters"),
        ({"status": "ok", "params": 2.5}, "params: Input should be a valid integer"),
        ({"status": "ok", "params": True}, "params: Input should be a valid integer"),
        ({"status": "ok", "val_bpb": -1.0}, "val_bpb: Input should be greater than or equal to 0"),
        ({"status": "fine"}, "status: Input should be 'ok'"),
        ({"val_bpb": 1.0}, "status: Field required"),
        ({"status": "ok", "bad key!": 1}, "is not a short identifier"),
        ({"status": "ok", "big": 2**70}, "big: integer out of range"),
    ],
)
def test_writer_refuses_what_is_not_flat_and_finite_and_keeps_the_old_file(
    tmp_path: Path, bad: dict, says: str
) -> None:
    write_metrics(tmp_path, {"status": "ok", "val_bpb": 3.0})
    with pytest.raises(RunFileError) as excinfo:
        write_metrics(tmp_path, bad)
    message = _one_line_error(excinfo)
    assert says in message and str(tmp_path / METRICS_FILE) in message
    assert read_metrics(tmp_path).flat() == {"status": "ok", "val_bpb": 3.0}  # a refused write loses nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"status": "ok", "val_bpb": NaN}', "NaN is not a number"),
        ('{"status": "ok", "x": -Infinity}', "-Infinity is not a number"),
        ('{"status": "ok", "x": {"y": 1}}', "x: a dict is not flat"),
        ('{"status": "ok", "x": "' + "z" * 10_000 + '"}', "x: string of 10000 characters"),
        ("[" * 100_000 + "]" * 100_000, "is not JSON"),
        ('["status", "ok"]', "holds a JSON list, not an object"),
        ('{"status": "ok", ', "is not JSON"),
        (b"\xff\xfe{}", "is not JSON (UnicodeDecodeError"),
    ],
)
def test_reader_refuses_a_hostile_file_in_one_line(tmp_path: Path, text: str | bytes, says: str) -> None:
    path = tmp_path / METRICS_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunFileError) as excinfo:
        read_metrics(path)
    assert says in _one_line_error(excinfo)


def test_reader_follows_no_link_opens_no_fifo_and_caps_the_size(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    write_metrics(real, {"status": "ok", "val_bpb": 0.01})  # a valid file, but not this run's
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / METRICS_FILE).symlink_to(real / METRICS_FILE)
    with pytest.raises(RunFileError) as excinfo:
        read_metrics(linked)
    assert "cannot be opened safely" in _one_line_error(excinfo)

    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / METRICS_FILE)  # opened without blocking, then refused
    with pytest.raises(RunFileError) as excinfo:
        read_metrics(fifo)
    assert "is not a regular file" in _one_line_error(excinfo)

    big = tmp_path / "big"
    big.mkdir()
    (big / METRICS_FILE).write_text('{"status": "ok", "pad": "' + " " * MAX_METRICS_BYTES + '"}')
    with pytest.raises(RunFileError) as excinfo:
        read_metrics(big)
    assert f"more than the {MAX_METRICS_BYTES} allowed" in _one_line_error(excinfo)

    with pytest.raises(MissingRunFile) as excinfo:
        read_metrics(tmp_path / "nothing-here")
    assert "does not exist" in _one_line_error(excinfo)


def test_bytes_from_a_remote_worker_are_checked_like_a_file() -> None:
    assert parse_metrics(b'{"status": "ok", "val_bpb": 1.0}').val_bpb == 1.0
    with pytest.raises(RunFileError, match="from ray: x: a dict is not flat"):
        parse_metrics('{"status": "ok", "x": {}}', "from ray")


def test_append_log_stamps_lines_and_follows_no_link(tmp_path: Path) -> None:
    append_log(tmp_path, "first")
    append_log(tmp_path, "second\n")
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["first", "second"]
    planted = tmp_path / "planted"
    planted.mkdir()
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    (planted / LOG_FILE).symlink_to(target)
    with pytest.raises(OSError):
        append_log(planted, "through the link")
    assert target.read_text() == "untouched\n"


def test_failure_metrics_fit_the_contract_even_for_a_long_reason() -> None:
    m = RunMetrics.failure("crashed", "line one\nline two " + "z" * 10_000)
    assert m.status == "crashed" and len(m.fail_reason) <= 4096 and "\n" not in m.fail_reason
    assert m.flat() == {"status": "crashed", "fail_reason": m.fail_reason}


# ------------------------------------------------------------------------------------------ every worker's file


def test_a_training_run_writes_metrics_that_validate_and_a_log(tiny_run: Path) -> None:
    m = read_metrics(tiny_run)
    assert m.status == "ok" and m.kind == "train" and m.eval_bytes == 8192 and m.seed == 0
    assert 0 < m.val_bpb < 9 and m.params > 0 and m.size_bytes_int8 > 0 and m.tokens_trained >= 20_000
    assert m.model_extra["val_bytes"] <= 8192
    assert "finished: status ok" in (tiny_run / LOG_FILE).read_text()


def test_a_diverged_run_writes_null_losses_not_nan(tmp_path: Path, small_corpus_dir: Path) -> None:
    from harness.data import CorpusSpec, prepare_corpus
    from nas.space import ArchConfig
    from nas.train import TrainConfig, Trainer

    cfg = TrainConfig(
        budget_tokens=20_000,
        batch_size=8,
        lr=1e4,
        grad_clip=0.0,
        warmup_frac=0.0,
        log_every=1,
        measure_latency=False,
        device="cpu",
        eval_bytes=4096,
    )
    spec = CorpusSpec(source=str(small_corpus_dir))
    outcome = Trainer(
        ArchConfig(**TINY_ARCH), prepare_corpus(spec, "byte"), cfg, tmp_path, spec, log_to_console=False
    ).run()
    m = read_metrics(tmp_path)
    assert outcome.status == m.status == "diverged" and m.val_bpb is None and "loss" in m.fail_reason
    assert (
        "NaN" not in (tmp_path / METRICS_FILE).read_text() and "Infinity" not in (tmp_path / METRICS_FILE).read_text()
    )


def test_compress_writes_metrics_that_validate_and_a_log(tiny_run: Path, tmp_path: Path) -> None:
    from kernels.compress import CompressConfig, compress

    returned = compress(
        tiny_run,
        tmp_path / "c",
        CompressConfig(int8=True, eval_bytes=4096, measure_latency=False),
        log_to_console=False,
    )
    m = read_metrics(tmp_path / "c")
    assert m.flat() == returned
    assert (
        m.status == "ok" and m.kind == "compress" and m.eval_bytes == 4096 and m.params == read_metrics(tiny_run).params
    )
    assert m.val_bpb == pytest.approx(m.model_extra["val_bpb_before"], rel=0.05)  # int8 weights barely move bpb
    log = (tmp_path / "c" / LOG_FILE).read_text()
    assert "before: val bpb" in log and "int8 weights: val bpb" in log and "finished: val bpb" in log


def test_eval_humaneval_writes_metrics_that_validate_and_a_log(tmp_path: Path) -> None:
    from agent.cli import app
    from harness.humaneval import read_problems, write_jsonl

    everything = read_problems()
    problems = list(everything.items())[:3]
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [{"task_id": t, "completion": p.canonical_solution} for t, p in problems])
    res = CliRunner().invoke(
        app, ["eval", "humaneval", "--samples", str(samples), "--ignore-incomplete", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 0, res.output
    m = read_metrics(tmp_path / "e")
    assert m.status == "ok" and m.kind == "eval" and m.model_extra["humaneval_pass_at_1"] == 1.0 and m.wall_s > 0
    assert m.model_extra["humaneval_problems"] == 3
    log = (tmp_path / "e" / LOG_FILE).read_text()
    assert f"humaneval: {len(everything)} problems" in log and "finished: pass@1 1.0000; 3/3 samples passed" in log


def test_a_trial_reuses_a_valid_metrics_file_and_fails_on_a_hostile_one(tmp_path: Path) -> None:
    from nas.space import ArchConfig
    from nas.trial import TrialSpec, run_trial

    done = tmp_path / "done"
    done.mkdir()
    write_metrics(done, {"status": "ok", "kind": "train", "val_bpb": 2.0, "params": 10})
    spec = TrialSpec(number=1, arch=ArchConfig(**TINY_ARCH), budget="1ktok", out_dir=str(done))
    reused = run_trial(spec)
    assert reused.status == "ok" and reused.metrics == {"status": "ok", "kind": "train", "val_bpb": 2.0, "params": 10}

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / METRICS_FILE).write_text('{"status": "ok", "val_bpb": {"nested": 1}}')
    failed = run_trial(spec.model_copy(update={"out_dir": str(hostile)}))
    assert failed.status == "crashed" and "val_bpb" in failed.fail_reason and failed.metrics == {}

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / METRICS_FILE).symlink_to(done / METRICS_FILE)
    refused = run_trial(spec.model_copy(update={"out_dir": str(linked)}))
    assert refused.status == "crashed" and "cannot be opened safely" in refused.fail_reason


def test_a_remote_trials_metrics_reach_the_folder_only_through_the_writer(tmp_path: Path) -> None:
    from nas.executors import _write_missing_files
    from nas.space import ArchConfig
    from nas.trial import TrialResult, TrialSpec

    def remote(out: Path, metrics_text: str) -> TrialResult:
        spec = TrialSpec(number=0, arch=ArchConfig(**TINY_ARCH), budget="1ktok", out_dir=str(out))
        result = TrialResult(number=0, stage=1, status="ok", files={METRICS_FILE: metrics_text, LOG_FILE: "a line\n"})
        _write_missing_files(spec, result)
        return result

    remote(tmp_path / "good", '{"status": "ok", "val_bpb": 1.5}')
    assert read_metrics(tmp_path / "good").val_bpb == 1.5 and (tmp_path / "good" / LOG_FILE).read_text() == "a line\n"
    remote(tmp_path / "bad", '{"status": "ok", "val_bpb": [1.5]}')
    assert not (tmp_path / "bad" / METRICS_FILE).exists() and (tmp_path / "bad" / LOG_FILE).is_file()


# ------------------------------------------------------------------------------------------ one eval-bytes default


def _eval_bytes_defaults(app: typer.Typer) -> dict[str, object]:
    """Command path -> the default of its --eval-bytes, for every command of the CLI that has one."""
    import click

    found: dict[str, object] = {}

    def walk(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if "--eval-bytes" in getattr(p, "opts", ()):
                found[path] = p.default
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_and_config_scores_the_same_bytes_by_default() -> None:
    from agent.cli import app
    from agent.settings import RunSettings
    from distill.cli import make_app as distill_app
    from harness.metrics import evaluate_bpb
    from kernels.cli import make_app as kernels_app
    from kernels.compress import CompressConfig
    from nas.cli import make_app as nas_app
    from nas.search import SearchConfig
    from nas.train import TrainConfig
    from nas.trial import TrialSpec

    defaults = _eval_bytes_defaults(app)
    assert {"run", "train", "nas search", "distill", "compress"} <= set(defaults), defaults
    for worker, commands in (
        (nas_app, {"train", "nas search"}),
        (distill_app, {"distill"}),
        (kernels_app, {"compress"}),
    ):
        found = _eval_bytes_defaults(worker())  # ``python -m nas`` and friends, without the agent
        assert commands <= set(found), found
        defaults.update({f"{worker.__module__} {k}": v for k, v in found.items()})
    assert set(defaults.values()) == {EVAL_BYTES}, defaults
    for model in (TrainConfig, CompressConfig, SearchConfig, TrialSpec, RunSettings):
        assert model.model_fields["eval_bytes"].default == EVAL_BYTES, model
    assert inspect.signature(evaluate_bpb).parameters["max_bytes"].default == EVAL_BYTES


def test_an_old_metrics_file_saying_failed_reads_as_crashed(tmp_path: Path) -> None:
    # written by an earlier version, whose trials said "failed" where today's say "crashed"
    (tmp_path / METRICS_FILE).write_text('{"status": "failed", "fail_reason": "out of memory: CUDA", "kind": "train"}')
    m = read_metrics(tmp_path)
    assert m.status == "crashed" and m.fail_reason == "out of memory: CUDA"
    assert m.flat() == {"status": "crashed", "fail_reason": "out of memory: CUDA", "kind": "train"}
    with pytest.raises(RunFileError, match="status"):  # an unknown word is still refused
        parse_metrics('{"status": "exploded"}')


def test_a_trainers_failure_text_reads_from_an_older_copy_of_the_trainer() -> None:
    from types import SimpleNamespace

    from harness.run_files import outcome_fail_reason

    # nas/train.py is editable: a workspace or a model's carried code may hold a copy whose outcome says ``reason``
    assert (
        outcome_fail_reason(SimpleNamespace(status="capped", reason="wall-clock cap", metrics={})) == "wall-clock cap"
    )
    assert outcome_fail_reason(SimpleNamespace(status="diverged", fail_reason="loss became nan", metrics={})) == (
        "loss became nan"
    )
