"""A run folder as a HumanEval completion source, decoded in process by the server's own engine.

``autonas eval humaneval --model FOLDER --runtime auto|onnx|onnx-int8`` scores a folder with the runtime the server
would decode it with, so scoring the folder directly and scoring it through ``autonas serve`` give the same
samples. Everything that decides the text is the server's: the engine is started by
:func:`serve.registry.start_engine` (the runtime choice, the ONNX export, the fallback of ``auto``), the prompt's
tokens by :func:`serve.engine.prompt_tokens` with the whole context kept (as the served path asks with
``truncate_prompt_tokens``), and sample ``i`` is drawn with seed ``seed + i`` (as
:class:`distill.api_teacher.CompletionsModel` asks the server). No HTTP: the requests go straight to the engine.

The ONNX graphs are exported into a scratch folder this source owns and removes on :meth:`close`; a run folder is
never written.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.errors import UserError
from serve.engine import Engine, EngineOptions, SamplingSettings, TokenEvent, cut_at_stop, prompt_tokens
from serve.registry import start_engine

TOKEN_WAIT_S = 600.0  # no token for this long: the engine is stuck, say so rather than wait forever


class EngineFolderSource:
    """``complete()`` over an :class:`~serve.engine.Engine` on ``folder``; ``runtime`` is what decodes it."""

    def __init__(self, folder: Path, runtime: str, options: EngineOptions = EngineOptions()):
        folder = Path(folder)
        self._scratch = Path(tempfile.mkdtemp(prefix="autonas-eval-"))
        try:
            self.engine: Engine = start_engine(folder, replace(options, runtime=runtime), self._scratch, folder.name)
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise
        self.name = f"autonas:{folder.name}"
        self.runtime = self.engine.runtime  # torch_fp32, onnx_fp32 or onnx_int8: what really decodes

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        """``n`` completions of ``prompt``, each cut at its first stop string; up to a batch of them decode together."""
        engine = self.engine
        ids = prompt_tokens(engine.tokenizer, prompt, engine.context, keep=engine.context)
        out: list[str] = []
        while len(out) < n:
            batch = range(len(out), min(n, len(out) + engine.max_batch))
            requests = [
                engine.submit(
                    ids,
                    SamplingSettings(
                        max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=seed + i
                    ),
                )
                for i in batch
            ]
            out += [self._text(r.events, tuple(stop)) for r in requests]
        return out

    def _text(self, events: queue.Queue[TokenEvent], stop: tuple[str, ...]) -> str:
        """The request's text up to its end event, cut at the first of ``stop`` (the engine stops there too)."""
        tokens: list[int] = []
        while True:
            try:
                event = events.get(timeout=TOKEN_WAIT_S)
            except queue.Empty:
                raise UserError(f"{self.name}: no token in {TOKEN_WAIT_S:.0f} s; the decoding is stuck") from None
            if event.token is None:
                if event.finish_reason == "error":
                    raise UserError(f"{self.name}: decoding with {self.runtime} failed: {event.error}")
                return cut_at_stop(self.engine.tokenizer.decode(tokens), stop)[0]
            tokens.append(event.token)

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
