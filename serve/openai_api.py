"""``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``: the OpenAI-compatible model API.

Each request is tokenised (the document separator first, as in training), handed to the model's
:class:`~serve.engine.Engine`, and answered either whole or as server-sent events in OpenAI's chunk format ending
with ``data: [DONE]``. Tokens come back from the engine thread into an asyncio queue per request, so a waiting
request costs no thread: a :class:`LoopBridge` gathers what the engine hands over and wakes the event loop once for
all of it (one ``call_soon_threadsafe`` per engine step, not one per token), and a stream sends the tokens that
arrived together as one server-sent event (one decode, one JSON encoding, one socket write). A client that
disconnects mid-stream cancels its request, which frees its decode slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from harness.errors import UserError
from serve.engine import Engine, QueueFull, SamplingSettings, TokenEvent, prompt_tokens, retry_after_s
from serve.engine import Request as EngineRequest
from serve.openai_schema import (
    DEFAULT_COMPLETION_TOKENS,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    chat_prompt,
    error_body,
    new_id,
    now,
    usage,
)
from serve.registry import ModelRegistry, UnknownModel
from serve.text_stream import TextStream


class APIError(Exception):
    """An error answered with OpenAI's error body and the given HTTP status."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.kind, self.code), self.status, headers=self.headers)


class LoopBridge:
    """Events from engine threads to asyncio queues on one event loop, with one wake-up per batch of events.

    ``sink(queue)`` is what the engine calls with each event (on its own thread). The first event of a batch
    schedules :meth:`_flush` on the loop; events that follow before the flush runs (the rest of an engine step)
    join that batch, so 16 streams cost one self-pipe write and one loop turn per step instead of 16. Each queue
    gets its events in the order they were sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[TokenEvent], TokenEvent]] = []

    def sink(self, events: asyncio.Queue[TokenEvent]) -> Callable[[TokenEvent], None]:
        def send(event: TokenEvent) -> None:  # called on an engine thread
            with self._lock:
                self._pending.append((events, event))
                first = len(self._pending) == 1
            if first:
                try:
                    self.loop.call_soon_threadsafe(self._flush)
                except RuntimeError:  # the loop has closed: the server is stopping, nobody is waiting
                    pass

        return send

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for events, event in pending:
            events.put_nowait(event)


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBridge] = weakref.WeakKeyDictionary()


def _bridge() -> LoopBridge:
    """The running loop's bridge (a server runs one loop; tests may run several, one after another)."""
    loop = asyncio.get_running_loop()
    bridge = _bridges.get(loop)
    if bridge is None:
        bridge = _bridges[loop] = LoopBridge(loop)
    return bridge


@dataclass
class _Job:
    """One admitted request: the engine's request, its asyncio event queue, and what it streams."""

    model_id: str
    engine: Engine
    prompt_ids: list[int]
    settings: SamplingSettings
    events: asyncio.Queue[TokenEvent]
    text: TextStream
    request: EngineRequest
    tokens: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None


def _engine(registry: ModelRegistry, model_id: str) -> Engine:
    try:
        return registry.engine(model_id)
    except UnknownModel as err:
        raise APIError(404, str(err), "invalid_request_error", "model_not_found") from None
    except UserError as err:
        raise APIError(400, f"the model {model_id!r} cannot be served: {err}", "invalid_request_error") from None


def _start(
    registry: ModelRegistry, body: SamplingRequest, prompt: str, max_tokens: int | None, logprobs: int | None
) -> _Job:
    """Tokenise, check the context, and queue the request on its model's engine (429 when the queue is full).

    A prompt that does not fit the context is refused (``context_length_exceeded``) unless the request names
    ``truncate_prompt_tokens`` (as vLLM's server does): then its most recent tokens are kept, at most the context
    less one. Generation itself may run past the context: the window slides as the model's ``generate`` does."""
    engine = _engine(registry, body.model)
    tok = engine.tokenizer
    ids = prompt_tokens(tok, prompt, engine.context, body.truncate_prompt_tokens)
    if len(ids) >= engine.context:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens; this model's context is {engine.context} tokens "
            "(truncate_prompt_tokens keeps the most recent ones)",
            "invalid_request_error",
            "context_length_exceeded",
        )
    settings = SamplingSettings(
        max_tokens=max_tokens if max_tokens is not None else engine.context - len(ids),  # chat: the room left
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops(),
        seed=body.seed,
        logprobs=logprobs,
    )
    events: asyncio.Queue[TokenEvent] = asyncio.Queue()
    try:
        request = engine.submit(ids, settings, sink=_bridge().sink(events))
    except QueueFull as err:
        wait = retry_after_s(engine.waiting, engine.max_batch)
        raise APIError(
            429, f"the server is busy: {err}", "rate_limit_error", headers={"Retry-After": str(wait)}
        ) from None
    return _Job(body.model, engine, ids, settings, events, TextStream(tok.decode, settings.stop), request)


async def _deltas(job: _Job) -> AsyncIterator[str]:
    """New text as it becomes certain, one piece for all the tokens that arrived together; sets
    ``job.finish_reason`` at the end."""
    try:
        while True:
            batch = [await job.events.get()]
            while not job.events.empty():
                batch.append(job.events.get_nowait())
            tokens = [event for event in batch if event.token is not None]
            end = next((event for event in batch if event.token is None), None)  # nothing follows it
            if tokens:
                job.tokens.extend(tokens)
                piece = job.text.push_many([cast(int, event.token) for event in tokens])
                if piece:
                    yield piece
                if job.text.stopped:  # the text reached a stop string: the rest is not shown
                    job.finish_reason = "stop"
                    return
            if end is not None:
                if end.finish_reason == "error":
                    raise APIError(500, f"decoding failed: {end.error}", "server_error")
                tail = job.text.finish()
                job.finish_reason = "stop" if job.text.stopped else end.finish_reason
                if tail:
                    yield tail
                return
    finally:
        if job.finish_reason != "length":  # ended early (stop string, client gone): free the slot now
            job.request.cancel()


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _logprobs(job: _Job, start_offset: int) -> dict[str, Any]:
    """Completions' legacy logprobs object: each token's text, its log-probability and the top alternatives."""
    decode = job.engine.tokenizer.decode
    tokens = [decode([ev.token]) for ev in job.tokens if ev.token is not None]
    offsets, at = [], start_offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [ev.logprob for ev in job.tokens],
        "top_logprobs": [{decode([i]): lp for i, lp in (ev.top_logprobs or {}).items()} for ev in job.tokens],
        "text_offset": offsets,
    }


def _stream(job: _Job, chunk: Any, first_text: str = "", include_usage: bool = False) -> StreamingResponse:
    """Server-sent events: ``chunk(text, finish_reason)`` builds each event's body; ``first_text`` (an echoed prompt)
    goes out before the first token. A chunk may carry several tokens' text (those that arrived together), so a
    client that counts tokens asks for ``stream_options.include_usage``: a last chunk with no choices and the usage.
    """

    async def events() -> AsyncIterator[str]:
        if first_text:
            yield _sse(chunk(first_text, None))
        try:
            async for piece in _deltas(job):
                yield _sse(chunk(piece, None))
            yield _sse(chunk("", job.finish_reason))
            if include_usage:
                yield _sse({**chunk("", None), "choices": [], "usage": usage(len(job.prompt_ids), len(job.tokens))})
        except APIError as err:
            yield _sse(error_body(err.message, err.kind, err.code))
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _wants_usage(body: SamplingRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _collect(job: _Job) -> str:
    return "".join([piece async for piece in _deltas(job)])


def build_router(registry: ModelRegistry) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    def list_models() -> dict[str, Any]:
        data = [
            {
                "id": e.id,
                "object": "model",
                "created": e.created,
                "owned_by": "autonas",
                "runtime": registry.runtime_of(e.id),
            }
            for e in registry.entries()
        ]
        return {"object": "list", "data": data}

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        job = _start(registry, body, body.text(), body.max_tokens or DEFAULT_COMPLETION_TOKENS, body.logprobs)
        cid, created = new_id("cmpl"), now()
        prefix = body.text() if body.echo else ""

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if body.stream:
            return _stream(job, chunk, prefix, _wants_usage(body))
        text = await _collect(job)
        out = chunk(prefix + text, job.finish_reason)
        if body.logprobs is not None:
            out["choices"][0]["logprobs"] = _logprobs(job, len(prefix))
        out["usage"] = usage(len(job.prompt_ids), len(job.tokens))
        return out

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Any:
        job = _start(registry, body, chat_prompt(body.messages), body.max_completion_tokens or body.max_tokens, None)
        cid, created = new_id("chatcmpl"), now()
        sent_role = False

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            nonlocal sent_role
            delta: dict[str, Any] = {"content": text} if text or finish is None else {}
            if not sent_role:  # OpenAI's first chunk names the role
                delta["role"], sent_role = "assistant", True
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if body.stream:
            return _stream(job, chunk, include_usage=_wants_usage(body))
        text = await _collect(job)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": job.finish_reason,
                }
            ],
            "usage": usage(len(job.prompt_ids), len(job.tokens)),
        }

    return router
