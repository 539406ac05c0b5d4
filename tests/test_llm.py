"""LLM providers through the real anthropic and openai SDKs against a scripted wire-format server on
127.0.0.1: structured plans, invalid output fed back, retries on 429/500, timeouts, cost tracking and the
spend cap, the LLM judge bounded by the noise rule, and `autonas run` with an LLM planner end to end."""

import csv
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.goal import parse_goal
from agent.judge import Verdict
from agent.llm import AnthropicClient, CostLedger, LLMSpec, OpenAIClient, judge_spec, make_client, resolve_provider
from agent.llm_judge import LLMJudge
from agent.offline import OfflinePlanner
from agent.planner import Planner
from agent.plans import PlanContext, parse_plan
from agent.prompting import Prompts
from agent.state import HistoryEntry
from harness.errors import UserError
from nas.space import ArchConfig
from tests.llm_server import Reply, ScriptedLLMServer, anthropic_text, anthropic_tool, error, openai_text, openai_tool

runner = CliRunner()
GOAL = parse_goal("find the best Python code model under 1 MB")
CTX = PlanContext(vocab_size=256, max_mb=1.0, time_left_s=600)
SMALL = ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128)


def train_plan(arch: ArchConfig = SMALL, seed: int = 0, **over) -> dict:
    plan = {
        "kind": "train",
        "config": {"arch": arch.model_dump(), "budget": "16ktok", "seed": seed},
        "rationale": "a small shape",
    }
    plan.update(over)
    return plan


def tool_reply(provider: str, args, **kw) -> Reply:
    return (
        anthropic_tool("submit_plan", args, **kw) if provider == "anthropic" else openai_tool("submit_plan", args, **kw)
    )


def make_planner(tmp_path: Path, provider: str, srv: ScriptedLLMServer, **spec) -> Planner:
    url = srv.anthropic_url if provider == "anthropic" else srv.openai_url
    cls = AnthropicClient if provider == "anthropic" else OpenAIClient
    max_cost = spec.pop("max_cost", None)
    client = cls(LLMSpec(provider=provider, base_url=url, **spec), "test-key")
    offline = OfflinePlanner(GOAL, 256, "16ktok", 2)
    return Planner(
        GOAL,
        offline,
        "byte",
        "16ktok",
        Prompts(),
        client,
        CostLedger(tmp_path / "llm_calls.jsonl"),
        max_cost_usd=max_cost,
    )


def user_text(request: dict) -> str:
    return request["json"]["messages"][-1]["content"]


def test_anthropic_plan_by_forced_tool_call_with_cost(tmp_path):
    with ScriptedLLMServer() as srv:
        srv.script.append(tool_reply("anthropic", train_plan(), input_tokens=1000, output_tokens=200))
        planner = make_planner(tmp_path, "anthropic", srv)
        out = planner.propose([], None, None, CTX)
    assert out.source == "llm" and out.plan.config.arch == SMALL
    req = srv.requests[0]
    assert req["path"] == "/v1/messages"
    body = req["json"]
    assert body["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    schema = body["tools"][0]["input_schema"]
    assert schema["type"] == "object" and set(schema["required"]) == {"kind", "config", "rationale"}
    assert (
        "autonomous research agent" in body["system"]
        and GOAL.text in user_text(req)
        and "int8 size <= 1 MB" in user_text(req)
    )
    assert "test-key" in (req["headers"].get("x-api-key", "") + req["headers"].get("authorization", ""))
    rec = planner.ledger.records[0]
    assert (rec.input_tokens, rec.output_tokens) == (1000, 200)
    assert rec.cost_usd == pytest.approx((1000 * 3 + 200 * 15) / 1e6)  # Sonnet list price
    assert json.loads((tmp_path / "llm_calls.jsonl").read_text().splitlines()[0])["cost_usd"] == pytest.approx(
        rec.cost_usd
    )


def test_openai_plan_by_forced_function_call_with_cost(tmp_path):
    with ScriptedLLMServer() as srv:
        srv.script.append(tool_reply("openai", train_plan(), prompt_tokens=2000, completion_tokens=100))
        planner = make_planner(tmp_path, "openai", srv)
        out = planner.propose([], None, None, CTX)
    assert out.source == "llm" and out.plan.kind == "train"
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == "Bearer test-key"
    body = req["json"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "submit_plan"}}
    assert body["tools"][0]["function"]["parameters"]["type"] == "object"
    assert body["messages"][0]["role"] == "system"
    assert planner.ledger.total_usd == pytest.approx((2000 * 2 + 100 * 8) / 1e6)  # gpt-4.1 list price


def test_openai_compatible_server_answering_in_text_is_understood(tmp_path):
    """llama.cpp / Ollama without tool support answer with JSON in the message text."""
    with ScriptedLLMServer() as srv:
        srv.script.append(openai_text("Here is my plan:\n```json\n" + json.dumps(train_plan()) + "\n```"))
        out = make_planner(tmp_path, "openai", srv).propose([], None, None, CTX)
    assert out.source == "llm" and out.plan.config.arch == SMALL


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_invalid_plans_go_back_with_the_error_then_offline_takes_the_step(tmp_path, provider):
    text = anthropic_text if provider == "anthropic" else openai_text
    with ScriptedLLMServer() as srv:
        srv.script.extend(
            [
                text("I would train a bigger model."),  # no tool call, no JSON
                tool_reply(provider, train_plan(kind="dance")),  # unknown kind
                tool_reply(provider, train_plan(ArchConfig(vocab_size=50_000))),  # wrong tokenizer
            ]
        )
        planner = make_planner(tmp_path, provider, srv)
        out = planner.propose([], None, None, CTX)
        assert out.source == "offline fallback" and out.plan.rationale.startswith("baseline")
        assert sum("rejected" in n for n in out.notes) == 3
        feedback = [user_text(r) for r in srv.requests]
        assert "rejected" not in feedback[0]
        assert "not valid JSON" in feedback[1] and "unknown plan kind 'dance'" in feedback[2]
        # a bad plan then a good one: the LLM's corrected plan is used
        srv.script.extend(
            [tool_reply(provider, train_plan(ArchConfig(n_layers=64, d_model=512))), tool_reply(provider, train_plan())]
        )
        out = planner.propose([], None, None, CTX)
        assert out.source == "llm" and "breaks the goal's limits" in out.notes[0]
        assert "breaks the goal's limits" in user_text(srv.requests[-1])


def test_an_exact_repeat_is_refused(tmp_path):
    done = {"id": "e001", "plan": train_plan(), "decision": "keep", "reason": "first", "val_bpb": 3.0, "metrics": {}}
    done["plan"]["config"] = {**done["plan"]["config"], "lr": 3e-3, "batch_size": 16}  # as recorded: defaults filled in
    with ScriptedLLMServer() as srv:
        srv.script.extend([tool_reply("openai", train_plan()), tool_reply("openai", train_plan(seed=1))])
        entry = HistoryEntry.model_validate(done)
        out = make_planner(tmp_path, "openai", srv).propose([entry], entry, None, CTX)
        assert out.source == "llm" and out.plan.config.seed == 1
        assert "already run as e001" in out.notes[0] and "already run as e001" in user_text(srv.requests[1])


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_sdk_retries_429_and_500(tmp_path, provider):
    with ScriptedLLMServer() as srv:
        srv.script.extend([error(429, "rate_limit_error"), error(500), tool_reply(provider, train_plan())])
        out = make_planner(tmp_path, provider, srv, max_retries=3).propose([], None, None, CTX)
    assert out.source == "llm" and len(srv.requests) == 3
    assert [r["headers"].get("x-stainless-retry-count") for r in srv.requests] == ["0", "1", "2"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_slow_reply_times_out_and_the_step_goes_offline(tmp_path, provider):
    with ScriptedLLMServer() as srv:
        slow = tool_reply(provider, train_plan())
        slow.delay_s = 3.0
        srv.script.extend([slow, slow])
        planner = make_planner(tmp_path, provider, srv, timeout_s=0.5, max_retries=1)
        out = planner.propose([], None, None, CTX)
    assert out.source == "offline fallback"
    assert any("did not answer within 0.5s" in n for n in out.notes), out.notes
    assert [r.ok for r in planner.ledger.records] == [False]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_unreadable_and_error_responses_never_crash(tmp_path, provider):
    with ScriptedLLMServer() as srv:
        srv.script.extend(
            [Reply(body="garbage{"), Reply(body={"unexpected": True})]
            + [tool_reply(provider, "a string, not an object")] * 3
        )
        planner = make_planner(tmp_path, provider, srv, max_retries=0)
        first = planner.propose([], None, None, CTX)  # non-JSON body: provider failure
        assert first.source == "offline fallback" and "unreadable response" in first.notes[0]
        second = planner.propose([], None, None, CTX)  # JSON, but not a message: treated as a bad answer
        assert second.source == "offline fallback" and "rejected" in second.notes[0]


def test_spend_cap_stops_calls(tmp_path):
    with ScriptedLLMServer() as srv:
        srv.script.append(tool_reply("openai", train_plan(), prompt_tokens=1000, completion_tokens=1000))
        planner = make_planner(tmp_path, "openai", srv, price_in=5.0, price_out=5.0, max_cost=0.005)
        assert planner.propose([], None, None, CTX).source == "llm"  # $0.01 spent
        out = planner.propose([], None, None, CTX)
    assert out.source == "offline fallback" and "spend cap" in out.notes[0] and len(srv.requests) == 1
    assert CostLedger(tmp_path / "llm_calls.jsonl").total_usd == pytest.approx(0.01)  # survives a restart


def test_llm_judge_may_only_be_stricter_than_the_noise_rule(tmp_path):
    def verdict(decision: str, reason: str) -> Reply:
        return anthropic_tool("submit_verdict", {"decision": decision, "reason": reason})

    with ScriptedLLMServer() as srv:
        client = AnthropicClient(LLMSpec(provider="anthropic", base_url=srv.anthropic_url), "k")
        judge = LLMJudge(GOAL, client, CostLedger(tmp_path / "calls.jsonl"), Prompts())
        plan = parse_plan(train_plan())
        metrics = {"status": "ok", "val_bpb": 3.10, "size_bytes_int8": 500_000, "latency_ms_p50": 1.0}
        close = Verdict(decision="close", reason="within noise", metric=3.10, delta=-0.01, noise=0.02)
        keep = Verdict(decision="keep", reason="beats by 0.2", metric=3.0, delta=-0.2, noise=0.02)
        srv.script.extend(
            [
                verdict("keep", "looks great"),
                verdict("discard", "suspicious jump"),
                verdict("keep", "clear gain"),
                Reply(body={"type": "message", "role": "assistant", "model": "m", "content": [], "usage": {}}),
                verdict("maybe", "?"),
            ]
        )
        notes: list[str] = []
        assert judge.review(close, "e5", plan, metrics, None, 1, notes).decision == "close"  # cannot keep within noise
        assert judge.review(keep, "e6", plan, metrics, None, 1, notes).decision == "discard"
        kept = judge.review(keep, "e7", plan, metrics, None, 1, notes)
        assert kept.decision == "keep" and "clear gain" in kept.reason
        assert "3.1" in user_text(srv.requests[0]) and "within noise" in user_text(srv.requests[0])
        # two unreadable answers: the rule decides
        assert (
            judge.review(keep, "e8", plan, metrics, None, 1, notes).decision == "keep"
            and "the metric rule decides" in notes
        )
        n = len(srv.requests)
        crash = Verdict(decision="crash", reason="exit code 1")
        assert judge.review(crash, "e9", plan, {"status": "crashed"}, None, 1, notes).decision == "crash"
        too_big = {**metrics, "size_bytes_int8": 5_000_000}
        assert judge.review(keep, "e10", plan, too_big, None, 1, notes) == keep
        assert len(srv.requests) == n  # crashes and limit breaches cost no call


def test_provider_resolution_and_key_errors(tmp_path):
    assert resolve_provider(LLMSpec(), {}) == "offline"
    assert resolve_provider(LLMSpec(), {"OPENAI_API_KEY": "x"}) == "openai"
    assert resolve_provider(LLMSpec(), {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"}) == "anthropic"
    assert make_client(LLMSpec(), "planner", {}) is None
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        make_client(LLMSpec(provider="anthropic"), "planner", {})
    with pytest.raises(UserError, match="cannot reach the judge's LLM server"):
        make_client(LLMSpec(provider="openai", base_url=f"http://127.0.0.1:{_closed_port()}/v1"), "judge", {})
    # the judge: the planner's LLM unless set; another provider keeps its own server
    planner = LLMSpec(provider="anthropic", model="claude-opus-4-6", base_url="http://127.0.0.1:1")
    assert judge_spec(planner, LLMSpec(), {}) == planner
    assert judge_spec(planner, LLMSpec(provider="anthropic", model="claude-haiku-4-5"), {}).base_url == planner.base_url
    other = judge_spec(planner, LLMSpec(provider="openai", model="gpt-4.1"), {})
    assert (other.provider, other.model, other.base_url) == ("openai", "gpt-4.1", None)
    # a local OpenAI-compatible server needs no key
    with ScriptedLLMServer() as srv:
        assert make_client(LLMSpec(provider="openai", base_url=srv.openai_url), "planner", {}) is not None


def test_prompt_templates_are_files_a_person_can_edit(tmp_path):
    p = Prompts()
    text = p.render(
        "judge", goal="g", limits="l", experiment="e1", rationale="r", metrics="{}", incumbent="i", statistics="s"
    )
    assert "submit_verdict" in text and "$" not in text
    custom = tmp_path / "prompts"
    custom.mkdir()
    (custom / "planner_system.txt").write_text("You plan tiny models. Budget in $$.")
    assert Prompts(custom).render("planner_system") == "You plan tiny models. Budget in $."
    (custom / "planner.txt").write_text("Goal: $goal, also $bogus")
    with pytest.raises(UserError, match=r"unknown field\(s\) \$bogus"):
        Prompts(custom)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- CLI


def _cli(tmp_path, corpus, run_id, *extra):
    return [
        "run",
        GOAL.text,
        "--run-id",
        run_id,
        "--runs-dir",
        str(tmp_path),
        "--budget",
        "30m",
        "--experiment-budget",
        "16ktok",
        "--corpus",
        str(corpus),
        "--eval-bytes",
        "6000",
        "--search-trials",
        "2",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, env, message",
    [
        (["--planner", "gemini"], {}, "unknown LLM provider 'gemini'"),
        (["--planner", "anthropic"], {}, "ANTHROPIC_API_KEY is not set"),
        (["--judge", "openai"], {}, "OPENAI_API_KEY is not set"),
        (
            ["--planner", "openai", "--base-url", "http://127.0.0.1:{port}/v1"],
            {"OPENAI_API_KEY": "k"},
            "cannot reach the planner's LLM server",
        ),
        (
            ["--planner", "openai", "--planner-model", "my-local-model", "--base-url", "SERVER", "--max-cost", "1"],
            {},
            "no price known",
        ),
    ],
)
def test_llm_bad_input_is_one_line_exit_2_and_creates_nothing(
    tmp_path, small_corpus_dir, monkeypatch, extra, env, message
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with ScriptedLLMServer() as srv:
        extra = [a.replace("{port}", str(_closed_port())).replace("SERVER", srv.openai_url) for a in extra]
        result = runner.invoke(app, _cli(tmp_path, small_corpus_dir, "bad", *extra))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "bad").exists()


def test_no_key_means_offline_said_once(tmp_path, small_corpus_dir):
    result = runner.invoke(app, _cli(tmp_path, small_corpus_dir, "o1", "--budget", "1s"))
    assert result.exit_code == 0, result.output
    assert result.output.count("no ANTHROPIC_API_KEY or OPENAI_API_KEY") == 1 and "planner: offline" in result.output


def _scripted_research(calls: dict):
    """Plays an LLM planner and judge: first an invalid plan, then three different small shapes; keeps everything."""
    shapes = [
        SMALL,
        ArchConfig(n_layers=3, d_model=64, n_heads=2, n_kv_heads=1, d_ff=192),
        ArchConfig(n_layers=2, d_model=96, n_heads=3, n_kv_heads=3, d_ff=256),
    ]

    def respond(path: str, body: dict) -> Reply:
        tool = body["tools"][0]["name"]
        calls[tool] = calls.get(tool, 0) + 1
        if tool == "submit_verdict":
            return anthropic_tool(tool, {"decision": "keep", "reason": "better on the goal"})
        if calls[tool] == 1:
            return anthropic_tool(tool, train_plan(ArchConfig(vocab_size=50_000)))
        shape = shapes[(calls[tool] - 2) % len(shapes)]
        return anthropic_tool(tool, train_plan(shape, rationale=f"try {shape.describe()}"))

    return respond


@pytest.mark.slow
def test_run_with_an_llm_planner_and_judge_end_to_end(tmp_path, small_corpus_dir, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    calls: dict = {}
    with ScriptedLLMServer(_scripted_research(calls)) as srv:
        result = runner.invoke(
            app, _cli(tmp_path, small_corpus_dir, "l1", "--base-url", srv.anthropic_url, "--max-experiments", "3")
        )
        assert result.exit_code == 0, result.output
        assert "planner: anthropic (claude-sonnet-4-6 at http://127.0.0.1" in result.output
        feedback = user_text(srv.requests[1])
    run = tmp_path / "l1"
    rows = list(csv.DictReader(open(run / "workspace" / "results.tsv"), delimiter="\t"))
    # the loop's own noise repeat of the first kept model comes second, whoever plans
    assert [r["planner"] for r in rows] == ["llm", "rule", "llm"] and all(r["kind"] == "train" for r in rows)
    assert "vocab_size is 50000" in feedback
    journal = (run / "workspace" / "journal.md").read_text()
    assert "planned by llm" in journal and "plan rejected (attempt 1/3)" in journal
    ledger = [json.loads(line) for line in (run / "llm_calls.jsonl").read_text().splitlines()]
    assert len(ledger) == sum(calls.values()) and {r["role"] for r in ledger} == {"planner", "judge"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["llm_calls"] == len(ledger) and summary["llm_cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in ledger)
    )
    assert summary["planned_by"] == {"llm": 2, "rule": 1}
    assert "LLM calls" in (run / "report.md").read_text()
    status = runner.invoke(app, ["status", "l1", "--runs-dir", str(tmp_path)])
    assert status.exit_code == 0 and f"LLM: {len(ledger)} calls" in status.output
    # the key is never passed to workers or saved
    assert "test-key" not in (run / "run.json").read_text()


def test_resume_without_the_key_is_refused_and_keeps_the_run(tmp_path, small_corpus_dir):
    from agent.settings import RunSettings
    from sandbox.workspace import Workspace

    settings = RunSettings(
        run_id="k2",
        goal=GOAL.text,
        runs_dir=str(tmp_path),
        corpus=str(small_corpus_dir),
        planner=LLMSpec(provider="anthropic"),
    )
    settings.run_dir.mkdir(parents=True)
    Workspace.create(settings.workspace, "k2")
    (settings.run_dir / "run.json").write_text(settings.model_dump_json())
    before = sorted(p.name for p in settings.run_dir.iterdir())
    result = runner.invoke(app, ["resume", "k2", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "ANTHROPIC_API_KEY is not set" in result.output, result.output
    assert sorted(p.name for p in settings.run_dir.iterdir()) == before


def test_run_stops_at_the_spend_cap(tmp_path, small_corpus_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with ScriptedLLMServer(
        lambda path, body: openai_tool(
            body["tools"][0]["function"]["name"],
            train_plan()
            if body["tools"][0]["function"]["name"] == "submit_plan"
            else {"decision": "keep", "reason": "ok"},
        )
    ) as srv:
        result = runner.invoke(
            app,
            _cli(
                tmp_path,
                small_corpus_dir,
                "c1",
                "--planner",
                "openai",
                "--base-url",
                srv.openai_url,
                "--max-cost",
                "0.002",
                "--max-experiments",
                "5",
            ),
        )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c1" / "summary.json").read_text())
    assert summary["experiments"] == 1 and summary["llm_cost_usd"] >= 0.002
    assert "LLM spend cap of $0.002 reached" in (tmp_path / "c1" / "report.md").read_text()
