"""Shared fixtures: an isolated token cache and a small real corpus made from standard-library files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.data import stdlib_dir
from harness.tokenizer import BPETokenizer, train_bpe

SMALL_CORPUS_FILES = [
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py",
    "textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "heapq.py", "bisect.py",
    "colorsys.py", "keyword.py", "numbers.py", "queue.py", "sched.py", "stat.py", "this.py", "token.py",
    "csv.py", "difflib.py", "getopt.py", "gettext.py", "graphlib.py",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session tokenizes into its own cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTONAS_CACHE", str(tmp_path_factory.mktemp("autonas-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_process() -> None:
    """Tests run torch on one thread, in this process and in every worker it starts (``OMP_NUM_THREADS`` is on the
    workers' allow-list). The test models are tiny: a second thread adds a synchronisation per operator and buys
    nothing, and on a shared 2-core machine two threads per process made the fixtures 7-20x slower. The product's
    own defaults are not changed; tests that choose a thread count still set it themselves."""
    import torch  # deliberate: the fixtures that need torch import it anyway; collection stays light without it

    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~25 real Python files (about 300 KB) copied from the standard library."""
    root = tmp_path_factory.mktemp("corpus")
    src = stdlib_dir()
    for rel in SMALL_CORPUS_FILES:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, target)
    return root


@pytest.fixture(scope="session")
def small_corpus_bpe(small_corpus_dir: Path) -> BPETokenizer:
    """A 600-token BPE trained on the small corpus, once per session (tests only read it)."""
    return train_bpe([p.read_text() for p in sorted(small_corpus_dir.rglob("*.py"))], 600)


@pytest.fixture(autouse=True)
def _no_llm_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real LLM: keys and base URLs from the developer's shell are removed."""
    for name in (
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


TINY_ARCH = {
    "n_layers": 1,
    "d_model": 32,
    "n_heads": 2,
    "n_kv_heads": 2,
    "d_ff": 64,
    "context_length": 64,
    "vocab_size": 256,
}


@pytest.fixture(scope="session")
def tiny_run(small_corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished training run folder (arch.json, model.safetensors, metrics.json) of a tiny byte model."""
    from harness.data import CorpusSpec, prepare_corpus
    from nas.space import ArchConfig
    from nas.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("tiny-run")
    spec = CorpusSpec(source=str(small_corpus_dir))
    cfg = TrainConfig(budget_tokens=20_000, batch_size=8, eval_bytes=8192, measure_latency=False, device="cpu")
    outcome = Trainer(ArchConfig(**TINY_ARCH), prepare_corpus(spec, "byte"), cfg, out, spec, log_to_console=False).run()
    assert outcome.status == "ok"
    return out
