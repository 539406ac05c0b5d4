"""A real HTTP server on 127.0.0.1 that speaks the Anthropic Messages and OpenAI Chat Completions wire
formats and answers from a script, so the real SDKs are tested end to end (headers, retries, timeouts)
without patching them and without the internet."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str -> sent as is
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def anthropic_tool(
    name: str, args: Any, input_tokens: int = 1000, output_tokens: int = 200, model: str = "claude-sonnet-4-6"
) -> Reply:
    return Reply(
        body={
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "tool_use", "id": "toolu_test", "name": name, "input": args}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    )


def anthropic_text(text: str, model: str = "claude-sonnet-4-6") -> Reply:
    return Reply(
        body={
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 900, "output_tokens": 40},
        }
    )


def openai_tool(
    name: str, arguments: str | dict, prompt_tokens: int = 1000, completion_tokens: int = 200, model: str = "gpt-4.1"
) -> Reply:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "call_test", "type": "function", "function": {"name": name, "arguments": args}}
                        ],
                    },
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def openai_text(text: str, model: str = "gpt-4.1") -> Reply:
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
        }
    )


def error(status: int, kind: str = "api_error") -> Reply:
    # retry-after-ms keeps the SDKs' backoff short in tests; both SDKs honour it
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": kind, "message": f"scripted {status}"}},
        headers={"retry-after-ms": "20"},
    )


def anthropic_sse(message: dict[str, Any]) -> str:
    """A whole Messages reply as the server-sent events a streaming client (``stream: true``, as the Claude Code
    CLI always asks) reads: message_start, one start/delta/stop triple per content block, message_delta with
    the stop reason and output tokens, message_stop."""

    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    usage = message.get("usage", {})
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1},
    }
    out = [event("message_start", {"message": start})]
    for i, block in enumerate(message.get("content", [])):
        if block["type"] == "text":
            out.append(event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}))
            out.append(
                event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": block["text"]}})
            )
        elif block["type"] == "tool_use":
            out.append(event("content_block_start", {"index": i, "content_block": {**block, "input": {}}}))
            out.append(
                event(
                    "content_block_delta",
                    {"index": i, "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                )
            )
        out.append(event("content_block_stop", {"index": i}))
    out.append(
        event(
            "message_delta",
            {
                "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": None},
                "usage": {"output_tokens": usage.get("output_tokens", 0)},
            },
        )
    )
    out.append(event("message_stop", {}))
    return "".join(out)


class ScriptedLLMServer:
    """Answers each request with the next scripted :class:`Reply`, or ``responder(path, request)`` once the
    script is used up. Every request is recorded (path, headers, JSON body)."""

    def __init__(self, responder: Callable[[str, dict[str, Any]], Reply] | None = None):
        self.script: deque[Reply] = deque()
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = None
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body}
                    )
                    reply = server.script.popleft() if server.script else None
                if reply is None:
                    reply = server.responder(self.path, body) if server.responder else error(500)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                streaming = (
                    isinstance(body, dict)
                    and body.get("stream") is True
                    and reply.status == 200
                    and isinstance(reply.body, dict)
                    and reply.body.get("type") == "message"
                )
                if streaming:
                    data, content_type = anthropic_sse(reply.body), "text/event-stream"
                else:
                    data = reply.body if isinstance(reply.body, (str, bytes)) else json.dumps(reply.body)
                    content_type = "application/json"
                data = data.encode() if isinstance(data, str) else data
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
