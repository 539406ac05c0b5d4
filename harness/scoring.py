"""Bits per byte scored by the harness while the model's own code runs in another process.

A model trained from edited code can only be run by that code, and code running in a process can change anything
in it (the loss, the data, the number it prints). So the recorded score is made here instead: this process (the
installed harness, no model code imported) cuts the split into the standard evaluation windows
(:func:`harness.metrics.evaluate_bpb`, unchanged) and sends only the input tokens of each window to a child that runs
the model (``python -m nas.logits_server RUN``, confined by the caller when its code is edited). The child sends
back raw logits; this process normalises them, checks them (shape, finite), and computes the loss against targets
the child never sees.

What the child could still do is look ahead: a window's input holds the tokens its positions must predict (an editor
that drops the causal mask does exactly this, and its score looks wonderful). That is caught by a causality probe: for
the first batch and a sample of the others, one window is also sent cut at a random position ``c``, and the logits at
``c - 1`` must match between the two. A forward pass that reads later tokens fails it. What it does not catch is a
model that remembers earlier requests to answer a probe consistently with a cheat; only a token-by-token protocol
would, at many times the cost. The child runs confined and sees nothing but the windows it is sent.

Wire format (little-endian): request ``u32 rows, u32 width`` then ``rows*width`` int64 tokens; ``rows == 0`` ends.
Reply ``u32 vocab`` then ``rows*width*vocab`` float32 logits.
"""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.metrics import evaluate_bpb

PROBE_FRACTION = 0.25  # share of batches (after the first, always probed) whose windows get a causality probe
PROBE_ATOL = 1e-3  # logits of the same prefix differ only by float rounding across sequence lengths
MAX_REPLY_BYTES = 2**31


class ScoringRefused(Exception):
    """The model's process broke the protocol or its logits break causality: no number is recorded."""


@dataclass(frozen=True)
class ScoredBpb:
    bpb: float
    tokens: int
    bytes: int
    probes: int  # windows checked for causality


@dataclass(frozen=True)
class _RemoteArch:
    """The figures of the child's arch.json that evaluate_bpb reads."""

    context_length: int
    vocab_size: int


class _RemoteModel:
    """A :class:`harness.metrics.LanguageModel`; every forward pass is the child's, checked here."""

    def __init__(self, proc: subprocess.Popen, context_length: int, vocab_size: int, seed: int):
        self.proc, self.vocab = proc, vocab_size
        self.arch = _RemoteArch(context_length=context_length, vocab_size=vocab_size)
        self.training = False
        self.rng = random.Random(seed)
        self.probes = self.calls = 0

    def eval(self) -> _RemoteModel:
        return self

    def train(self, mode: bool = True) -> _RemoteModel:
        return self

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """None here: the weights live in the child (evaluate_bpb is always given the device)."""
        return iter(())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, width = x.shape
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(struct.pack("<II", rows, width) + x.to(torch.int64).numpy().tobytes())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ScoringRefused("the model's process ended before scoring finished") from None
        head = self.proc.stdout.read(4)
        if len(head) != 4:
            raise ScoringRefused("the model's process ended before scoring finished")
        (vocab,) = struct.unpack("<I", head)
        if vocab != self.vocab:
            raise ScoringRefused(
                f"the model answered with {vocab} logits per position, its arch.json says {self.vocab}"
            )
        size = rows * width * vocab * 4
        if size > MAX_REPLY_BYTES:
            raise ScoringRefused("the reply would be too large")
        body = self.proc.stdout.read(size)
        if len(body) != size:
            raise ScoringRefused("the model's process sent a short reply")
        logits = torch.from_numpy(np.frombuffer(body, dtype="<f4").copy()).view(rows, width, vocab)
        if not torch.isfinite(logits).all():
            raise ScoringRefused("the model's logits are not finite")
        return logits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._forward(x)
        first, self.calls = self.calls == 0, self.calls + 1
        if first or self.rng.random() < PROBE_FRACTION:
            row, cut = self.rng.randrange(x.shape[0]), self.rng.randint(1, x.shape[1])
            prefix = self._forward(x[row : row + 1, :cut])
            gap = float((prefix[0, cut - 1] - logits[row, cut - 1]).abs().max())
            self.probes += 1
            if gap > PROBE_ATOL:
                raise ScoringRefused(
                    f"the model's prediction at position {cut - 1} changes by {gap:.3g} when later tokens are "
                    "removed: it reads the tokens it must predict"
                )
        return logits


Spawn = Callable[[list[str]], subprocess.Popen]


def score_run(
    run_dir: Path,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    max_bytes: int | None,
    spawn: Spawn,
    python: str,
    timeout_s: float = 1800.0,
    seed: int = 0,
) -> ScoredBpb:
    """Bits per byte of the model in ``run_dir`` on ``tokens``, its forward passes made by a child started with
    ``spawn(cmd)`` (stdin and stdout pipes; the caller confines it). Raises :class:`ScoringRefused` on a broken
    protocol, non-finite logits or a failed causality probe, and UserError for a folder that is not a model."""
    try:
        arch = json.loads((Path(run_dir) / "arch.json").read_text())
        context, vocab = int(arch["context_length"]), int(arch["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir} has no readable arch.json") from None
    if context < 2 or not 2 <= vocab <= 2**20:
        raise UserError(f"{run_dir}/arch.json: context_length {context}, vocab_size {vocab} out of range")
    proc = spawn(["-m", "nas.logits_server", str(Path(run_dir).absolute())])
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    killer = threading.Timer(timeout_s, expire)
    killer.start()
    try:
        remote = _RemoteModel(proc, context, vocab, seed)
        result = evaluate_bpb(remote, tokens, token_bytes, max_bytes, batch_size=16, device="cpu")
        assert proc.stdin is not None
        proc.stdin.write(struct.pack("<II", 0, 0))
        proc.stdin.close()
        proc.wait(timeout=30)
    except ScoringRefused:
        proc.kill()
        if expired.is_set():
            raise ScoringRefused(f"scoring did not finish within {timeout_s:.0f} s") from None
        raise
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not math.isfinite(result.bpb):
        raise ScoringRefused("the score is not finite")
    return ScoredBpb(bpb=result.bpb, tokens=result.tokens, bytes=result.bytes, probes=remote.probes)
