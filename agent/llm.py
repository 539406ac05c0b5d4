"""LLM providers for the planner and the judge: ``anthropic`` (Messages API, a forced tool call for structured
output), ``openai`` (Chat Completions with a forced function call; ``base_url`` reaches any OpenAI-compatible
server: vLLM, llama.cpp, Ollama) and ``offline`` (no LLM: the deterministic planner and the metric judge).

Every call goes through :class:`CostLedger`, an append-only JSON-lines file in the run folder, so the spend
is known even after a SIGKILL and ``--max-cost`` holds across resumes. The SDKs do the retrying (429, 5xx,
timeouts, with their backoff and the server's retry-after); what still fails after that is an
:class:`LLMError`, which the agent turns into an offline step, never a crash.
"""

from __future__ import annotations

import json
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import UserError

ProviderName = Literal["auto", "offline", "anthropic", "openai"]
PROVIDERS: tuple[str, ...] = ("auto", "offline", "anthropic", "openai")
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4.1"}
DEFAULT_URL = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
URL_ENV = {
    "anthropic": "ANTHROPIC_BASE_URL",
    "openai": "OPENAI_BASE_URL",
}  # the SDKs' own fallback when no base_url is given

# Published list prices in USD per million tokens (input, output), matched by model-name prefix, longest
# first. Prices move: --price-in/--price-out override them, and an unknown model has no price.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
}


class LLMSpec(BaseModel):
    """Which LLM plays a role (planner or judge); saved in run.json (never the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: ProviderName = "auto"
    model: str | None = None
    base_url: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    price_in: float | None = Field(None, ge=0, description="USD per million input tokens")
    price_out: float | None = Field(None, ge=0, description="USD per million output tokens")
    max_output_tokens: int = Field(2048, ge=64)

    def price(self, model: str) -> tuple[float, float] | None:
        if self.price_in is not None and self.price_out is not None:
            return self.price_in, self.price_out
        for prefix in sorted(PRICES_PER_MTOK, key=len, reverse=True):
            if model.startswith(prefix):
                return PRICES_PER_MTOK[prefix]
        return None


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ToolReply:
    """What came back: the tool's arguments when the model called it (else None) and any text."""

    data: dict[str, Any] | None
    text: str
    usage: Usage
    model: str


class LLMError(RuntimeError):
    """The provider could not answer (after the SDK's own retries): network, HTTP error, timeout."""


class LLMClient(ABC):
    provider: str

    def __init__(self, spec: LLMSpec, api_key: str | None):
        self.spec = spec
        self.model = spec.model or DEFAULT_MODEL[self.provider]
        self.api_key = api_key

    _sdk: Any  # the provider's SDK module: its exception classes share names across anthropic and openai

    def call_tool(self, system: str, user: str, tool_name: str, description: str, schema: dict[str, Any]) -> ToolReply:
        """One request that asks the model to answer by calling ``tool_name`` with arguments in ``schema``.
        Transport failures (after the SDK's retries) raise LLMError; a malformed answer comes back with data None."""
        sdk, name = self._sdk, self.provider
        try:
            resp = self._request(system, user, tool_name, description, schema)
        except sdk.APIStatusError as err:
            raise LLMError(f"{name} answered HTTP {err.status_code}: {_short(err.message)}") from None
        except sdk.APITimeoutError:
            raise LLMError(f"{name} did not answer within {self.spec.timeout_s:g}s") from None
        except sdk.APIConnectionError as err:
            raise LLMError(f"cannot reach {name}: {_short(str(err))}") from None
        except (sdk.APIError, ValueError) as err:  # e.g. a 200 whose body is not JSON
            raise LLMError(f"{name} sent an unreadable response: {_short(str(err))}") from None
        try:
            return self._read(resp, tool_name)
        except Exception as err:  # noqa: BLE001 - a malformed reply is the model's fault, never a crash of the run
            return ToolReply(
                data=None, text=f"(unreadable reply: {_short(repr(err))})", usage=Usage(), model=self.model
            )

    @abstractmethod
    def _request(self, system: str, user: str, tool_name: str, description: str, schema: dict[str, Any]) -> Any:
        """The SDK call forcing a call of ``tool_name``."""

    @abstractmethod
    def _read(self, resp: Any, tool_name: str) -> ToolReply:
        """The tool's arguments, any text and the token usage from the SDK's response object."""

    def describe(self) -> str:
        where = f" at {self.spec.base_url}" if self.spec.base_url else ""
        return f"{self.provider} ({self.model}{where})"


class AnthropicClient(LLMClient):
    provider = "anthropic"

    def __init__(self, spec: LLMSpec, api_key: str | None):
        super().__init__(spec, api_key)
        import anthropic  # only when this provider is chosen: the offline agent runs without either SDK

        self._sdk = anthropic
        # a local server given by base_url may need no key, but the SDK refuses to send a request without one
        key = api_key or ("no-key" if spec.base_url else None)
        kwargs: dict[str, Any] = {"api_key": key, "timeout": spec.timeout_s, "max_retries": spec.max_retries}
        if spec.base_url:
            kwargs["base_url"] = spec.base_url
        self._client = anthropic.Anthropic(**kwargs)

    def _request(self, system: str, user: str, tool_name: str, description: str, schema: dict[str, Any]) -> Any:
        return self._client.messages.create(
            model=self.model,
            max_tokens=self.spec.max_output_tokens,
            system=system,
            messages=[{"role": "user", "content": user}],
            tools=[{"name": tool_name, "description": description, "input_schema": schema}],
            tool_choice={"type": "tool", "name": tool_name},
        )

    def _read(self, resp: Any, tool_name: str) -> ToolReply:
        usage = Usage(
            input_tokens=_int(getattr(getattr(resp, "usage", None), "input_tokens", 0)),
            output_tokens=_int(getattr(getattr(resp, "usage", None), "output_tokens", 0)),
        )
        data, texts = None, []
        for block in getattr(resp, "content", None) or []:
            kind = getattr(block, "type", None)
            if kind == "tool_use" and getattr(block, "name", tool_name) == tool_name and data is None:
                raw = getattr(block, "input", None)
                data = raw if isinstance(raw, dict) else None
                if data is None:
                    texts.append(json.dumps(raw) if not isinstance(raw, str) else raw)
            elif kind == "text":
                texts.append(str(getattr(block, "text", "")))
        return ToolReply(
            data=data, text="\n".join(texts), usage=usage, model=str(getattr(resp, "model", None) or self.model)
        )


class OpenAIClient(LLMClient):
    provider = "openai"

    def __init__(self, spec: LLMSpec, api_key: str | None):
        super().__init__(spec, api_key)
        import openai  # only when this provider is chosen

        self._sdk = openai
        kwargs: dict[str, Any] = {
            "api_key": api_key or "no-key",
            "timeout": spec.timeout_s,
            "max_retries": spec.max_retries,
        }
        if spec.base_url:
            kwargs["base_url"] = spec.base_url
        self._client = openai.OpenAI(**kwargs)

    def _request(self, system: str, user: str, tool_name: str, description: str, schema: dict[str, Any]) -> Any:
        return self._client.chat.completions.create(
            model=self.model,
            max_tokens=self.spec.max_output_tokens,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            tools=[
                {"type": "function", "function": {"name": tool_name, "description": description, "parameters": schema}}
            ],
            tool_choice={"type": "function", "function": {"name": tool_name}},
        )

    def _read(self, resp: Any, tool_name: str) -> ToolReply:
        u = getattr(resp, "usage", None)
        usage = Usage(
            input_tokens=_int(getattr(u, "prompt_tokens", 0)), output_tokens=_int(getattr(u, "completion_tokens", 0))
        )
        data, text = None, ""
        choices = getattr(resp, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        calls = getattr(message, "tool_calls", None) or []
        if calls:
            text = str(getattr(getattr(calls[0], "function", None), "arguments", "") or "")
            try:
                parsed = json.loads(text)
                data = parsed if isinstance(parsed, dict) else None
            except json.JSONDecodeError:
                data = None
        elif message is not None:
            text = str(getattr(message, "content", "") or "")  # servers without tool support answer in text
        return ToolReply(data=data, text=text, usage=usage, model=str(getattr(resp, "model", None) or self.model))


_CLIENTS: dict[str, type[LLMClient]] = {"anthropic": AnthropicClient, "openai": OpenAIClient}


def resolve_provider(spec: LLMSpec, env: dict[str, str] | None = None) -> str:
    """``auto`` becomes the first provider whose key is set, else ``offline``."""
    env = dict(os.environ) if env is None else env
    if spec.provider not in PROVIDERS:
        raise UserError(f"unknown LLM provider {spec.provider!r}: use one of {', '.join(PROVIDERS)}")
    if spec.provider != "auto":
        return spec.provider
    for name in ("anthropic", "openai"):
        if env.get(KEY_ENV[name]):
            return name
    return "offline"


def judge_spec(planner: LLMSpec, judge: LLMSpec, env: dict[str, str] | None = None) -> LLMSpec:
    """The judge's LLM: the planner's when the judge was not set; a judge on the planner's provider without a
    URL of its own talks to the planner's server."""
    if judge == LLMSpec():
        return planner
    if judge.base_url is None and resolve_provider(judge, env) == resolve_provider(planner, env):
        return judge.model_copy(update={"base_url": planner.base_url})
    return judge


def make_client(
    spec: LLMSpec, role: str, env: dict[str, str] | None = None, check_reachable: bool = True
) -> LLMClient | None:
    """The client for one role, or None for offline. User errors: a named provider without its key (a local
    server given by ``base_url`` may need none), an unreachable server."""
    env = dict(os.environ) if env is None else env
    name = resolve_provider(spec, env)
    if name == "offline":
        return None
    key = env.get(KEY_ENV[name]) or None
    if key is None and not spec.base_url:
        raise UserError(
            f"the {role} uses {name} but {KEY_ENV[name]} is not set (set it, give --base-url for a local server, "
            f"or use --{role} offline)"
        )
    client = _CLIENTS[name](spec, key)
    if check_reachable:
        # the address the SDK will really use: --base-url, else its environment variable, else the public API
        check_server(spec.base_url or env.get(URL_ENV[name]) or DEFAULT_URL[name], role)
    return client


def check_server(url: str, role: str, timeout_s: float = 5.0) -> None:
    """Fail at start, in one line, when nothing listens at the LLM server's address."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"the {role}'s base URL {url!r} is not an http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise UserError(f"cannot reach the {role}'s LLM server at {url}: {err.strerror or err}") from None


class CallRecord(BaseModel):
    role: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    seconds: float
    ok: bool
    note: str = ""
    at: float = Field(default_factory=time.time)


class CostLedger:
    """Every LLM call of a run, one JSON line each in ``RUN/llm_calls.jsonl``; the spend survives kills."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[CallRecord] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(CallRecord.model_validate_json(line))
                except ValueError:
                    continue  # a line torn by a kill mid-write

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        with open(self.path, "a") as fh:
            fh.write(record.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def total_usd(self) -> float:
        return sum(r.cost_usd or 0.0 for r in self.records)

    @property
    def tokens(self) -> tuple[int, int]:
        return sum(r.input_tokens for r in self.records), sum(r.output_tokens for r in self.records)

    def call(
        self,
        client: LLMClient,
        role: str,
        system: str,
        user: str,
        tool_name: str,
        description: str,
        schema: dict[str, Any],
    ) -> ToolReply:
        """Make the call and record it, failed or not (a failed call is billed nothing we can see)."""
        t0 = time.monotonic()
        try:
            reply = client.call_tool(system, user, tool_name, description, schema)
        except LLMError as err:
            self.add(
                CallRecord(
                    role=role,
                    provider=client.provider,
                    model=client.model,
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=0.0,
                    seconds=time.monotonic() - t0,
                    ok=False,
                    note=str(err),
                )
            )
            raise
        price = client.spec.price(reply.model) or client.spec.price(client.model)
        cost = (
            None
            if price is None
            else (reply.usage.input_tokens * price[0] + reply.usage.output_tokens * price[1]) / 1e6
        )
        self.add(
            CallRecord(
                role=role,
                provider=client.provider,
                model=reply.model,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                cost_usd=cost,
                seconds=time.monotonic() - t0,
                ok=reply.data is not None,
                note="" if reply.data is not None else "no tool call in the reply",
            )
        )
        return reply


def _int(x: Any) -> int:
    try:
        return int(x or 0)
    except (TypeError, ValueError):
        return 0


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."
