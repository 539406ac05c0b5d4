"""Continuous batching: concurrent requests share decode steps instead of waiting for each other.

One engine serves one model. A background thread owns the model and its :class:`~serve.batched_step.SlotCache`;
requests arrive through a bounded queue (full: :class:`QueueFull`, which the API answers with 429 and
``Retry-After``). Every loop turn the thread admits waiting requests into free slots (prefilling each prompt), runs
one batched decode step for every active sequence, samples each row with that request's own settings and
generator (so a ``seed`` gives the same text whatever else is being served), and hands each new token to its
request. A request ends at ``max_tokens``, at the end-of-text token, at a stop string, or when its client goes away
(:meth:`Request.cancel`), and its slot is freed in the same turn. A sequence that fills the context slides its
window as :meth:`nas.model.CodeLM.generate` does (the last three quarters re-encoded), so served text is the model's
own ``generate`` text, token for token at temperature 0 and for the same seed when sampling.

The decode itself sits behind :class:`~serve.batched_step.SlotDecoder` (PyTorch over a slot cache, or the batched
ONNX graph of :mod:`serve.onnx_step`): admission, sampling, stop strings, cancelling and the sliding window are this
one code path whatever runs the model.

Tokens travel back as :class:`TokenEvent` objects, through each request's ``sink`` (by default a thread-safe queue
per request). The events of one loop turn (the tokens of a whole batched step) are held in an outbox and handed
over together at the end of the turn, so a sink that wakes an event loop (the HTTP side) can wake it once per step
rather than once per token; the row of each step's tokens is chosen in one batched call too (argmax and
log-softmax over the batch), and only sampled rows draw one by one, each with its own generator. Under 16
streaming clients the per-token wake-ups and per-row tensor calls were what held the GIL longest (py-spy).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.tokenizer import Tokenizer
from nas.model import CodeLM
from nas.model import _sample as sample_token  # the model's own sampler: serving samples as generate() does
from serve.batched_step import SlotDecoder, TorchSlotDecoder


class QueueFull(Exception):
    """The engine holds as many waiting requests as it may: the client should retry later."""


@dataclass(frozen=True)
class SamplingSettings:
    """What an OpenAI request asks of the sampler (validated by the API layer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # top alternatives to report per token (completions only)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token (``token`` is None on the final event, which carries ``finish_reason``)."""

    token: int | None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


@dataclass
class Request:
    """A prompt waiting for or being decoded. The engine thread hands each :class:`TokenEvent` to ``sink``: by default
    the request's own thread-safe ``events`` queue; an asyncio caller passes one that wakes its event loop."""

    prompt: list[int]
    settings: SamplingSettings
    sink: Callable[[TokenEvent], None] | None = None
    events: queue.Queue[TokenEvent] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)

    def send(self, event: TokenEvent) -> None:
        (self.sink or self.events.put)(event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Active:
    request: Request
    slot: int
    position: int  # where the next token goes in the slot
    last_token: int
    generated: list[int]
    generator: torch.Generator | None


@dataclass
class EngineStats:
    """Counters a benchmark or the console reads: steps run and the batch sizes they had."""

    steps: int = 0
    tokens: int = 0
    max_batch_seen: int = 0
    requests_done: int = 0


@dataclass(frozen=True)
class EngineOptions:
    """``max_batch`` sequences decode together and ``max_waiting`` requests may queue; ``batching=False`` serves one
    request at a time (the baseline the serving benchmark compares with)."""

    max_batch: int = 16
    max_waiting: int = 64
    batching: bool = True
    runtime: str = "auto"  # one of RUNTIME_CHOICES: what decodes (serve.registry resolves "auto" per model)


class Engine:
    """Serves one model from one thread; ``decoder`` (by default PyTorch over a slot cache) runs the steps.

    ``make_decoder(max_batch)`` builds it when given, so the caller picks the runtime and the engine the slot count.
    """

    def __init__(
        self,
        model: CodeLM,
        tokenizer: Tokenizer,
        options: EngineOptions = EngineOptions(),
        make_decoder: Callable[[int], SlotDecoder] | None = None,
    ):
        self.model, self.tokenizer, self.options = model.eval(), tokenizer, options
        self.max_batch = options.max_batch if options.batching else 1
        max_waiting = options.max_waiting
        self.context = model.arch.context_length
        self.decoder: SlotDecoder = (make_decoder or (lambda n: TorchSlotDecoder(model, n)))(self.max_batch)
        self.stats = EngineStats()
        self._waiting: queue.Queue[Request] = queue.Queue(maxsize=max_waiting)
        self._active: list[_Active] = []
        self._free = list(range(self.max_batch))
        self._outbox: list[tuple[Request, TokenEvent]] = []  # this turn's events, handed over by _deliver()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autonas-serve-engine", daemon=True)
        self._thread.start()

    def submit(
        self, prompt: list[int], settings: SamplingSettings, sink: Callable[[TokenEvent], None] | None = None
    ) -> Request:
        """Queue a request; :class:`QueueFull` when ``max_waiting`` requests already wait."""
        if not prompt or len(prompt) >= self.context:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this model's context is {self.context}")
        request = Request(prompt, settings, sink)
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None
        return request

    @property
    def runtime(self) -> str:
        """What decodes this model: ``torch_fp32``, ``onnx_fp32`` or ``onnx_int8``."""
        return self.decoder.runtime

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # the engine thread ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            self._admit()
            if not self._active:
                try:  # idle: block until a request arrives instead of spinning
                    self._admit_one(self._waiting.get(timeout=0.05))
                except queue.Empty:
                    continue
            self._deliver()  # first tokens now, not after the next step
            try:
                self._step()
            except Exception as err:  # a bug must not leave clients waiting forever
                for a in self._active:
                    self._send(a.request, TokenEvent(None, finish_reason="error", error=str(err)[:300]))
                    self._release(a.slot)
                self._active.clear()
            self._deliver()

    def _send(self, request: Request, event: TokenEvent) -> None:
        self._outbox.append((request, event))

    def _deliver(self) -> None:
        """Hand this turn's events to their requests, in the order they were made."""
        outbox, self._outbox = self._outbox, []
        for request, event in outbox:
            request.send(event)

    def _admit(self) -> None:
        while self._free:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                return
            self._admit_one(request)

    def _admit_one(self, request: Request) -> None:
        if request.cancelled.is_set():
            self._send(request, TokenEvent(None, finish_reason="cancelled"))
            return
        slot = self._free.pop()
        s = request.settings
        generator = None
        if s.seed is not None:
            generator = torch.Generator().manual_seed(s.seed)  # logits come back on the CPU
        try:
            logits = self.decoder.prefill(slot, request.prompt)
        except Exception as err:  # this request fails; the others go on
            self._release(slot)
            self._send(request, TokenEvent(None, finish_reason="error", error=str(err)[:300]))
            return
        active = _Active(request, slot, len(request.prompt), -1, [], generator)
        if not self._emit_rows([active], logits[None])[0]:
            self._active.append(active)

    def _step(self) -> None:
        live = [a for a in self._active if not self._finish_if_cancelled(a)]
        self._active = live
        if not live:
            return
        logits = self.decoder.step([a.slot for a in live], [a.last_token for a in live], [a.position for a in live])
        self.stats.steps += 1
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(live))
        for a in live:
            a.position += 1
        ended = self._emit_rows(live, logits)
        self._active = [a for a, end in zip(live, ended, strict=True) if not end]

    def _finish_if_cancelled(self, a: _Active) -> bool:
        if not a.request.cancelled.is_set():
            return False
        self._finish(a, "cancelled")
        return True

    def _emit_rows(self, rows: list[_Active], logits: torch.Tensor) -> list[bool]:
        """Choose the next token of each of ``rows`` from its row of ``logits [B, vocab]`` and send it; for each row,
        True when its request has ended.

        Greedy rows take the batch's argmax and every row's log-probability comes from one log-softmax over the
        batch: the same numbers as one row at a time (``generate``'s sampler takes the first maximum too), in a
        few tensor calls per step instead of a few per token. A sampled row draws alone, with its own generator."""
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        greedy = torch.argmax(logits, dim=-1).tolist()
        tokens = [_choose(a, g, logits[i]) for i, (a, g) in enumerate(zip(rows, greedy, strict=True))]
        chosen = logp[torch.arange(len(rows)), torch.tensor(tokens)].tolist()
        return [self._emit(a, t, lp, logp[i]) for i, (a, t, lp) in enumerate(zip(rows, tokens, chosen, strict=True))]

    def _emit(self, a: _Active, token: int, logprob: float, logp: torch.Tensor) -> bool:
        """Send ``token``, chosen for ``a`` (``logp``: its row of log-probabilities); True when the request ended."""
        s = a.request.settings
        if token == self.tokenizer.eos_id:
            self._finish(a, "stop")
            return True
        top = None
        if s.logprobs:
            values, ids = logp.topk(min(s.logprobs, logp.shape[-1]))
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
        a.generated.append(token)
        a.last_token = token
        self.stats.tokens += 1
        self._send(a.request, TokenEvent(token, logprob, top))
        if len(a.generated) >= s.max_tokens:
            self._finish(a, "length")
            return True
        if s.stop and _contains_stop(self.tokenizer.decode(a.generated), s.stop):
            self._finish(a, "stop")
            return True
        if a.position >= self.context:  # the slot is full: slide the window as generate() does, then go on
            keep = (a.request.prompt + a.generated)[-(3 * self.context // 4) :]
            logits = self.decoder.prefill(a.slot, keep)
            a.position = len(keep)
            return self._emit_rows([a], logits[None])[0]
        return False

    def _finish(self, a: _Active, reason: str) -> None:
        self._send(a.request, TokenEvent(None, finish_reason=reason))
        self._release(a.slot)
        self.stats.requests_done += 1

    def _release(self, slot: int) -> None:
        self.decoder.release(slot)
        self._free.append(slot)


def _choose(a: _Active, greedy: int, logits: torch.Tensor) -> int:
    """``a``'s next token: the row's argmax at temperature 0, else drawn exactly as ``generate()`` draws."""
    s = a.request.settings
    return greedy if s.temperature <= 0 else sample_token(logits, s.temperature, s.top_p, a.generator)


def _contains_stop(text: str, stop: tuple[str, ...]) -> bool:
    return any(s in text for s in stop)


def prompt_tokens(tokenizer: Tokenizer, text: str, context: int, keep: int | None = None) -> list[int]:
    """The ids a prompt is decoded from: the document separator first, as in training, then ``text``; with ``keep``,
    only the most recent ``min(keep, context - 1)`` of them (as the model's ``generate`` keeps the tail)."""
    ids = [tokenizer.eos_id, *tokenizer.encode(text)]
    return ids if keep is None else ids[-min(keep, context - 1) :]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def retry_after_s(waiting: int, max_batch: int, ms_per_step: float = 50.0, tokens_per_request: int = 128) -> int:
    """A rough ``Retry-After``: how long the queue ahead takes to drain, in whole seconds, at least 1."""
    return max(1, math.ceil(waiting / max(1, max_batch) * tokens_per_request * ms_per_step / 1000))
