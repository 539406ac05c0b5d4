"""Which experiments run confined, with what, and the trusted half of an evaluation.

Once a run's workspace carries code (a code editor is configured), every worker imports that code, which an
LLM may have written: such workers run under :mod:`sandbox.confine`. They may write only their own run
folder; they read the workspace (their code, configs and the other experiments' models), the corpus, the
token cache and the Hugging Face cache. The token cache is filled here, by the installed code, before a
confined worker starts, so the worker never needs to write it (and cannot poison it for later experiments).

An evaluation is split the same way: the confined worker only generates completions with the model's own
code (``--generate-only``); scoring them, which executes generated programs and writes the numbers, runs
the installed harness with ``python -I`` (no workspace on its import path, not even the working folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from agent.settings import RunSettings
from sandbox.confine import Confinement
from sandbox.environment import WORKER, child_env
from sandbox.workspace import Workspace


def hf_cache() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def experiment_confinement(ws: Workspace, settings: RunSettings, out: Path) -> Confinement | None:
    """None when the workspace carries no code (the installed code runs, as written by us)."""
    if not ws.has_code():
        return None
    from nas.data import cache_root

    readable = [ws.root.resolve(), cache_root(), hf_cache()]
    corpus = Path(settings.corpus).expanduser()
    if corpus.exists():
        readable.append(corpus.resolve())
    return Confinement(writable=((ws.root / out).resolve(),), readable=tuple(p for p in readable if p.exists()))


def prepare_shared_cache(settings: RunSettings) -> None:
    """Tokenize the run's corpus into the shared cache with the installed code (a no-op once it is there)."""
    from nas.data import CorpusSpec, prepare_corpus

    prepare_corpus(CorpusSpec(source=settings.corpus), settings.tokenizer)


def trusted_scoring(plan: dict[str, Any], out: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that score an evaluation's samples with the installed harness."""
    cmd = [sys.executable, "-I", "-m", "distill", "eval", "humaneval", "--samples", str(out / "samples.jsonl"),
           "--out", str(out), "-k", "1"]
    if plan["config"].get("limit"):
        cmd += ["--limit", str(plan["config"]["limit"])]
    return cmd, child_env(WORKER)
