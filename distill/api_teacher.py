"""An API model as a teacher: it writes completions for code prompts into a JSONL data set.

``openai:<model>`` goes through the ``openai`` SDK's Chat Completions (any OpenAI-compatible server by
``base_url``: vLLM, llama.cpp, Ollama) and asks for the top-k log-probabilities of every generated token
(at most 20); ``anthropic:<model>`` goes through the Messages API, which returns no log-probabilities,
so a Claude teacher is sequence-level only. The data set is appended one fsynced line per prompt, keyed
by prompt id: a killed or rate-limited run resumes where it stopped and never pays twice for a prompt.
Requests run concurrently; the SDKs retry 429/5xx with the server's retry-after, and a prompt that still
fails is reported and left for the next run instead of stopping the others.

The same client also serves as a HumanEval completion source, to score a teacher before using it.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import UserError

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
SYSTEM_PROMPT = (
    "You complete Python code. Reply with only the code that continues the given text, "
    "without repeating it and without explanations or Markdown fences."
)


class APITeacherSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["openai", "anthropic"]
    model: str = Field(min_length=1)
    base_url: str | None = None
    max_tokens: int = Field(256, ge=1, le=32_000)
    temperature: float = Field(0.0, ge=0, le=2)
    top_logprobs: int = Field(20, ge=0, le=20, description="OpenAI-compatible only; 0 asks for none")
    concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)

    @classmethod
    def parse(cls, text: str, **kw: Any) -> APITeacherSpec:
        provider, _, model = text.partition(":")
        if provider not in KEY_ENV or not model:
            raise UserError(f"API teacher {text!r}: use openai:<model> or anthropic:<model>")
        return cls(provider=provider, model=model, **kw)

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass
class Completion:
    text: str
    tokens: list[dict[str, Any]] = field(default_factory=list)  # [{"token", "logprob", "top": [[tok, lp], ...]}]
    input_tokens: int = 0
    output_tokens: int = 0


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:\n[ \t]*```\s*)?$", re.S)


def strip_fences(text: str) -> str:
    """Chat models wrap code in Markdown fences despite being asked not to; the program needs the code."""
    m = _FENCE.match(text)
    return m.group(1) + "\n" if m else text


class APITeacher:
    """One configured API model; :meth:`complete_one` is one request with the SDK's retries."""

    def __init__(self, spec: APITeacherSpec, env: dict[str, str] | None = None):
        env = dict(os.environ) if env is None else env
        key = env.get(KEY_ENV[spec.provider])
        if not key and not spec.base_url:
            raise UserError(
                f"API teacher {spec.name} needs {KEY_ENV[spec.provider]} in the environment "
                "(or --teacher-base-url for a local OpenAI-compatible server)"
            )
        self.spec, self.name = spec, spec.name
        kwargs: dict[str, Any] = {
            "api_key": key or "no-key",
            "timeout": spec.timeout_s,
            "max_retries": spec.max_retries,
        }
        if spec.base_url:
            kwargs["base_url"] = spec.base_url
        if spec.provider == "openai":
            import openai  # the SDK is imported only for the provider used: workers never load it otherwise

            self._sdk: Any = openai
            self._client: Any = openai.OpenAI(**kwargs)
        else:
            import anthropic  # likewise, only for this provider

            self._sdk = anthropic
            self._client = anthropic.Anthropic(**kwargs)

    def complete_one(
        self,
        prompt: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> Completion:
        t = self.spec.temperature if temperature is None else temperature
        n_tok = max_tokens or self.spec.max_tokens
        if self.spec.provider == "openai":
            kw: dict[str, Any] = {
                "model": self.spec.model,
                "max_tokens": n_tok,
                "temperature": t,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            }
            if self.spec.top_logprobs:
                kw.update(logprobs=True, top_logprobs=self.spec.top_logprobs)
            if stop:
                kw["stop"] = list(stop)[:4]  # the API takes at most four
            if seed is not None:
                kw["seed"] = seed
            resp = self._client.chat.completions.create(**kw)
            choice = resp.choices[0]
            tokens = []
            for item in getattr(getattr(choice, "logprobs", None), "content", None) or []:
                tokens.append(
                    {
                        "token": item.token,
                        "logprob": float(item.logprob),
                        "top": [[alt.token, float(alt.logprob)] for alt in (item.top_logprobs or [])],
                    }
                )
            u = getattr(resp, "usage", None)
            return Completion(
                choice.message.content or "",
                tokens,
                int(getattr(u, "prompt_tokens", 0) or 0),
                int(getattr(u, "completion_tokens", 0) or 0),
            )
        # anthropic>=1.0 removed sampling parameters from Messages.create and newer Claude models reject
        # them: a Claude teacher samples at the API's default, the temperature applies to OpenAI servers only.
        kw = {
            "model": self.spec.model,
            "max_tokens": n_tok,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": prompt}],
        }
        if stop:
            kw["stop_sequences"] = [s for s in stop if s.strip()]  # the API refuses whitespace-only stops
        resp = self._client.messages.create(**kw)
        text = "".join(getattr(b, "text", "") for b in resp.content if getattr(b, "type", "") == "text")
        u = getattr(resp, "usage", None)
        return Completion(text, [], int(getattr(u, "input_tokens", 0) or 0), int(getattr(u, "output_tokens", 0) or 0))

    # HumanEval completion source -------------------------------------------------------------------

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        return [
            strip_fences(self.complete_one(prompt, temperature, max_new_tokens, stop, seed + i).text) for i in range(n)
        ]

    def is_rate_limit(self, err: Exception) -> bool:
        return isinstance(err, getattr(self._sdk, "RateLimitError", ()))

    def is_api_error(self, err: Exception) -> bool:
        return isinstance(err, getattr(self._sdk, "APIError", ()))


# --------------------------------------------------------------------------------------------------
# Prompts and the data set


@dataclass(frozen=True)
class CodePrompt:
    id: str
    text: str


def prompts_from_corpus(
    texts: Iterator[tuple[str, str]] | list[tuple[str, str]], n: int, seed: int = 0
) -> list[CodePrompt]:
    """HumanEval-style prompts from source files: each function's signature and docstring, its body cut.

    ``texts`` yields ``(key, source)``; functions without a docstring are skipped. Sampled
    deterministically so the same corpus gives the same prompts (and the cache keys stay valid).
    """
    found: list[CodePrompt] = []
    for key, src in texts:
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        lines = src.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.col_offset != 0:
                continue
            doc = node.body[0] if node.body else None
            if (
                not (
                    isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)
                )
                or doc.end_lineno is None
                or len(node.body) < 2
            ):
                continue
            start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            text = "".join(lines[start : doc.end_lineno])
            if 40 <= len(text) <= 2000:
                found.append(CodePrompt(f"{key}::{node.name}@{node.lineno}", text))
    random.Random(seed).shuffle(found)
    return found[:n]


def read_generations(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a teacher data set; a torn last line (from a kill mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "id" in row:
                yield row


@dataclass
class GenerationReport:
    written: int
    skipped_cached: int
    failed: dict[str, str]
    input_tokens: int
    output_tokens: int
    with_logprobs: int
    wall_s: float


def generate_teacher_data(
    teacher: APITeacher,
    prompts: list[CodePrompt],
    out: Path,
    progress: Callable[[int, int], None] | None = None,
    rate_limit_pause_s: float = 2.0,
    rate_limit_rounds: int = 3,
) -> GenerationReport:
    """Write one JSONL row per prompt not yet in ``out``: prompt, completion, token log-probs, usage."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in read_generations(out)}
    todo = [p for p in prompts if p.id not in done]
    lock = threading.Lock()
    report = GenerationReport(0, len(prompts) - len(todo), {}, 0, 0, 0, 0.0)
    t0 = time.perf_counter()

    def one(p: CodePrompt) -> Completion:
        for attempt in range(rate_limit_rounds + 1):
            try:
                return teacher.complete_one(p.text)
            except Exception as err:  # the SDK already retried; a rate limit gets a longer pause here
                if teacher.is_rate_limit(err) and attempt < rate_limit_rounds:
                    time.sleep(rate_limit_pause_s * (2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    with open(out, "a", encoding="utf-8") as fh, ThreadPoolExecutor(max_workers=teacher.spec.concurrency) as pool:
        futures = {pool.submit(one, p): p for p in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            p = futures[fut]
            try:
                c = fut.result()
            except Exception as err:
                if not (teacher.is_api_error(err) or isinstance(err, (OSError, ValueError))):
                    raise
                report.failed[p.id] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                continue
            row = {
                "id": p.id,
                "prompt": p.text,
                "completion": c.text,
                "teacher": teacher.name,
                "tokens": c.tokens,
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
            }
            with lock:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            report.written += 1
            report.input_tokens += c.input_tokens
            report.output_tokens += c.output_tokens
            report.with_logprobs += bool(c.tokens)
            if progress:
                progress(i, len(todo))
    report.wall_s = time.perf_counter() - t0
    return report


SERVED_BY = "autonas"  # the owned_by of every model `autonas serve` lists


class CompletionsModel:
    """A code-completion model behind an OpenAI-compatible ``/v1/completions``, such as one ``autonas serve`` offers.

    A chat wrapper (system prompt, messages) would change the text the model continues, so such a model gets the
    HumanEval prompt as is, as the same model scored from its folder does; the prompt keeps its most recent tokens
    when it is longer than the context (``truncate_prompt_tokens``), as the folder's ``generate`` does, and sample
    ``i`` is drawn with seed ``seed + i``. Only the first four stop strings go over the wire (the API's limit); the
    harness cuts the text at every stop string afterwards, so the samples are the same."""

    def __init__(self, spec: APITeacherSpec, client: Any):
        self.spec, self._client = spec, client
        self.name = f"{spec.name}@{spec.base_url}"

    @classmethod
    def find(cls, spec: APITeacherSpec) -> CompletionsModel | None:
        """The model as a completions model when the server says ``autonas serve`` offers it; None otherwise."""
        if spec.provider != "openai" or not spec.base_url:
            return None
        import openai  # the SDK only for an API model

        client = openai.OpenAI(
            base_url=spec.base_url,
            api_key=os.environ.get(KEY_ENV["openai"]) or "no-key",
            timeout=spec.timeout_s,
            max_retries=spec.max_retries,
        )
        try:
            models = list(client.models.list())
        except openai.APIError:  # a server without /v1/models (or that fails it) is asked through chat, as before
            return None
        mine = [m for m in models if m.id == spec.model and getattr(m, "owned_by", None) == SERVED_BY]
        return cls(spec, client) if mine else None

    @property
    def runtime(self) -> str | None:
        """What the server decodes this model with (``runtime`` in its ``/v1/models`` entry), asked when read: after
        generating, the runtime that really served (a failed ONNX start under ``auto`` falls back to PyTorch)."""
        import openai

        try:
            models = list(self._client.models.list())
        except openai.APIError:
            return None
        value = next((getattr(m, "runtime", None) for m in models if m.id == self.spec.model), None)
        return value if isinstance(value, str) else None

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        out = []
        for i in range(n):
            resp = self._client.completions.create(
                model=self.spec.model,
                prompt=prompt,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=list(stop)[:4] or None,
                seed=seed + i,
                extra_body={"truncate_prompt_tokens": 1 << 30},
            )
            out.append(resp.choices[0].text or "")
        return out
