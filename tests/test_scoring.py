"""The harness scores a model whose code runs in another process: hostile model code cannot change the number."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data import CorpusSpec, prepare_corpus
from harness.metrics import evaluate_bpb
from harness.model_code import MODEL_CODE_ENV, seed_files, write_code_record
from harness.scoring import ScoringRefused, score_run

PEEK = """

_honest_forward = CodeLM.forward


def _peeking_forward(self, input_ids, cache=None):  # reads the next token of its own input: a non-causal cheat
    logits = _honest_forward(self, input_ids, cache)
    if input_ids.shape[1] > 1:
        logits = logits.clone()
        logits[:, :-1] += 30.0 * torch.nn.functional.one_hot(input_ids[:, 1:], logits.shape[-1])
    return logits


CodeLM.forward = _peeking_forward
"""

PATCH_THE_METRIC = """

import harness.metrics as _hm
import torch.nn.functional as _F

_F.cross_entropy = lambda *a, **k: torch.zeros(())  # a loss of zero for everyone in this process
_hm.evaluate_bpb = lambda *a, **k: _hm.EvalResult(0.01, 0.01, 1, 1)
print("noise on stdout from the model's code")
"""


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in (MODEL_CODE_ENV, "PYTHONPATH")}
    env["PYTHONSAFEPATH"] = "1"
    return subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )


def _with_code(tiny_run: Path, tmp_path: Path, extra: str) -> Path:
    """A copy of the trained run whose carried model code has ``extra`` appended to nas/model.py."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("code", "code.json"))
    code = tmp_path / "edited"
    (code / "nas").mkdir(parents=True)
    (code / "nas" / "model.py").write_bytes(seed_files()["nas/model.py"] + extra.encode())
    write_code_record(run, code)
    return run


@pytest.fixture(scope="module")
def corpus(small_corpus_dir: Path):
    return prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")


def test_the_harness_score_equals_the_in_process_score_of_an_honest_model(tiny_run: Path, corpus) -> None:
    from nas.run_folder import load_trained_model

    model, _ = load_trained_model(tiny_run)
    expected = evaluate_bpb(model, corpus["val"], corpus.token_bytes, 8192)
    scored = score_run(tiny_run, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)
    assert scored.bpb == pytest.approx(expected.bpb, abs=1e-9) and scored.bytes == expected.bytes
    assert scored.probes >= 1  # causality was checked


def test_a_model_that_reads_the_tokens_it_predicts_is_refused(tiny_run: Path, corpus, tmp_path: Path) -> None:
    run = _with_code(tiny_run, tmp_path, PEEK)
    with pytest.raises(ScoringRefused, match="reads the tokens it must predict"):
        score_run(run, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)


def test_model_code_that_patches_the_loss_and_prints_changes_nothing(tiny_run: Path, corpus, tmp_path: Path) -> None:
    honest = score_run(tiny_run, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)
    run = _with_code(tiny_run, tmp_path, PATCH_THE_METRIC)
    scored = score_run(run, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)
    assert scored.bpb == pytest.approx(honest.bpb, abs=1e-9) and scored.bpb > 1.0


def test_a_model_process_that_dies_or_lies_about_its_shape_is_refused(tiny_run: Path, corpus, tmp_path: Path) -> None:
    run = _with_code(tiny_run, tmp_path, "\nimport os\nos._exit(0)\n")
    with pytest.raises(ScoringRefused, match="ended before scoring finished"):
        score_run(run, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)
    wide = tmp_path / "wide"
    wide.mkdir()
    run2 = _with_code(
        tiny_run,
        wide,
        "\n_f = CodeLM.forward\nCodeLM.forward = lambda self, x, cache=None: "
        "torch.cat([_f(self, x, cache), _f(self, x, cache)], -1)\n",
    )
    with pytest.raises(ScoringRefused, match="512 logits per position, its arch.json says 256"):
        score_run(run2, corpus["val"], corpus.token_bytes, 8192, _spawn, sys.executable)
