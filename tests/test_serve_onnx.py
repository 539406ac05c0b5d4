"""Serving through ONNX Runtime: the batched decode graph against PyTorch, the engine on it, and the runtime choice.

Tiny random-weight models (what is checked is the decoding, not what the model learned): greedy tokens of the
batched fp32 graph must be PyTorch's own, with sequences of different lengths decoding together, joining and leaving;
the INT8 twin must score within the bpb tolerance ``autonas compress`` uses to choose a runtime.
"""

from __future__ import annotations

import json
import math
import queue
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from typer.testing import CliRunner

from agent.cli import app as autonas_app
from harness.tokenizer import ByteTokenizer
from kernels.compress import CompressConfig
from kernels.onnx_batched import BatchedOnnxDecoder, export_batched
from kernels.onnx_export import torch_nll_nats
from nas.model import CodeLM, build_model
from nas.space import ArchConfig
from serve.app import ServeSettings
from serve.engine import Engine, EngineOptions, Request, SamplingSettings
from serve.onnx_step import OnnxSlotDecoder
from serve.registry import plan_runtime

pytest.importorskip("onnxruntime")

ARCH = ArchConfig(
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,  # grouped-query attention: two query heads per key/value head
    d_ff=128,
    activation="swiglu",
    norm="rmsnorm",
    pos="rope",
    tie_embeddings=True,
    vocab_size=256,
    context_length=64,
)
PROMPTS = [[7, 101, 32, 40], [9] * 23, [120, 5], list(range(40, 51)), [33]]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: a tiny model gains nothing from two, and on a loaded machine two run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["rope", "learned"])
def model(request: pytest.FixtureRequest) -> CodeLM:
    return build_model(ARCH.model_copy(update={"pos": request.param}), seed=5).eval()


@pytest.fixture(scope="module")
def graphs(model: CodeLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("graphs")
    export_batched(model, folder, int8=True)
    return folder


def _greedy_together(decoder: OnnxSlotDecoder, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """Greedy tokens of every prompt, all decoding in shared steps; a sequence leaves when it has its tokens and the
    next prompt takes its slot (so rows are packed and moved as the engine makes them)."""
    slots = list(range(decoder.decoder.slots))
    out: dict[int, list[int]] = {}
    live: dict[int, tuple[int, int]] = {}  # slot -> (prompt index, next position)
    waiting = list(range(len(prompts)))
    logits: dict[int, torch.Tensor] = {}
    while waiting or live:
        while waiting and len(live) < len(slots):
            i = waiting.pop(0)
            slot = next(s for s in slots if s not in live)
            logits[slot] = decoder.prefill(slot, prompts[i])
            live[slot], out[i] = (i, len(prompts[i])), []
        for slot, (i, _) in list(live.items()):
            out[i].append(int(logits[slot].argmax()))
            if len(out[i]) == lengths[i]:
                decoder.release(slot)
                del live[slot]
        if live:
            order = list(live)
            rows = decoder.step(order, [out[live[s][0]][-1] for s in order], [live[s][1] for s in order])
            for slot, row in zip(order, rows, strict=True):
                logits[slot] = row
                live[slot] = (live[slot][0], live[slot][1] + 1)
    return [out[i] for i in range(len(prompts))]


def test_batched_onnx_greedy_tokens_are_pytorchs_for_mixed_lengths_decoding_together(
    model: CodeLM, graphs: Path
) -> None:
    lengths = [12, 30, 5, 18, 25]  # different prompt and output lengths: rows join and leave mid-way
    decoder = OnnxSlotDecoder(model, slots=3, work_dir=graphs, threads=1)
    got = _greedy_together(decoder, PROMPTS, lengths)
    want = [model.generate(p, n, temperature=0.0).tokens for p, n in zip(PROMPTS, lengths, strict=True)]
    assert got == want
    assert not decoder._row  # every slot given back


def test_batched_onnx_int8_scores_within_the_runtime_tolerance(model: CodeLM, graphs: Path) -> None:
    """Teacher-forced windows of different lengths decoding in shared steps: NLL against PyTorch fp32's."""
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, size=n) for n in (64, 57, 40)]  # the shortest last: it leaves first
    dec = BatchedOnnxDecoder(graphs / "decode_batched_int8.onnx", model, slots=3, threads=1)
    nll = [
        [float(np.logaddexp.reduce(lg) - lg[w[1]])]
        for lg, w in ((dec.prefill(r, [int(w[0])]), w) for r, w in enumerate(windows))
    ]
    for pos in range(1, 63):
        live = [r for r, w in enumerate(windows) if pos < len(w) - 1]
        if len(live) < len(windows):  # a window is done: only the first rows decode on
            assert live == list(range(len(live)))
        tokens = np.array([windows[r][pos] for r in live])
        rows = dec.step(tokens, np.full(len(live), pos)).astype(np.float64)
        for r, lg in zip(live, rows, strict=True):
            nll[r].append(float(np.logaddexp.reduce(lg) - lg[windows[r][pos + 1]]))
    tolerance_pct = CompressConfig.model_fields["runtime_tolerance_pct"].default
    for r, w in enumerate(windows):
        reference = float(torch_nll_nats(model, w).sum())
        assert len(nll[r]) == len(w) - 1
        assert abs(sum(nll[r]) - reference) / reference * 100 <= tolerance_pct
        assert sum(nll[r]) != reference  # really the 8-bit graph, not the fp32 one


def _tokens(request: Request) -> tuple[list[int], str]:
    out = []
    while True:
        event = request.events.get(timeout=60)
        if event.token is None:
            return out, str(event.finish_reason)
        out.append(event.token)


def test_the_engine_serving_through_onnx_gives_the_models_own_generate_text(model: CodeLM, graphs: Path) -> None:
    tok = ByteTokenizer()
    engine = Engine(
        model,
        tok,
        EngineOptions(max_batch=3),
        lambda slots: OnnxSlotDecoder(model, slots, graphs, threads=1),
    )
    try:
        assert engine.runtime == "onnx_fp32"
        lengths = [20, 90, 6, 33, 15]  # 90 runs past the 64-token context: the window slides as generate() does
        requests = [
            engine.submit(p, SamplingSettings(max_tokens=n, temperature=0.0))
            for p, n in zip(PROMPTS, lengths, strict=True)
        ]
        seeded = engine.submit(PROMPTS[0], SamplingSettings(max_tokens=12, temperature=0.9, top_p=0.9, seed=4))
        for request, prompt, n in zip(requests, PROMPTS, lengths, strict=True):
            got, finish = _tokens(request)
            want = model.generate(prompt, n, temperature=0.0, eos_id=tok.eos_id).tokens
            assert got == want and finish == ("length" if len(want) == n else "stop")
        sampled, _ = _tokens(seeded)
        generator = torch.Generator().manual_seed(4)
        want = model.generate(PROMPTS[0], 12, temperature=0.9, top_p=0.9, eos_id=tok.eos_id, generator=generator)
        assert sampled == want.tokens
        assert engine.stats.max_batch_seen == 3
    finally:
        engine.close()
    with pytest.raises(queue.Empty):  # nothing more arrives after the final event
        requests[0].events.get_nowait()


def _folder(root: Path, name: str, deploy: str | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    save_model(build_model(ARCH, seed=2), str(folder / "model.safetensors"))
    (folder / "arch.json").write_text(ARCH.model_dump_json())
    if deploy is not None:
        (folder / "metrics.json").write_text(json.dumps({"deploy_cpu_runtime": deploy, "val_bpb": 5.0}))
    return folder


def test_the_runtime_is_the_folders_measured_choice_when_it_batches_and_v1_models_says_which(tmp_path: Path) -> None:
    from tests.test_serve import Server

    named = {
        "int8": _folder(tmp_path, "int8", "onnx_int8"),
        "ct2": _folder(tmp_path, "ct2", "ct2_int8"),  # not a runtime the engine batches: PyTorch
        "plain": _folder(tmp_path, "plain", None),
    }
    assert [plan_runtime(named[n]) for n in named] == ["onnx_int8", "torch_fp32", "torch_fp32"]
    assert (
        plan_runtime(named["plain"], "onnx-int8") == "onnx_int8"
        and plan_runtime(named["int8"], "torch") == "torch_fp32"
    )
    with Server(ServeSettings(runs_dir=None, models=named)) as s:
        with httpx.Client(base_url=s.url, timeout=60) as h:
            listed = {m["id"]: m["runtime"] for m in h.get("/models").json()["data"]}
            assert listed == {"int8": "onnx_int8", "ct2": "torch_fp32", "plain": "torch_fp32"}
            body = {"model": "int8", "prompt": "def f(x):", "max_tokens": 8, "temperature": 0}
            text = h.post("/completions", json=body).json()["choices"][0]["text"]
        assert s.engine("int8").runtime == "onnx_int8" and len(text) > 0
        assert {m["runtime"] for m in s.client().models.list().model_dump()["data"] if m["id"] == "int8"} == {
            "onnx_int8"
        }


def test_a_bad_runtime_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        autonas_app, ["serve", "--model", str(_folder(tmp_path, "m", None)), "--runtime", "fast"]
    )
    assert result.exit_code == 2
    assert "--runtime 'fast'" in result.output and "onnx-int8" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(Exception, match="--runtime"):
        plan_runtime(tmp_path / "m", "fast")


def test_every_slot_decodes_in_a_step_or_the_onnx_step_refuses(model: CodeLM, graphs: Path) -> None:
    decoder = OnnxSlotDecoder(model, slots=2, work_dir=graphs, threads=1)
    decoder.prefill(0, [1, 2, 3])
    decoder.prefill(1, [4, 5])
    with pytest.raises(ValueError, match="every live slot"):
        decoder.step([1], [6], [2])
    assert math.isfinite(float(decoder.step([1, 0], [6, 7], [2, 3]).sum()))


def _samples(out: Path) -> list[tuple[str, str]]:
    rows = map(json.loads, (out / "samples.jsonl").read_text().splitlines())
    return [(r["task_id"], r["completion"]) for r in rows]


def test_humaneval_of_a_served_onnx_int8_folder_equals_scoring_the_folder_with_onnx_int8(tmp_path: Path) -> None:
    """`--model openai:NAME --base-url` against `autonas serve` and `--model FOLDER --runtime onnx-int8` in process:
    the same samples, the same pass@1, and both say the int8 graph decoded them; the default stays PyTorch fp32."""
    from tests.test_serve import Server

    folder = _folder(tmp_path, "int8", "onnx_int8")
    cli = CliRunner()
    common = ["eval", "humaneval", "--limit", "4", "--max-new-tokens", "40", "--workers", "2"]
    with Server(ServeSettings(runs_dir=None, models={"int8": folder})) as s:
        served = cli.invoke(
            autonas_app, [*common, "--model", "openai:int8", "--base-url", s.url, "--out", str(tmp_path / "served")]
        )
        assert served.exit_code == 0, served.output
    direct = cli.invoke(
        autonas_app, [*common, "--model", str(folder), "--runtime", "onnx-int8", "--out", str(tmp_path / "direct")]
    )
    assert direct.exit_code == 0, direct.output
    assert _samples(tmp_path / "served") == _samples(tmp_path / "direct")
    assert len(_samples(tmp_path / "direct")) == 4 and any(text for _, text in _samples(tmp_path / "direct"))
    served_m = json.loads((tmp_path / "served" / "metrics.json").read_text())
    direct_m = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    for key in ("humaneval_pass_at_1", "humaneval_passed", "humaneval_samples", "humaneval_problems"):
        assert served_m[key] == direct_m[key]
    assert served_m["humaneval_runtime"] == direct_m["humaneval_runtime"] == "onnx_int8"
    assert direct_m["humaneval_model"] == "autonas:int8" and served_m["humaneval_model"].startswith("openai:int8@")
    assert sorted(p.name for p in folder.iterdir()) == ["arch.json", "metrics.json", "model.safetensors"]  # unwritten

    auto = cli.invoke(  # auto: what the server picked, the folder's measured onnx_int8
        autonas_app,
        [*common, "--model", str(folder), "--runtime", "auto", "--generate-only", "--out", str(tmp_path / "a")],
    )
    assert auto.exit_code == 0, auto.output
    assert _samples(tmp_path / "a") == _samples(tmp_path / "direct")
    assert json.loads((tmp_path / "a" / "generation.json").read_text())["humaneval_runtime"] == "onnx_int8"
    plain = cli.invoke(  # no --runtime: PyTorch fp32 as before, and generation.json says so
        autonas_app, [*common, "--model", str(folder), "--generate-only", "--out", str(tmp_path / "plain")]
    )
    assert plain.exit_code == 0, plain.output
    assert json.loads((tmp_path / "plain" / "generation.json").read_text())["humaneval_runtime"] == "torch_fp32"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--runtime", "fast"], "--runtime 'fast': use one of auto, torch, onnx, onnx-int8"),
        (["--runtime", "onnx-int8", "--model", "openai:int8", "--base-url", "http://127.0.0.1:9/v1"], "run folder"),
        (["--runtime", "auto", "--device", "cuda"], "decodes on the CPU"),
    ],
)
def test_runtime_options_are_checked_before_anything_runs(tmp_path: Path, args: list[str], said: str) -> None:
    folder = _folder(tmp_path, "m", "onnx_int8")
    model = [] if "--model" in args else ["--model", str(folder)]
    out = tmp_path / "out"
    result = CliRunner().invoke(autonas_app, ["eval", "humaneval", *model, *args, "--limit", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert said in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["arch.json", "metrics.json", "model.safetensors"]


def test_the_distill_worker_alone_scores_folders_with_torch_only(tmp_path: Path) -> None:
    """`python -m distill` has no server engine (distill may not import serve): another runtime is one line, exit 2."""
    import subprocess
    import sys

    folder = _folder(tmp_path, "m", "onnx_int8")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "distill", "eval", "humaneval", "--model", str(folder), "--runtime", "onnx-int8"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    said = (done.stdout + done.stderr).strip()
    assert "torch only" in said and len(said.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("runtime", ["onnx-int8", "auto"])
def test_a_folder_carrying_other_model_code_is_refused_by_the_engine_runtimes_never_run(
    tmp_path: Path, runtime: str
) -> None:
    """The server's engine runs the installed model code only (the server refuses a folder whose carried code
    differs): ``--runtime`` other than torch refuses it too, in one line, and never imports that code (no re-start on
    it), while a folder's edited code may be hostile. Here its nas/model.py leaves a file behind when imported."""
    import subprocess
    import sys

    from harness.model_code import installed_package_dir, write_code_record

    marker = tmp_path / "imported"
    edited = tmp_path / "edited"
    (edited / "nas").mkdir(parents=True)
    stock = (installed_package_dir() / "model.py").read_text()
    future = "from __future__ import annotations\n"
    assert future in stock
    (edited / "nas" / "model.py").write_text(
        stock.replace(future, f"{future}open({str(marker)!r}, 'w').write('ran')\n")
    )
    folder = _folder(tmp_path, "m", "onnx_int8")
    write_code_record(folder, edited)  # as a run that edited nas/model.py leaves its model
    out = tmp_path / "out"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "autonas"), "eval", "humaneval", "--model", str(folder)]
        + ["--runtime", runtime, "--limit", "1", "--max-new-tokens", "4", "--generate-only", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = (done.stdout + done.stderr).strip()
    assert not marker.exists()  # the carried code was never imported (before: re-started on it, and scored)
    assert done.returncode != 0, said
    assert "other model code" in said and "--runtime torch" in said and len(said.splitlines()) == 1
    assert not (out / "samples.jsonl").exists()


def test_a_fifo_or_a_link_as_the_folders_metrics_never_blocks_the_runtime_choice(tmp_path: Path) -> None:
    """A model folder's metrics.json is written by the run (edited code): a FIFO there blocked ``plan_runtime``,
    so /v1/models and ``eval humaneval --runtime auto`` hung; now it is not read (PyTorch fp32), nor is a link."""
    import os
    import threading

    folder = _folder(tmp_path, "m", None)
    os.mkfifo(folder / "metrics.json")
    linked = _folder(tmp_path, "linked", None)
    (tmp_path / "elsewhere.json").write_text(json.dumps({"deploy_cpu_runtime": "onnx_int8"}))
    (linked / "metrics.json").symlink_to(tmp_path / "elsewhere.json")
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.extend([plan_runtime(folder), plan_runtime(linked)]), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():
        os.close(os.open(folder / "metrics.json", os.O_WRONLY | os.O_NONBLOCK))  # let the blocked reader end
        worker.join(30)
        pytest.fail("plan_runtime waited on a FIFO metrics.json")
    assert got == ["torch_fp32", "torch_fp32"]
