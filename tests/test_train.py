import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from harness.data import CorpusSpec, prepare_corpus
from harness.metrics import evaluate_bpb
from nas.model import build_model
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer, lr_multiplier, prepare_run_dir

TINY = ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, context_length=64)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(small_corpus_dir):
    return prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")


def _cfg(**kw):
    base = dict(budget_tokens=40 * 8 * 64, batch_size=8, lr=3e-3, eval_bytes=4000, measure_latency=False, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_val_bpb(tmp_path, corpus, small_corpus_dir):
    init = evaluate_bpb(build_model(TINY, seed=0), corpus["val"], corpus.token_bytes, max_bytes=4000).bpb
    out = tmp_path / "run"
    prepare_run_dir(out)
    outcome = Trainer(TINY, corpus, _cfg(), out, CorpusSpec(source=str(small_corpus_dir)), log_to_console=False).run()
    m = json.loads((out / "metrics.json").read_text())
    assert outcome.status == "ok" and m["status"] == "ok"
    assert m["val_bpb"] < init - 1.0, (init, m["val_bpb"])  # 40 steps take a byte model well below init
    assert m["steps"] == 40 and m["tokens_trained"] == 40 * 8 * 64
    assert m["train_loss_last"] < m["train_loss_first"]
    for key in ("params", "size_bytes_int8", "flops_per_token", "wall_s", "peak_mem_mb", "tokens_per_s"):
        assert m[key] > 0
    assert (out / "model.safetensors").is_file() and not (out / "ckpt").exists()
    assert "finished: status ok" in (out / "log.txt").read_text()
    assert ArchConfig.load(out / "arch.json") == TINY


def test_divergence_is_recorded(tmp_path, corpus):
    out = tmp_path / "run"
    prepare_run_dir(out)
    outcome = Trainer(
        TINY, corpus, _cfg(lr=50.0, grad_clip=0.0, warmup_frac=0.0, log_every=1), out, log_to_console=False
    ).run()
    m = json.loads((out / "metrics.json").read_text())
    assert outcome.status == "diverged" and m["status"] == "diverged"
    assert "loss" in m["fail_reason"] and "step" in m["fail_reason"]
    assert "val_bpb" not in m and not (out / "model.safetensors").exists()


def test_lr_schedule_shape():
    assert lr_multiplier(0.0, 0.1, 0.1) == pytest.approx(0.01)
    assert lr_multiplier(0.05, 0.1, 0.1) == pytest.approx(0.5)
    assert lr_multiplier(0.1, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(0.55, 0.1, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(1.0, 0.1, 0.1) == pytest.approx(0.1)
    values = [lr_multiplier(p / 100, 0.1, 0.1) for p in range(10, 101)]
    # consecutive pairs: values[1:] is one shorter and ends the zip
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def _train_cmd(arch_path: Path, corpus_dir: Path, out: Path, budget: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nas",
        "train",
        "--arch",
        str(arch_path),
        "--corpus",
        str(corpus_dir),
        "--budget",
        budget,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--eval-bytes",
        "4000",
        "--checkpoint-every",
        "0.3",
        "--quiet",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_continues_and_matches_an_unbroken_run(tmp_path, small_corpus_dir):
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(TINY.to_json())
    budget = f"{300 * 8 * 64}tok"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    straight = tmp_path / "straight"
    subprocess.run(
        _train_cmd(arch_path, small_corpus_dir, straight, budget), check=True, env=env, cwd=REPO, capture_output=True
    )
    reference = json.loads((straight / "metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(arch_path, small_corpus_dir, out, budget),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        state = out / "ckpt" / "state.json"
        if state.is_file():
            try:
                step = json.loads(state.read_text())["step"]
            except (ValueError, OSError):
                step = 0
            if step >= 50:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; raise the budget"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()

    done = subprocess.run(
        _train_cmd(arch_path, small_corpus_dir, out, budget), env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from_step"] >= 50 and m["steps"] == reference["steps"] == 300
    assert "resumed from ckpt" in (out / "log.txt").read_text()
    # same data order, same optimizer state: the broken run ends where the unbroken one does
    assert m["val_bpb"] == pytest.approx(reference["val_bpb"], abs=1e-4)


def test_sigterm_saves_a_checkpoint_and_exits_130(tmp_path, small_corpus_dir):
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(TINY.to_json())
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(arch_path, small_corpus_dir, out, "10m"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.txt").is_file():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err
    state = json.loads((out / "ckpt" / "state.json").read_text())
    assert state["step"] > 0 and not (out / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------
# bad input through the CLI: one line, exit 2, nothing written

runner = CliRunner()


def _cli(args):
    return runner.invoke(app, args)


@pytest.fixture
def arch_file(tmp_path):
    p = tmp_path / "arch.json"
    p.write_text(TINY.to_json())
    return p


@pytest.mark.parametrize(
    "case, message",
    [
        ("bad_json", "arch.json"),
        ("bad_shape", "must be divisible by n_heads"),
        ("tokenizer", "unknown tokenizer"),
        ("empty_corpus", "is empty"),
        ("zero_budget", "budget must be positive"),
        ("bad_budget", "cannot read budget"),
        ("vocab_mismatch", "does not match the tokenizer"),
        ("unwritable", "not writable"),
        ("device", "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, arch_file, small_corpus_dir, case, message):
    out = tmp_path / "out"
    args = [
        "train",
        "--arch",
        str(arch_file),
        "--corpus",
        str(small_corpus_dir),
        "--budget",
        "2s",
        "--out",
        str(out),
        "--quiet",
    ]

    def replace(flag, value):
        args[args.index(flag) + 1] = value

    if case == "bad_json":
        arch_file.write_text("{ nope")
    elif case == "bad_shape":
        arch_file.write_text(json.dumps({"d_model": 100, "n_heads": 3}))
    elif case == "tokenizer":
        args += ["--tokenizer", "wordpiece"]
    elif case == "empty_corpus":
        (tmp_path / "empty").mkdir()
        replace("--corpus", str(tmp_path / "empty"))
    elif case == "zero_budget":
        replace("--budget", "0s")
    elif case == "bad_budget":
        replace("--budget", "soon")
    elif case == "vocab_mismatch":
        args += ["--tokenizer", "bpe:512"]
    elif case == "unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        out = blocker / "run"
        replace("--out", str(out))
    elif case == "device":
        if __import__("torch").cuda.is_available():
            pytest.skip("this machine has CUDA")
        args += ["--device", "cuda"]
    result = _cli(args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not out.exists() or not any(out.iterdir())


def test_finished_run_is_not_clobbered(tmp_path, arch_file, small_corpus_dir):
    out = tmp_path / "out"
    args = [
        "train",
        "--arch",
        str(arch_file),
        "--corpus",
        str(small_corpus_dir),
        "--budget",
        "20ktok",
        "--out",
        str(out),
        "--quiet",
        "--eval-bytes",
        "2000",
        "--batch-size",
        "4",
    ]
    first = _cli(args)
    assert first.exit_code == 0, first.output
    before = (out / "metrics.json").read_text()
    second = _cli(args)
    assert second.exit_code == 2 and "already holds a finished run" in second.output
    assert (out / "metrics.json").read_text() == before
    third = _cli(args + ["--overwrite", "--seed", "1"])
    assert third.exit_code == 0 and json.loads((out / "metrics.json").read_text())["seed"] == 1


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, arch_file, small_corpus_dir):
    out = tmp_path / "out"
    args = [
        "train",
        "--arch",
        str(arch_file),
        "--corpus",
        str(small_corpus_dir),
        "--budget",
        "20ktok",
        "--out",
        str(out),
        "--quiet",
    ]
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "state.json").write_text("{}")
    (out / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    result = _cli(args)
    assert result.exit_code == 2 and "corrupted" in result.output
    assert (out / "ckpt" / "model.safetensors").read_bytes() == b"garbage"  # the evidence is left alone


def test_arch_cli_sample_and_show(tmp_path):
    out = tmp_path / "a.json"
    r = _cli(["arch", "sample", "--space", "tiny", "--max-params", "60000", "--seed", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    arch = ArchConfig.load(out)
    assert json.loads(r.stdout) == arch.model_dump()
    shown = _cli(["arch", "show", str(out)])
    assert shown.exit_code == 0 and arch.short_hash() in shown.output
    impossible = _cli(["arch", "sample", "--max-params", "10"])
    assert impossible.exit_code == 2 and "no architecture in the search space fits" in impossible.output


def test_bpe_run_folder_carries_its_tokenizer(tmp_path, small_corpus_dir):
    from harness.tokenizer import BPETokenizer

    spec = CorpusSpec(source=str(small_corpus_dir))
    corpus = prepare_corpus(spec, "bpe:512")
    arch = TINY.model_copy(update={"vocab_size": 512})
    out = tmp_path / "run"
    prepare_run_dir(out)
    outcome = Trainer(arch, corpus, _cfg(budget_tokens=5 * 8 * 64), out, spec, "bpe:512", log_to_console=False).run()
    assert outcome.status == "ok" and outcome.metrics["tokenizer"] == "bpe512"
    tok = BPETokenizer.load(out / "tokenizer.json")
    assert tok.fingerprint() == corpus.tokenizer.fingerprint()
