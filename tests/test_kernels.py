"""Compression: INT8 storage and runtimes, pruning methods, recovery that keeps sparsity, CLI errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from harness.data import CorpusSpec, prepare_corpus
from harness.errors import UserError
from kernels.compress import CompressConfig, compress, load_run
from kernels.latency import cpu_threads
from kernels.prune import PruneSpec, input_norms, prunable_linears, prune_ffn_channels, prune_unstructured
from kernels.quant import dequantize, for_runtime, load_int8, quantize_per_channel, save_int8
from nas.model import build_model
from nas.space import ArchConfig

SWIGLU = ArchConfig(
    n_layers=2,
    d_model=64,
    n_heads=2,
    n_kv_heads=1,
    d_ff=128,
    context_length=64,
    activation="swiglu",
    norm="rmsnorm",
    tie_embeddings=False,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Each test on one thread, as tests/test_runtimes.py's fixtures: the models are tiny, and on the shared 2-core
    test machine under load two threads made training and compression 7-20x slower. No assertion is about speed."""
    with cpu_threads(1):
        yield


def test_per_channel_int8_round_trip_is_within_half_a_step() -> None:
    w = torch.randn(16, 40) * torch.linspace(0.01, 3, 16)[:, None]  # very different row scales
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (16,)
    err = (dequantize(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize(
    "arch", [SWIGLU, ArchConfig(n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128, context_length=64)]
)
def test_int8_file_reloads_and_runs_on_cpu(tmp_path: Path, arch: ArchConfig) -> None:
    model = build_model(arch, seed=0).eval()
    stats = save_int8(model, tmp_path)
    assert stats.linear_ratio <= 0.27
    stored = load_file(str(tmp_path / "model_int8.safetensors"))
    assert all(v.dtype == torch.int8 for k, v in stored.items() if k.endswith(".qweight"))
    ref = load_int8(tmp_path)
    x = torch.randint(0, arch.vocab_size, (2, 24))
    with torch.no_grad():
        a, b, c = model(x), ref(x), for_runtime(ref, "cpu")(x)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert (b - c).abs().max() < 0.1 * b.abs().max()
    assert any("quantized" in type(m).__module__ for m in for_runtime(ref, "cpu").modules())
    with pytest.raises(UserError, match="needs a GPU"):
        if not torch.cuda.is_available():
            for_runtime(ref, "cuda")
        else:
            raise UserError("needs a GPU")


def test_unstructured_pruning_hits_the_target_and_wanda_prunes_per_row(small_corpus_dir: Path) -> None:
    corpus = prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")
    model = build_model(SWIGLU, seed=0)
    assert prune_unstructured(model, "magnitude", 0.4) == pytest.approx(0.4, abs=0.01)
    model = build_model(SWIGLU, seed=0)
    norms = input_norms(model, corpus["train"], batches=2, batch_size=2)
    assert set(norms) == set(prunable_linears(model))
    assert prune_unstructured(model, "wanda", 0.5, norms) == pytest.approx(0.5, abs=1e-6)
    for lin in prunable_linears(model).values():
        assert bool(((lin.weight == 0).sum(1) == lin.weight.shape[1] // 2).all())
    assert not bool((model.lm_head.weight == 0).any())  # the head is never pruned


def test_ffn_channel_pruning_shrinks_the_model_and_keeping_all_changes_nothing() -> None:
    model = build_model(SWIGLU, seed=0).eval()
    x = torch.randint(0, 256, (1, 16))
    same = prune_ffn_channels(model, 0.001)  # rounds to keeping every channel
    assert same.arch.d_ff == 128
    with torch.no_grad():
        assert torch.allclose(same(x), model(x), atol=1e-6)
    half = prune_ffn_channels(model, 0.5)
    assert half.arch.d_ff == 64 and sum(p.numel() for p in half.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    with torch.no_grad():
        assert half(x).shape == model(x).shape
    assert PruneSpec.parse("ffn:0.5") == PruneSpec("ffn", 0.5) and PruneSpec.parse("2:4").sparsity == 0.5
    for bad in ("wanda:1.5", "wanda:0", "lottery:0.5", "wanda:x"):
        with pytest.raises(UserError):
            PruneSpec.parse(bad)


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())).hexdigest()


def test_compress_prunes_recovers_keeping_zeros_then_int8(tiny_run: Path, tmp_path: Path) -> None:
    before = _digest(tiny_run)
    cfg = CompressConfig(int8=True, prune="magnitude:0.5", recover_tokens=4000, eval_bytes=4096, measure_latency=False)
    m = compress(tiny_run, tmp_path / "c", cfg, log_to_console=False)
    assert _digest(tiny_run) == before  # the source is never written
    for key in ("val_bpb_before", "val_bpb_pruned", "val_bpb_recovered", "val_bpb_int8_weights", "val_bpb"):
        assert 0 < m[key] < 20
    assert m["prune_sparsity"] == pytest.approx(0.5, abs=0.01)
    stored = load_file(str(tmp_path / "c" / "model_int8.safetensors"))
    q = [v for k, v in stored.items() if k.endswith(".qweight")]
    scales = [v for k, v in stored.items() if k.endswith(".scale")]
    assert m["int8_linear_ratio"] == pytest.approx(
        (sum(t.numel() for t in q) + 4 * sum(t.numel() for t in scales)) / (4 * sum(t.numel() for t in q)), abs=1e-4
    )
    assert m["size_bytes_on_disk_int8"] < m["size_bytes_on_disk_fp32"] - 0.7 * m["int8_linear_bytes_fp32"]
    recovered, _, _ = load_run(tmp_path / "c")
    zeros = [float((lin.weight == 0).float().mean()) for lin in prunable_linears(recovered).values()]
    assert min(zeros) > 0.45  # the fine-tune kept the pruned weights at zero
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert saved["val_bpb"] == m["val_bpb"] and (tmp_path / "c" / "model_int8.safetensors").is_file()


def test_compress_cli_bad_input(tiny_run: Path, tmp_path: Path) -> None:
    from agent.cli import app

    runner = CliRunner()
    cases = [
        (["--model", str(tmp_path / "missing"), "--int8"], "does not exist"),
        (["--model", str(tiny_run), "--prune", "wanda:1.5"], "sparsity must be in (0, 1)"),
        (["--model", str(tiny_run)], "nothing to do"),
        (["--model", str(tiny_run), "--recover", "10s", "--int8"], "give --prune too"),
        (["--model", str(tiny_run), "--int8", "--out", str(tiny_run)], "--out must differ"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", str(tiny_run), "--prune", "2:4"], "only on a CUDA GPU"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "arch.json").write_text((tiny_run / "arch.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    cases.append((["--model", str(corrupt), "--int8"], "corrupt"))
    before = _digest(tiny_run)
    for args, message in cases:
        res = runner.invoke(app, ["compress", *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert _digest(tiny_run) == before


@pytest.mark.parametrize(
    "arch",
    [
        SWIGLU,  # RMSNorm, SwiGLU, RoPE, grouped-query attention
        ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, pos="learned", context_length=64),
    ],
)
def test_onnx_decode_step_matches_pytorch_token_by_token(tmp_path: Path, arch: ArchConfig) -> None:
    import numpy as np

    from kernels.onnx_export import OnnxDecoder, export_decode_step, quantize_onnx_int8, torch_nll_nats

    model = build_model(arch, seed=0).eval()
    path = export_decode_step(model, tmp_path)
    tokens = np.random.default_rng(0).integers(1, 255, arch.context_length)
    ref = torch_nll_nats(model, tokens)
    assert np.allclose(OnnxDecoder(path, model).nll_nats(tokens), ref, atol=1e-4)  # cache carried across 63 steps
    int8 = OnnxDecoder(quantize_onnx_int8(path), model).nll_nats(tokens)
    assert abs(int8.mean() - ref.mean()) < 0.05 * ref.mean()
    assert (tmp_path / "decode_step_int8.onnx").stat().st_size < (tmp_path / "decode_step.onnx").stat().st_size


def test_compress_with_onnx_checks_the_graph(tiny_run: Path, tmp_path: Path) -> None:
    m = compress(
        tiny_run,
        tmp_path / "o",
        CompressConfig(int8=True, onnx=True, eval_bytes=4096, measure_latency=False),
        log_to_console=False,
    )
    assert m["onnx_check_bpb_onnx"] == pytest.approx(m["onnx_check_bpb_torch"], rel=1e-5)
    assert m["onnx_check_bpb_onnx_int8"] == pytest.approx(m["onnx_check_bpb_torch"], rel=0.05)
    assert (tmp_path / "o" / "decode_step.onnx").is_file() and m["size_bytes_on_disk_onnx_int8"] < m[
        "size_bytes_on_disk_onnx"
    ]


def test_recovery_can_distil_from_the_unpruned_model(tiny_run: Path, tmp_path: Path) -> None:
    from kernels.compress import distill_loss_from
    from triton_ops.ops import fkl_reference

    teacher = load_run(tiny_run)[0]
    logits = torch.randn(2, 8, 256, requires_grad=True)
    inputs = torch.randint(0, 256, (2, 8))
    loss = distill_loss_from(teacher, ce_weight=0.0)(logits, inputs, inputs)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(fkl_reference(logits, teacher(inputs))), rel=1e-4)
    cfg = CompressConfig(
        prune="wanda:0.5", recover_tokens=4000, recover_distill=True, eval_bytes=4096, measure_latency=False
    )
    m = compress(tiny_run, tmp_path / "kd", cfg, log_to_console=False)
    assert m["recover_distill"] is True and 0 < m["val_bpb_recovered"] < 20
    run = json.loads((tmp_path / "kd" / "recover" / "run.json").read_text())
    assert run["recover_distill"] is True


def test_compressed_folder_carries_a_hugging_face_export(tiny_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    m = compress(
        tiny_run,
        tmp_path / "h",
        CompressConfig(int8=True, prune="ffn:0.5", eval_bytes=4096, measure_latency=False),
        log_to_console=False,
    )
    assert m["hf_export"] == "hf"
    ours, _, _ = load_run(tmp_path / "h")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "h" / "hf").eval()
    assert hf.config.intermediate_size == ours.arch.d_ff < json.loads((tiny_run / "arch.json").read_text())["d_ff"]
    ids = torch.randint(0, ours.arch.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours.eval()(ids), atol=1e-4, rtol=1e-4)


def test_cpu_deployment_is_the_fastest_runtime_that_scores_like_pytorch() -> None:
    from kernels.compress import choose_cpu_deployment
    from kernels.runtimes import RuntimeFigures

    def fig(name: str, ms: float, bpb: float) -> RuntimeFigures:
        return RuntimeFigures(name=name, threads=1, ms_p50=ms, ms_p90=ms, check_bpb=bpb)

    figures = [fig("torch_fp32", 9.0, 2.0), fig("torch_int8", 6.4, 2.0), fig("onnx_fp32", 7.2, 2.0)]
    chosen = choose_cpu_deployment([*figures, fig("onnx_int8", 3.0, 2.01)])
    assert (chosen["deploy_cpu_runtime"], chosen["latency_ms_p50_deploy_cpu"]) == ("onnx_int8", 3.0)
    drifted = choose_cpu_deployment([*figures, fig("onnx_int8", 3.0, 2.1)])  # 5 % off PyTorch: not eligible
    assert (drifted["deploy_cpu_runtime"], drifted["latency_ms_p50_deploy_cpu"]) == ("torch_int8", 6.4)
    assert choose_cpu_deployment(figures[:1])["deploy_cpu_runtime"] == "torch_fp32"


@pytest.mark.parametrize(
    "arch",
    [
        ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=96),
        ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96),
    ],
    ids=["mha", "gqa"],
)
def test_head_pruning_removes_heads_that_write_nothing_without_changing_the_output(
    arch: ArchConfig, tmp_path: Path
) -> None:
    from kernels.latency import measure_decode
    from kernels.prune import prune_attention_heads
    from nas.hf import export_hf, load_hf_as_codelm

    model = build_model(arch, seed=0).eval()
    rep, hd = arch.n_heads // arch.n_kv_heads, arch.head_dim
    dead = [1] if arch.n_kv_heads == 2 else [1, 3]  # key/value groups whose query heads write nothing
    with torch.no_grad():
        for layer in model.layers:
            for g in dead:
                layer.self_attn.o_proj.weight[:, g * rep * hd : (g + 1) * rep * hd] = 0
    small = prune_attention_heads(model, 0.5)
    assert small.arch.n_kv_heads == arch.n_kv_heads // 2 and small.arch.n_heads == arch.n_heads // 2
    assert small.arch.head_size == hd and small.arch.d_model == arch.d_model
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, arch.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(ids), model(ids), atol=1e-5, rtol=1e-5)
    export_hf(small, tmp_path / "hf")  # head_dim * heads != hidden: still an exact Llama
    with torch.no_grad():
        torch.testing.assert_close(load_hf_as_codelm(tmp_path / "hf")(ids), small(ids), atol=1e-5, rtol=1e-5)
    assert measure_decode(small, "static", 4, 6, 0, 1).tokens == measure_decode(small, "eager", 4, 6, 0, 1).tokens
    with pytest.raises(UserError, match="keeps all"):
        prune_attention_heads(model, 0.01)


def test_compress_prunes_heads_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    m = compress(
        tiny_run,
        tmp_path / "hp",
        CompressConfig(int8=True, prune="heads:0.5", eval_bytes=4096, measure_latency=False),
        log_to_console=False,
    )
    small, _, _ = load_run(tmp_path / "hp")
    assert m["prune_sparsity"] == 0.5 and small.arch.head_size is not None and m["params"] < m["params_before"]
    assert 0 < m["val_bpb"] < 20 and m["hf_export"] == "hf"


def test_latency_cli_reports_modes_and_refuses_bad_input(tiny_run: Path, tmp_path: Path) -> None:
    from kernels.cli import make_app

    app = make_app()
    out = tmp_path / "lat.json"
    ok = CliRunner().invoke(
        app,
        [
            "latency",
            "--model",
            str(tiny_run),
            "--modes",
            "eager,static",
            "--threads",
            "1",
            "--decode",
            "6",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
    )
    assert ok.exit_code == 0, ok.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["eager", "static"] and rows[0]["tokens"] == rows[1]["tokens"]
    assert rows[0]["tokens_equal_eager"] is None and rows[1]["tokens_equal_eager"] == len(rows[1]["tokens"])
    n = len(rows[1]["tokens"])
    assert f"{n}/{n}" in ok.output and "differ from the eager" not in ok.output
    from kernels.bandwidth import weight_bytes_per_token

    fp32_bytes = weight_bytes_per_token(load_run(tiny_run)[0], "fp32")
    for r in rows:  # each row is set against the floor: fp32 weight bytes / the bandwidth measured at 1 thread
        assert r["weight_bytes_per_token"] == fp32_bytes and r["bandwidth_gb_per_s"] > 0
        assert r["floor_multiple"] == pytest.approx(r["decode_ms_p50"] / r["floor_ms"])
    assert "copy bandwidth" in ok.output and "x floor" in ok.output
    for args, message in (
        (["--modes", "warp"], "--modes 'warp'"),
        (["--threads", "two"], "--threads 'two'"),
        (["--modes", "cuda-graph"], "cuda-graph latency needs"),
    ):
        bad = CliRunner().invoke(app, ["latency", "--model", str(tiny_run), *args])
        assert bad.exit_code == 2 and message in bad.output
    missing = CliRunner().invoke(app, ["latency", "--model", str(tmp_path / "nope")])
    assert missing.exit_code == 2
