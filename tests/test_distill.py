"""Distillation end to end: a local Hugging Face teacher, one of our runs as teacher, API teachers against a
local server, and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill.api_teacher import (
    APITeacher,
    APITeacherSpec,
    CodePrompt,
    generate_teacher_data,
    prompts_from_corpus,
    read_generations,
)
from distill.losses import KDLossConfig
from distill.teachers import CodeLMTeacher, HFTeacher, load_teacher
from distill.train import distill, reconcile_student, sequence_distill
from harness.data import CorpusSpec
from harness.errors import UserError
from nas.space import ArchConfig
from nas.train import TrainConfig
from tests.conftest import TINY_ARCH
from tests.llm_server import Reply, ScriptedLLMServer, anthropic_text, error

CFG = TrainConfig(budget_tokens=6_000, batch_size=4, eval_bytes=4096, measure_latency=False, device="cpu")


@pytest.fixture(scope="module")
def hf_teacher_dir(small_corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama made with transformers and saved with save_pretrained, with its own BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from harness.tokenizer import EOS_TOKEN, train_bpe

    texts = [p.read_text() for p in sorted(small_corpus_dir.rglob("*.py"))]
    bpe = train_bpe(texts, 320)
    out = tmp_path_factory.mktemp("hf-teacher")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=bpe.eos_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_hf_teacher_logits_and_vocab_rules(hf_teacher_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = load_teacher(str(hf_teacher_dir))
    assert isinstance(teacher, HFTeacher) and teacher.vocab_size == 320
    ids = torch.randint(0, 320, (2, 16))
    ref = AutoModelForCausalLM.from_pretrained(hf_teacher_dir).eval()(input_ids=ids).logits
    assert torch.allclose(teacher.logits(ids), ref, atol=1e-5)
    byte_student = ArchConfig(**TINY_ARCH)
    with pytest.raises(UserError, match="--adopt-teacher-vocab"):
        reconcile_student(byte_student, teacher, adopt_teacher_vocab=False)
    with pytest.raises(UserError, match="tokenizer differs"):
        reconcile_student(
            byte_student.model_copy(update={"vocab_size": 320}), teacher, False, student_tokenizer_fingerprint="byte"
        )
    adopted = reconcile_student(byte_student, teacher, adopt_teacher_vocab=True)
    assert adopted.vocab_size == 320
    with pytest.raises(UserError, match="context"):
        reconcile_student(adopted.model_copy(update={"context_length": 256}), teacher, False)


def test_distil_from_hf_teacher_shares_its_tokenizer(
    hf_teacher_dir: Path, small_corpus_dir: Path, tmp_path: Path
) -> None:
    teacher = load_teacher(f"hf:{hf_teacher_dir}")
    student = reconcile_student(ArchConfig(**TINY_ARCH), teacher, adopt_teacher_vocab=True)
    out = tmp_path / "student"
    outcome = distill(
        teacher,
        student,
        CorpusSpec(source=str(small_corpus_dir)),
        CFG,
        KDLossConfig(kind="fkl", temperature=2.0),
        out,
        log_to_console=False,
    )
    assert outcome.status == "ok", outcome.fail_reason
    m = json.loads((out / "metrics.json").read_text())
    assert m["kd_teacher"].startswith("hf:") and m["kd_loss"] == "fkl" and m["vocab_size"] == 320
    assert 0 < m["val_bpb"] < 20 and 0 < m["kd_teacher_val_bpb"] < 20
    # the student's run folder carries the teacher's tokenizer, so it decodes with the same ids
    saved = json.loads((out / "tokenizer.json").read_text())
    teacher_tok = json.loads((hf_teacher_dir / "tokenizer.json").read_text())
    assert saved["model"]["vocab"] == teacher_tok["model"]["vocab"]


@pytest.mark.parametrize("loss,topk", [("rkl", None), ("skl", 8), ("srkl", None)])
def test_distil_from_our_trained_model(
    tiny_run: Path, small_corpus_dir: Path, tmp_path: Path, loss: str, topk: int | None
) -> None:
    teacher = load_teacher(str(tiny_run))
    assert isinstance(teacher, CodeLMTeacher)
    student = ArchConfig(**{**TINY_ARCH, "d_model": 16, "n_heads": 1, "n_kv_heads": 1, "d_ff": 32})
    out = tmp_path / "s"
    outcome = distill(
        teacher,
        reconcile_student(student, teacher, False, "byte"),
        CorpusSpec(source=str(small_corpus_dir)),
        CFG,
        KDLossConfig(kind=loss),
        out,
        topk=topk,
        log_to_console=False,
    )
    assert outcome.status == "ok"
    m = outcome.metrics
    assert m["kd_loss"] == loss and m["kd_topk"] == (topk or 0) and m["kd_last_div"] >= 0
    run = json.loads((out / "run.json").read_text())
    assert run["distill"]["loss"]["kind"] == loss and run["distill"]["topk"] == topk


def test_distill_cli_errors(tiny_run: Path, tmp_path: Path) -> None:
    from agent.cli import app

    runner = CliRunner()
    arch = tmp_path / "student.json"
    arch.write_text(json.dumps({**TINY_ARCH, "vocab_size": 512}))
    res = runner.invoke(app, ["distill", "--teacher", str(tiny_run), "--student", str(arch), "--budget", "5s"])
    assert res.exit_code == 2 and "--adopt-teacher-vocab" in res.output
    res = runner.invoke(app, ["distill", "--teacher", str(tmp_path / "nope"), "--student", str(arch)])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["distill", "--teacher", "openai:gpt-4.1", "--student", str(arch), "--loss", "fkl"])
    assert res.exit_code == 2 and "--loss seq" in res.output
    res = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            "openai:gpt-4.1",
            "--student",
            str(arch),
            "--loss",
            "seq",
            "--tokenizer",
            "bpe:512",
            "--corpus",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "OPENAI_API_KEY" in res.output
    res = runner.invoke(app, ["distill", "--teacher", str(tiny_run), "--student", str(arch), "--loss", "kl"])
    assert res.exit_code == 2 and "unknown loss" in res.output
    assert not (Path("runs").exists() and any(Path("runs").glob("distill-*")))


def _openai_with_logprobs(text: str) -> Reply:
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    content = [
        {
            "token": p,
            "logprob": -0.25,
            "bytes": list(p.encode()),
            "top_logprobs": [
                {"token": p, "logprob": -0.25, "bytes": list(p.encode())},
                {"token": "x", "logprob": -2.0, "bytes": [120]},
            ],
        }
        for p in pieces
    ]
    return Reply(
        body={
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "local-coder",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": {"content": content},
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": len(pieces), "total_tokens": 50 + len(pieces)},
        }
    )


def test_openai_teacher_writes_a_resumable_data_set_with_logprobs(tmp_path: Path) -> None:
    prompts = [CodePrompt(f"p{i}", f'def f{i}(x):\n    """Return x plus {i}."""\n') for i in range(6)]
    with ScriptedLLMServer(lambda path, body: _openai_with_logprobs("    return x + 1\n")) as srv:
        srv.script.append(error(429, "rate_limit_error"))  # retried by the SDK, honouring retry-after
        spec = APITeacherSpec(
            provider="openai", model="local-coder", base_url=srv.openai_url, top_logprobs=2, concurrency=3
        )
        teacher = APITeacher(spec, env={})
        out = tmp_path / "teacher.jsonl"
        first = generate_teacher_data(teacher, prompts[:4], out)
        assert first.written == 4 and not first.failed and first.with_logprobs == 4
        second = generate_teacher_data(teacher, prompts, out)
        assert second.written == 2 and second.skipped_cached == 4
        asked = [r["json"] for r in srv.requests]
    assert len(asked) == 7  # one 429 + six prompts, none asked twice
    assert all(b["logprobs"] is True and b["top_logprobs"] == 2 for b in asked)
    rows = list(read_generations(out))
    assert sorted(r["id"] for r in rows) == [p.id for p in prompts]
    assert rows[0]["completion"] == "    return x + 1\n"
    assert rows[0]["tokens"][0]["top"][1] == ["x", -2.0]


def test_anthropic_teacher_is_sequence_level_and_feeds_the_student(tmp_path: Path, small_corpus_dir: Path) -> None:
    prompts = prompts_from_corpus([(p.name, p.read_text()) for p in sorted(small_corpus_dir.rglob("*.py"))], 5)
    assert len(prompts) == 5 and all('"""' in p.text or "'''" in p.text for p in prompts)
    with ScriptedLLMServer(lambda path, body: anthropic_text("    return None\n")) as srv:
        teacher = APITeacher(
            APITeacherSpec(provider="anthropic", model="claude-haiku-4-5", base_url=srv.anthropic_url), env={}
        )
        rep = generate_teacher_data(teacher, prompts, tmp_path / "t.jsonl")
        assert srv.requests[0]["path"].startswith("/v1/messages")
    assert rep.written == 5 and rep.with_logprobs == 0
    outcome = sequence_distill(
        tmp_path / "t.jsonl",
        ArchConfig(**TINY_ARCH),
        CorpusSpec(source=str(small_corpus_dir)),
        "byte",
        CFG,
        tmp_path / "seq",
        mode="mix",
        log_to_console=False,
    )
    assert outcome.status == "ok" and outcome.metrics["kd_loss"] == "seq" and outcome.metrics["kd_teacher_samples"] == 5


def test_api_teacher_needs_a_key_or_a_server() -> None:
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        APITeacher(APITeacherSpec.parse("anthropic:claude-haiku-4-5"), env={})
    with pytest.raises(UserError, match="openai:<model>"):
        APITeacherSpec.parse("gemini:pro")


def test_hf_model_and_api_model_as_humaneval_sources(hf_teacher_dir: Path, tmp_path: Path) -> None:
    from agent.cli import app
    from harness.humaneval import STOP_SEQUENCES, read_problems
    from nas.hf import HFModelSource

    text = HFModelSource(str(hf_teacher_dir)).complete("def add(a, b):\n", 1, 0.0, 1.0, 8, STOP_SEQUENCES, 0)
    assert len(text) == 1 and isinstance(text[0], str)
    problems = read_problems()

    def canonical(path: str, body: dict) -> Reply:  # a perfect "teacher": answers each prompt with its solution
        prompt = body["messages"][-1]["content"]
        solution = next(p.canonical_solution for p in problems.values() if p.prompt == prompt)
        return Reply(
            body={
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": solution}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    with ScriptedLLMServer(canonical) as srv:
        res = CliRunner().invoke(
            app,
            [
                "eval",
                "humaneval",
                "--model",
                "openai:local-coder",
                "--base-url",
                srv.openai_url,
                "--limit",
                "4",
                "--out",
                str(tmp_path / "api"),
            ],
        )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "api" / "metrics.json").read_text())
    assert m["humaneval_pass_at_1"] == 1.0 and m["humaneval_model"] == "openai:local-coder"


def test_topk_logit_cache_makes_a_second_student_skip_the_teacher(
    tiny_run: Path, small_corpus_dir: Path, tmp_path: Path
) -> None:
    teacher = load_teacher(str(tiny_run))
    student = ArchConfig(**{**TINY_ARCH, "d_model": 16, "n_heads": 1, "n_kv_heads": 1, "d_ff": 32})
    spec = CorpusSpec(source=str(small_corpus_dir))
    runs = []
    for name in ("first", "second"):
        runs.append(
            distill(
                teacher,
                student,
                spec,
                CFG,
                KDLossConfig(),
                tmp_path / name,
                topk=6,
                log_to_console=False,
                eval_teacher=False,
                cache_dir=tmp_path / "cache",
            ).metrics
        )
    first, second = runs
    assert first["kd_cache_misses"] == first["steps"] and first["kd_cache_hits"] == 0
    assert second["kd_cache_hits"] == second["steps"] and second["kd_cache_misses"] == 0
    assert second["val_bpb"] == first["val_bpb"]  # the cached run is the same run
    with pytest.raises(UserError, match="--topk"):
        distill(teacher, student, spec, CFG, KDLossConfig(), tmp_path / "x", cache_dir=tmp_path / "cache")
