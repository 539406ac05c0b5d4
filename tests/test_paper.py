"""``autonas paper``: every number in the paper is one of the run's, LLM prose cannot add numbers or citations,
and bad run folders end in one line with the run left as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.llm import ToolReply, Usage
from agent.paper.content import number_book
from agent.paper.facts import read_run
from agent.paper.latex import bibliography_keys
from agent.paper.numbers import NumberBook, invented_numbers
from agent.paper.prose import check_draft, draft_section
from agent.results import RESULT_COLUMNS
from agent.settings import RunSettings
from tests.llm_server import Reply, ScriptedLLMServer, anthropic_tool, openai_tool

ARCH_A = "L4 d128 h4/4MHA ff512 swiglu rmsnorm rope V256 ctx256 tied"
ARCH_B = "L4 d128 h4/4MHA ff768 swiglu rmsnorm rope V256 ctx256 tied"
ROWS = [
    # id, kind, decision, val_bpb, int8 bytes, ms, delta, noise, noise source, arch, tokens
    ("e001", "train", "keep", 3.4567, 1113600, 2.31, "", 0.002, "floor", ARCH_A, 250000),
    ("e002", "train", "repeat", 3.4612, 1113600, 2.29, "", 0.0041, "repeats", ARCH_A, 250000),
    ("e003", "train", "keep", 3.3012, 1637888, 2.87, -0.1555, 0.0041, "repeats", ARCH_B, 250000),
    ("e004", "distill", "discard", 3.3101, 1637888, 2.85, 0.0089, 0.0041, "repeats", ARCH_B, 250000),
    ("e005", "compress", "keep", 3.3188, 650000, 1.75, "", 0.0041, "repeats", "", None),
]


def _git(ws: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True, env=env).stdout


def make_run(root: Path, finished: bool = True, rows: list[tuple] = ROWS) -> Path:
    run = root / "runs" / "r1"
    ws = run / "workspace"
    ws.mkdir(parents=True)
    settings = RunSettings(run_id="r1", goal="find the best Python code model under 2 MB", runs_dir=str(root / "runs"))
    (run / "run.json").write_text(settings.model_dump_json())
    _git(ws, "init", "-q")
    table = []
    for exp, kind, decision, bpb, size, ms, delta, noise, source, arch, tokens in rows:
        metrics = {"status": "ok", "kind": kind, "val_bpb": bpb, "size_bytes_int8": size, "device": "cpu"}
        if tokens:
            metrics["tokens_trained"] = tokens
        if kind == "compress":
            metrics.update(val_bpb_before=3.3012, val_bpb_change_pct=0.53, prune="wanda:0.5", int8=True)
        (ws / "runs" / exp).mkdir(parents=True)
        (ws / "runs" / exp / "metrics.json").write_text(json.dumps(metrics))
        commit = ""
        if decision == "keep":
            (ws / f"{exp}.txt").write_text(exp)
            _git(ws, "add", "-A")
            _git(ws, "commit", "-q", "-m", f"{exp}\n\nval-bpb: {bpb}\nseed: 0\ncorpus: abc123def456")
            commit = _git(ws, "rev-parse", "HEAD").strip()[:10]
        table.append(
            {
                "experiment": exp,
                "commit": commit,
                "kind": kind,
                "decision": decision,
                "val_bpb": bpb,
                "size_bytes_int8": size,
                "latency_ms_p50": ms,
                "delta_bpb": delta,
                "noise_bpb": noise,
                "noise_source": source,
                "seed": 0,
                "arch": arch,
                "rationale": "r",
                "reason": "because",
                "planner": "offline",
            }
        )
    with open(ws / "results.tsv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, delimiter="\t")
        w.writeheader()
        w.writerows(table)
    if finished:
        (run / "summary.json").write_text(json.dumps({"elapsed_s": 3600.0, "heldout_bpb": 3.3456}))
    return run


def _tree_digest(folder: Path, skip: str = "paper") -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and skip not in p.relative_to(folder).parts:
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_offline_paper_holds_only_the_runs_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    before = _tree_digest(run)
    result = CliRunner().invoke(app, ["paper", "r1", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert _tree_digest(run) == before  # nothing of the run changed
    tex = (run / "paper" / "paper.tex").read_text()
    for text in ("3.3012", "-0.1555", "3.3456", "0.1555", "1.64", "2.87", "0.0041", "wanda:0.5", "+0.53"):
        assert text in tex, text
    assert "e003 & train & 3.3012 & -0.1555 & 0.0041 & 1.64 & 2.87 & 250,000" in tex
    assert "ff512 to ff768" in tex  # the one-gene ablation pair (e001 vs e003)
    assert "autonas reproduce r1 e003" in tex
    assert (run / "paper" / "references.bib").is_file() and (run / "paper" / "pareto.pdf").is_file()
    if shutil.which("latexmk"):
        assert (run / "paper" / "paper.pdf").read_bytes()[:5] == b"%PDF-"
    # every number the prose shows is in the book of the run's numbers
    book = number_book(read_run(run))
    paragraphs = [
        line for line in tex.splitlines() if line and not line.startswith("\\") and " & " not in line
    ]  # the abstract's and the sections' prose lines (commands and table rows start otherwise)
    assert len(paragraphs) >= 5
    assert not invented_numbers("\n".join(paragraphs), book)


def test_a_run_still_going_says_so_and_a_run_without_kept_models_still_writes(tmp_path: Path) -> None:
    run = make_run(tmp_path, finished=False)
    result = CliRunner().invoke(app, ["paper", str(run), "--out", str(tmp_path / "p1")])
    assert result.exit_code == 0 and "still going" in result.output
    assert "This is a draft: the run was still going" in (tmp_path / "p1" / "paper.tex").read_text()
    none_kept = make_run(tmp_path / "b", rows=[r[:2] + ("discard",) + r[3:] for r in ROWS[:2]])
    result = CliRunner().invoke(app, ["paper", str(none_kept), "--out", str(tmp_path / "p2")])
    assert result.exit_code == 0, result.output
    assert "No experiment was kept" in (tmp_path / "p2" / "paper.tex").read_text()


def test_a_half_written_results_line_is_left_out(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with open(run / "workspace" / "results.tsv", "a") as fh:
        fh.write("e006\t\ttrain\tke")
    assert [e.id for e in read_run(run).experiments] == ["e001", "e002", "e003", "e004", "e005"]


@pytest.mark.parametrize("damage", ["no_results", "no_run_json", "bad_run_json", "old_columns", "not_a_run"])
def test_bad_run_folders_end_in_one_line_and_change_nothing(tmp_path: Path, damage: str) -> None:
    run = make_run(tmp_path)
    if damage == "no_results":
        (run / "workspace" / "results.tsv").unlink()
    elif damage == "no_run_json":
        (run / "run.json").unlink()
    elif damage == "bad_run_json":
        (run / "run.json").write_text("{not json")
    elif damage == "old_columns":
        (run / "workspace" / "results.tsv").write_text("exp\tbpb\ne001\t3.4\n")
    before = _tree_digest(run)
    target = "../../etc" if damage == "not_a_run" else "r1"
    result = CliRunner().invoke(app, ["paper", target, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "error:" in result.output, result.output
    assert _tree_digest(run) == before and not (run / "paper").exists()


def test_without_tex_the_tex_is_written_and_the_fix_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.paper.latex as latex

    monkeypatch.setattr(latex.shutil, "which", lambda name: None)
    run = make_run(tmp_path)
    result = CliRunner().invoke(app, ["paper", str(run)])
    assert result.exit_code == 0 and "apt-get install -y latexmk" in result.output
    assert (run / "paper" / "paper.tex").is_file() and not (run / "paper" / "paper.pdf").exists()


class FakeLLM:
    """Answers every section with a fixed text, as a real provider's tool call would."""

    def __init__(self, text: str):
        self.text, self.calls = text, 0

    def call_tool(self, system: str, user: str, tool_name: str, description: str, schema: dict) -> ToolReply:
        self.calls += 1
        assert "never write a digit" in system and "Draft:" in user
        return ToolReply(data={"text": self.text}, text="", usage=Usage(), model="fake")


def test_llm_prose_with_an_invented_number_or_citation_is_refused() -> None:
    book = NumberBook()
    book.add("best_val_bpb", 3.3012, "{:.4f}")
    keys = bibliography_keys()
    offline = "The best model reaches {{best_val_bpb}} bits per byte."
    good = draft_section(
        FakeLLM("Our best model attains {{best_val_bpb}} bpb [@deb2002nsga2]."), "R", offline, book, keys
    )  # type: ignore[arg-type]
    assert good.by_llm and "{{best_val_bpb}}" in good.text
    for bad, why in [
        ("Our best model attains 3.2 bpb.", "numbers not in the run: 3.2"),
        ("It improves by 12% over {{best_val_bpb}}.", "numbers not in the run: 12%"),
        ("As shown by [@vaswani2017attention], {{best_val_bpb}}.", "citations outside the bibliography"),
        ("It reaches {{made_up}}.", "unknown placeholders"),
    ]:
        d = draft_section(FakeLLM(bad), "R", offline, book, keys)  # type: ignore[arg-type]
        assert not d.by_llm and d.text == offline and why in d.note, (bad, d.note)
    assert check_draft("pass@1 of {{best_val_bpb}} with 2:4 sparsity in INT8", book, keys) == ""
    assert check_draft("the value 3.3012 itself", book, keys) == ""  # the run's own number, written out


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_paper_with_a_real_llm_peer_keeps_numbers_from_the_run(tmp_path: Path, provider: str) -> None:
    """The real SDK against a local server: a section with a made-up number is refused, the others are used."""
    texts = iter(
        [
            "In a search over {{space_size}} configurations the agent kept {{n_kept}} models; we made up 99.9 here.",
            "The agent kept {{n_kept}} of {{n_experiments}} experiments [@real2019regularized].",
        ]
    )

    def answer(path: str, body: dict) -> Reply:
        text = next(texts, "The run is described by its tables.")
        return (
            anthropic_tool("section_text", {"text": text})
            if provider == "anthropic"
            else openai_tool("section_text", {"text": text})
        )

    run = make_run(tmp_path)
    with ScriptedLLMServer(answer) as srv:
        url = srv.anthropic_url if provider == "anthropic" else srv.openai_url
        result = CliRunner().invoke(app, ["paper", str(run), "--llm", provider, "--base-url", url])
    assert result.exit_code == 0, result.output
    assert len(srv.requests) >= 5
    assert "LLM draft refused (numbers not in the run: 99.9)" in result.output
    tex = (run / "paper" / "paper.tex").read_text()
    assert "99.9" not in tex and "The agent kept 3 of 5 experiments \\citep{real2019regularized}." in tex
    assert "written by the LLM" in (run / "paper" / "paper_log.txt").read_text()
