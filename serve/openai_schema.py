"""The OpenAI wire format the server speaks: request bodies (validated) and response / chunk / error bodies.

Only the fields this server honours are declared; other fields an SDK sends (``user``, ``frequency_penalty`` ...)
are accepted and ignored, as OpenAI-compatible servers commonly do, except ``n`` > 1 and ``best_of``, which would
change the answer's shape and are refused. A chat conversation becomes a plain-text prompt (:func:`chat_prompt`):
these are code-completion models without a chat template.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_PROMPT_CHARS = 200_000
MAX_LOGPROBS = 5
MAX_NEW_TOKENS = 4096  # per request; past the context the window slides, so the context is not the cap
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


def _stop_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"stop: at most {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} characters")
    return tuple(stops)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # OpenAI's: one more chunk before [DONE], with no choices and the usage


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    truncate_prompt_tokens: int | None = Field(None, ge=1)  # vLLM's extension: keep the prompt's last tokens
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        _stop_tuple(value)
        return value

    def stops(self) -> tuple[str, ...]:
        return _stop_tuple(self.stop)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] = Field(max_length=MAX_PROMPT_CHARS)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int = Field(1, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request (a list of exactly one string)")
        if isinstance(value, list) and len(value[0]) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The conversation as the text the model continues: each message's content in order, one per line."""
    return "\n".join(m.content for m in messages)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which the SDKs turn into their typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
