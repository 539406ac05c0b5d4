"""``autonas serve``'s model API against the real ``openai`` SDK on 127.0.0.1: answers, streaming, batching, errors.

The server is the real app under uvicorn in a thread; the models are small random-weight models saved as run
folders (what is checked is the serving, not the model: greedy text must equal the model's own ``generate``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI
from safetensors.torch import save_model
from typer.testing import CliRunner

from agent.cli import app as autonas_app
from harness.tokenizer import ByteTokenizer
from nas.model import build_model
from nas.space import ArchConfig
from serve.app import ServeSettings, create_app
from serve.engine import EngineOptions, SamplingSettings, TokenEvent
from serve.openai_api import LoopBridge
from serve.text_stream import TextStream

ARCH = ArchConfig(
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    activation="swiglu",
    norm="rmsnorm",
    pos="rope",
    tie_embeddings=True,
    vocab_size=256,
    context_length=128,
)


def _save(folder: Path, arch: ArchConfig, seed: int) -> None:
    folder.mkdir(parents=True)
    save_model(build_model(arch, seed=seed), str(folder / "model.safetensors"))
    (folder / "arch.json").write_text(arch.model_dump_json())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, settings: ServeSettings):
        self.app = create_app(settings)
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str = "unused") -> OpenAI:
        return OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def engine(self, model_id: str):  # noqa: ANN201 - the Engine, for its counters
        return self.app.state.registry.engine(model_id)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _save(root / "run-a" / "best", ARCH, seed=3)
    (root / "run-still-going").mkdir()  # no best/ yet: not offered
    _save(root.parent / "extra-model", ARCH.model_copy(update={"pos": "learned"}), seed=4)
    return root


@pytest.fixture(scope="module")
def server(runs: Path) -> Iterator[Server]:
    settings = ServeSettings(runs_dir=runs, models={"extra": runs.parent / "extra-model"})
    with Server(settings) as s:
        yield s


def _reference(folder: Path, prompt: str, n: int) -> str:
    from nas.run_folder import load_trained_model

    model, tok = load_trained_model(folder)
    out = model.generate([tok.eos_id, *tok.encode(prompt)], n, temperature=0, eos_id=tok.eos_id)
    return tok.decode(out.tokens)


def test_models_lists_kept_and_named_models(server: Server) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert ids == ["extra", "run-a"]


@pytest.mark.parametrize("model_id", ["run-a", "extra"])
def test_greedy_completion_is_the_models_own_and_streaming_gives_the_same_text(
    server: Server, runs: Path, model_id: str
) -> None:
    folder = runs / "run-a" / "best" if model_id == "run-a" else runs.parent / "extra-model"
    c = server.client()
    whole = c.completions.create(model=model_id, prompt="def add(a, b):", max_tokens=24, temperature=0)
    assert whole.choices[0].text == _reference(folder, "def add(a, b):", 24)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 24 and whole.usage.prompt_tokens == 15
    pieces = c.completions.create(model=model_id, prompt="def add(a, b):", max_tokens=24, temperature=0, stream=True)
    chunks = list(pieces)
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_plain_and_streaming(server: Server, runs: Path) -> None:
    c = server.client()
    messages = [{"role": "system", "content": "# python"}, {"role": "user", "content": "import os"}]
    reply = c.chat.completions.create(model="run-a", messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    text = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert text == _reference(runs / "run-a" / "best", "# python\nimport os", 16)
    stream = list(
        c.chat.completions.create(model="run-a", messages=messages, max_tokens=16, temperature=0, stream=True)  # type: ignore[arg-type]
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in stream) == text
    assert stream[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_the_text_and_ends_the_request(server: Server) -> None:
    c = server.client()
    free = c.completions.create(model="run-a", prompt="x = 1", max_tokens=40, temperature=0).choices[0].text
    stop = free[5:8]  # a string the greedy continuation reaches
    cut = free.index(stop)
    for stream in (False, True):
        if stream:
            chunks = list(
                c.completions.create(
                    model="run-a", prompt="x = 1", max_tokens=40, temperature=0, stop=[stop], stream=True
                )
            )
            text, finish = "".join(ch.choices[0].text for ch in chunks), chunks[-1].choices[0].finish_reason
        else:
            r = c.completions.create(model="run-a", prompt="x = 1", max_tokens=40, temperature=0, stop=stop)
            text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert text == free[:cut] and finish == "stop"


def test_echo_and_logprobs(server: Server) -> None:
    r = server.client().completions.create(
        model="run-a", prompt="if x:", max_tokens=5, temperature=0, echo=True, logprobs=3
    )
    choice = r.choices[0]
    assert choice.text.startswith("if x:") and len(choice.text) == len("if x:") + 5
    lp = choice.logprobs
    assert lp is not None and lp.tokens == list(choice.text[5:])  # byte model: one character per token
    assert lp.token_logprobs is not None and all(v is not None and v <= 0 for v in lp.token_logprobs)
    assert lp.top_logprobs is not None and all(len(t) == 3 for t in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(max(t.values()) == pytest.approx(v) for t, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    assert lp.text_offset == [5, 6, 7, 8, 9]


def test_concurrent_clients_share_decode_steps_and_seeded_sampling_does_not_depend_on_them(server: Server) -> None:
    c = server.client()

    def ask(i: int) -> str:
        r = c.completions.create(model="run-a", prompt=f"# {i}", max_tokens=20, temperature=0.9, top_p=0.95, seed=i)
        return r.choices[0].text

    engine = server.engine("run-a")
    done_before = engine.stats.requests_done
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(24)))
    assert len(together) == 24 and all(len(t) > 0 for t in together)  # no request lost
    assert engine.stats.requests_done - done_before == 24
    assert engine.stats.max_batch_seen > 1  # requests were decoded in shared steps
    alone = [ask(i) for i in (0, 7, 23)]
    assert alone == [together[0], together[7], together[23]]


def test_many_concurrent_streams_each_get_every_token_in_order(server: Server, runs: Path) -> None:
    """16 streams decoding in shared steps: each one's text is its prompt's own greedy text, every chunk names its
    own request, and the tokens of one step (handed to the event loop together) reach the right streams."""
    prompts = [f"def f{i}(x):\n    return x * {i}" for i in range(16)]

    def stream(prompt: str) -> tuple[str, set[str], str | None]:
        chunks = list(
            server.client().completions.create(
                model="run-a",
                prompt=prompt,
                max_tokens=40,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        *texts, usage = chunks  # a chunk may carry several tokens: the count comes in a last chunk, with no choices
        assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 40
        return "".join(c.choices[0].text for c in texts), {c.id for c in chunks}, texts[-1].choices[0].finish_reason

    engine = server.engine("run-a")
    seen_before = engine.stats.max_batch_seen
    engine.stats.max_batch_seen = 0
    with cf.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(stream, prompts))
    assert engine.stats.max_batch_seen > 1  # the streams did share decode steps
    engine.stats.max_batch_seen = max(seen_before, engine.stats.max_batch_seen)
    folder = runs / "run-a" / "best"
    for prompt, (text, ids, finish) in zip(prompts, got, strict=True):
        assert text == _reference(folder, prompt, 40)
        assert len(ids) == 1 and finish == "length"
    assert len({ids.pop() for _, ids, _ in got}) == 16


def test_the_loop_bridge_delivers_every_event_in_order_from_several_threads() -> None:
    """Events sent from several engine threads at once reach each asyncio queue complete and in the order sent."""

    async def run() -> list[list[int | None]]:
        bridge = LoopBridge(asyncio.get_running_loop())
        queues: list[asyncio.Queue[TokenEvent]] = [asyncio.Queue() for _ in range(8)]

        def engine_thread(k: int) -> None:  # thread k sends to queues k and k + 4, interleaved
            a, b = bridge.sink(queues[k]), bridge.sink(queues[k + 4])
            for t in range(300):
                a(TokenEvent(t))
                b(TokenEvent(1000 + t))
            a(TokenEvent(None, finish_reason="length"))
            b(TokenEvent(None, finish_reason="length"))

        threads = [threading.Thread(target=engine_thread, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()

        async def drain(q: asyncio.Queue[TokenEvent]) -> list[int | None]:
            out: list[int | None] = []
            while not out or out[-1] is not None:
                out.append((await q.get()).token)
            return out

        got = await asyncio.wait_for(asyncio.gather(*(drain(q) for q in queues)), timeout=30)
        for t in threads:
            t.join()
        return got

    got = asyncio.run(run())
    for k, tokens in enumerate(got):
        base = 0 if k < 4 else 1000
        assert tokens == [*range(base, base + 300), None]


def test_tokens_pushed_together_give_the_text_of_tokens_pushed_one_by_one() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("x = 'é' + \"<stop>\" ; y")
    one = TextStream(tok.decode, ("<stop>",))
    pieces = [one.push(i) for i in ids]
    together = TextStream(tok.decode, ("<stop>",))
    groups = [ids[i : i + 3] for i in range(0, len(ids), 3)]
    grouped = [together.push_many(g) for g in groups]
    assert "".join(pieces) + one.finish() == "".join(grouped) + together.finish() == "x = 'é' + \""
    assert one.stopped and together.stopped


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"model": "nope", "prompt": "x", "max_tokens": 3}, openai.NotFoundError, "does not exist"),
        ({"model": "../../etc", "prompt": "x", "max_tokens": 3}, openai.NotFoundError, "not a valid model id"),
        ({"model": "run-still-going", "prompt": "x", "max_tokens": 3}, openai.NotFoundError, "does not exist"),
        ({"model": "run-a", "prompt": "x", "max_tokens": -1}, openai.BadRequestError, "max_tokens"),
        ({"model": "run-a", "prompt": "x", "max_tokens": 10**9}, openai.BadRequestError, "max_tokens"),
        ({"model": "run-a", "prompt": "y" * 400, "max_tokens": 3}, openai.BadRequestError, "context"),
        ({"model": "run-a", "prompt": "x", "max_tokens": 3, "n": 2}, openai.BadRequestError, "n"),
        ({"model": "run-a", "prompt": "x", "max_tokens": 3, "temperature": 9}, openai.BadRequestError, "temperature"),
        ({"model": "run-a", "prompt": "x", "max_tokens": 3, "stop": [""]}, openai.BadRequestError, "stop"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: Server, kwargs: dict, error: type[Exception], fragment: str
) -> None:
    c = server.client()
    with pytest.raises(error) as raised:
        c.completions.create(**kwargs)
    assert fragment in str(raised.value)
    assert c.completions.create(model="run-a", prompt="x", max_tokens=2).choices[0].text is not None


def test_malformed_and_oversized_bodies(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as h:
        bad = h.post("/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        missing = h.post("/completions", json={"prompt": "x"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
        huge = h.post("/completions", json={"model": "run-a", "prompt": "x" * 2_000_000})
        assert huge.status_code == 413 and "over" in huge.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds for a streamed body too
            for _ in range(30):
                yield b" " * 50_000

        streamed = h.post("/completions", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_a_client_that_leaves_mid_stream_frees_its_slot(server: Server) -> None:
    engine = server.engine("run-a")
    tokens_before = engine.stats.tokens
    body = {"model": "run-a", "prompt": "while True:", "max_tokens": 110, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as h:
        with h.stream("POST", "/completions", json=body) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        deadline = time.monotonic() + 20
        while len(engine._free) < engine.max_batch and time.monotonic() < deadline:  # freed at the next step
            time.sleep(0.05)
        assert not engine._active and len(engine._free) == engine.max_batch
        assert engine.stats.tokens - tokens_before < 110  # cancelled, not decoded to max_tokens
    assert server.client().completions.create(model="run-a", prompt="x", max_tokens=3).choices[0].text is not None


def test_a_full_queue_answers_429_with_retry_after(runs: Path) -> None:
    settings = ServeSettings(runs_dir=runs, engine=EngineOptions(max_batch=1, max_waiting=1))
    with Server(settings) as s:
        body = {"model": "run-a", "prompt": "x", "max_tokens": 100, "temperature": 0}

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=60) as h:
                return h.post("/completions", json=body)

        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        busy = [a for a in answers if a.status_code == 429]
        assert busy and all(int(a.headers["retry-after"]) >= 1 for a in busy)
        assert busy[0].json()["error"]["type"] == "rate_limit_error"
        assert all(a.status_code in (200, 429) for a in answers)
        assert any(a.status_code == 200 for a in answers)


def test_an_api_key_is_required_when_set(runs: Path) -> None:
    with Server(ServeSettings(runs_dir=runs, api_key="s3cret-key")) as s:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert [m.id for m in s.client("s3cret-key").models.list()] == ["run-a"]


def test_serve_command_refuses_unsafe_or_impossible_starts(runs: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    exposed = cli.invoke(autonas_app, ["serve", "--runs-dir", str(runs), "--host", "0.0.0.0"])
    assert exposed.exit_code == 2 and "--api-key" in exposed.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli.invoke(autonas_app, ["serve", "--runs-dir", str(runs), "--port", str(port)])
    assert busy.exit_code == 2 and "cannot listen" in busy.output
    nothing = cli.invoke(autonas_app, ["serve", "--runs-dir", str(tmp_path / "none")])
    assert nothing.exit_code == 2 and "no models to serve" in nothing.output
    bad_model = cli.invoke(autonas_app, ["serve", "--model", f"x/y={tmp_path}"])
    assert bad_model.exit_code == 2 and "must match" in bad_model.output


def test_text_stream_never_releases_half_a_character_or_part_of_a_stop_string() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("ab é c<stop>d")
    stream = TextStream(tok.decode, ("<stop>",))
    released = []
    for i in ids:
        released.append(stream.push(i))
        assert "\ufffd" not in "".join(released) and "<" not in "".join(released)
        if stream.stopped:
            break
    assert "".join(released) + stream.finish() == "ab é c"
    assert json.dumps(stream.text) == json.dumps("ab é c")


def test_past_the_context_the_window_slides_as_generate_does(server: Server, runs: Path) -> None:
    """200 new tokens from a 128-token model: the served text is still the model's own generate() text."""
    c = server.client()
    r = c.completions.create(model="run-a", prompt="class A:", max_tokens=200, temperature=0)
    assert r.choices[0].text == _reference(runs / "run-a" / "best", "class A:", 200)
    assert r.usage is not None and r.usage.completion_tokens == 200


def test_a_long_prompt_is_refused_unless_truncation_is_asked(server: Server, runs: Path) -> None:
    c = server.client()
    prompt = "".join(f"x{i} = {i}\n" for i in range(40))  # ~300 bytes, context 128
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model="run-a", prompt=prompt, max_tokens=8)
    r = c.completions.create(
        model="run-a", prompt=prompt, max_tokens=8, temperature=0, extra_body={"truncate_prompt_tokens": 10_000}
    )
    assert r.usage is not None and r.usage.prompt_tokens == 127  # the most recent context - 1 tokens
    assert r.choices[0].text == _reference(runs / "run-a" / "best", prompt, 8)  # generate() keeps the same tail


def test_seeded_sampling_is_the_models_own(server: Server, runs: Path) -> None:
    import torch

    from nas.run_folder import load_trained_model

    model, tok = load_trained_model(runs / "run-a" / "best")
    ids = [tok.eos_id, *tok.encode("for i in")]
    for seed in (1, 2, 3):
        want = model.generate(
            ids, 30, temperature=0.8, top_p=0.9, eos_id=tok.eos_id, generator=torch.Generator().manual_seed(seed)
        )
        got = server.client().completions.create(
            model="run-a", prompt="for i in", max_tokens=30, temperature=0.8, top_p=0.9, seed=seed
        )
        assert got.choices[0].text == tok.decode(want.tokens)


def test_humaneval_through_the_server_equals_scoring_the_folder(tiny_run: Path, tmp_path: Path) -> None:
    """`autonas eval humaneval --model openai:<id> --base-url .../v1` gives the folder's own samples and score."""
    with Server(ServeSettings(runs_dir=None, models={"tiny": tiny_run})) as s:
        cli = CliRunner()
        common = ["eval", "humaneval", "--limit", "6", "--max-new-tokens", "48", "--workers", "2"]
        direct = cli.invoke(autonas_app, [*common, "--model", str(tiny_run), "--out", str(tmp_path / "direct")])
        assert direct.exit_code == 0, direct.output
        served = cli.invoke(
            autonas_app, [*common, "--model", "openai:tiny", "--base-url", s.url, "--out", str(tmp_path / "served")]
        )
        assert served.exit_code == 0, served.output

    def rows(name: str) -> list[tuple[str, str]]:
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        return [(r["task_id"], r["completion"]) for r in map(json.loads, lines)]

    assert rows("served") == rows("direct") and len(rows("direct")) == 6
    direct_m = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    served_m = json.loads((tmp_path / "served" / "metrics.json").read_text())
    for key in ("humaneval_pass_at_1", "humaneval_passed", "humaneval_samples"):
        assert served_m[key] == direct_m[key]
    assert served_m["humaneval_model"].startswith("openai:tiny@")


def test_models_load_on_first_use_and_the_least_recent_is_unloaded_past_the_memory_limit(runs: Path) -> None:
    from serve.registry import ModelRegistry

    one_model_mb = sum(p.numel() * 4 for p in build_model(ARCH).parameters()) / 1e6
    registry = ModelRegistry(runs, {"extra": runs.parent / "extra-model"}, max_loaded_mb=1.5 * one_model_mb)
    try:
        assert [e.id for e in registry.entries()] == ["extra", "run-a"] and not registry._loaded  # listing loads none
        first = registry.engine("run-a")
        assert registry.engine("run-a") is first  # cached
        registry.engine("extra")  # two models do not fit: run-a, the least recently used, goes
        assert list(registry._loaded) == ["extra"] and not first._thread.is_alive()
        again = registry.engine("run-a")
        assert again is not first and list(registry._loaded) == ["run-a"]
        request = again.submit([0, 1, 2], SamplingSettings(max_tokens=3, temperature=0))
        events = [request.events.get(timeout=30)]
        while events[-1].token is not None:
            events.append(request.events.get(timeout=30))
        assert events[-1].finish_reason in ("length", "stop") and len(events) <= 4  # the reloaded model serves
    finally:
        registry.close()
