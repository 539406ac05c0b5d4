"""``autonas compress`` (also ``python -m kernels compress``): prune, recover, INT8, measure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from harness.cli_support import OneLineErrors, console, err_console, print_metrics, user_errors
from harness.errors import UserError
from harness.model_code import model_code_root, reexec_with_model_code, write_code_record
from harness.run_files import EVAL_BYTES, LOG_FILE, METRICS_FILE
from kernels.threads import DECODE_THREADS
from nas import validate

if TYPE_CHECKING:  # torch-importing modules stay out of the command line's import time
    from kernels.runtimes import RuntimeChoice

REPORT_KEYS = (
    "val_bpb_before",
    "val_bpb_pruned",
    "val_bpb_recovered",
    "val_bpb_int8_weights",
    "val_bpb",
    "val_bpb_change_pct",
    "prune_sparsity",
    "params_before",
    "params",
    "size_bytes_on_disk_fp32_before",
    "size_bytes_on_disk_fp32",
    "size_bytes_on_disk_int8",
    "int8_linear_ratio",
    "latency_ms_p50_before",
    "latency_ms_p50",
    "latency_speedup",
    "onnx_check_bpb_torch",
    "onnx_check_bpb_onnx",
    "onnx_check_bpb_onnx_int8",
    "size_bytes_on_disk_onnx",
    "size_bytes_on_disk_onnx_int8",
    "latency_ms_p50_onnx",
    "latency_ms_p50_onnx_int8",
    "deploy_cpu_runtime",
    "latency_ms_p50_deploy_cpu",
    "runtime_tolerance_pct",
    "hf_export",
    "wall_s",
)


RUNTIMES_OPTION = typer.Option(
    help="deployment runtimes to measure and choose from: torch, onnx, ct2 (both precisions) or torch_fp32, "
    "torch_int8, onnx_fp32, onnx_int8, ct2_fp32, ct2_int8"
)
TOLERANCE_OPTION = typer.Option(
    help="percent a runtime's check-window bpb may differ from PyTorch fp32's and still be chosen"
)


@user_errors
def compress_command(
    model: Annotated[Path, typer.Option(help="a finished run folder (arch.json + model.safetensors)")],
    out: Annotated[Path | None, typer.Option(help="output folder (default <model>-compressed)")] = None,
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="per-channel INT8 weights (+ the backend's int8 runtime)")
    ] = False,
    int8_backend: Annotated[str, typer.Option(help="cpu (dynamic int8 kernels), cuda (torchao) or reference")] = "cpu",
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx/--no-onnx", help="also export the decode step (KV cache in/out) to ONNX, run by onnxruntime"
        ),
    ] = False,
    prune: Annotated[
        str | None, typer.Option(help="magnitude:0.5, wanda:0.5, ffn:0.5 (structured) or 2:4 (GPU)")
    ] = None,
    recover: Annotated[str | None, typer.Option(help="recovery fine-tune budget after pruning: 2m, 500ktok")] = None,
    recover_lr: Annotated[float, typer.Option()] = 1e-3,
    recover_distill: Annotated[
        bool, typer.Option(help="recover with knowledge distillation from the unpruned model")
    ] = False,
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = EVAL_BYTES,
    seed: Annotated[int, typer.Option()] = 0,
    runtimes: Annotated[str | None, RUNTIMES_OPTION] = None,
    runtime_tolerance: Annotated[float, TOLERANCE_OPTION] = 1.0,
    runtime_threads: Annotated[
        int | None, typer.Option(min=1, help="threads the runtimes are timed at (default: torch's)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="write into an --out that already holds a metrics.json")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    threads: Annotated[
        int,
        typer.Option(help="CPU threads for the whole run: recovery, the latency figures, the ONNX sessions"),
    ] = DECODE_THREADS,
) -> None:
    """Compress a trained model; writes the compressed model and metrics.json (bpb, size, latency before/after)."""
    # Everything a user can get wrong is checked before torch is imported or anything is written.
    validate.input_dir(model, "--model")
    out_dir = out or model.with_name(model.name + "-compressed")
    if out_dir.expanduser().resolve() == model.expanduser().resolve():
        raise UserError("--out must differ from the source model folder (the source is never modified)")
    validate.output_dir(out_dir, "--out", overwrite=overwrite)
    recover_budget = validate.budget(recover, "--recover") if recover else None
    validate.number(recover_lr, "--recover-lr", gt=0, le=10)
    validate.seed(seed)
    validate.number(eval_bytes, "--eval-bytes", le=10**11)
    validate.number(runtime_tolerance, "--runtime-tolerance", ge=0, le=100)
    validate.number(threads, "--threads", ge=1, le=1024)
    reexec_with_model_code(model)  # compressed by the code that trained it

    # torch is imported only after the cheap checks above, and after the re-exec on the model's own code
    import torch

    from kernels.compress import CompressConfig, compress
    from kernels.prune import PruneSpec
    from kernels.runtimes import choose_runtime, figures_from_metrics, parse_runtimes

    runtime_names = parse_runtimes(runtimes) if runtimes is not None else None

    torch.set_num_threads(threads)  # read back by every timed step and by the ONNX sessions (torch.get_num_threads)

    if int8_backend not in ("cpu", "cuda", "reference"):
        raise UserError(f"unknown --int8-backend {int8_backend!r}: use cpu, cuda or reference")
    if prune:
        PruneSpec.parse(prune)
    if recover_distill and not recover:
        raise UserError("--recover-distill needs a --recover budget")
    if recover and not prune:
        raise UserError("--recover fine-tunes after pruning: give --prune too")
    cfg = CompressConfig.with_recovery(
        recover_budget,
        int8=int8,
        int8_backend=int8_backend,
        prune=prune,
        onnx=onnx,
        recover_lr=recover_lr,
        recover_distill=recover_distill,
        eval_bytes=eval_bytes,
        seed=seed,
        runtimes=runtime_names,
        runtime_tolerance_pct=runtime_tolerance,
        runtime_threads=runtime_threads,
    )
    if overwrite:  # a failure below must not leave the old figures looking new
        for name in (METRICS_FILE, LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)
    err_console.print(
        f"compressing {model} ({'prune ' + prune if prune else ''}{' + recover ' + recover if recover else ''}"
        f"{' + int8' if int8 else ''}) -> {out_dir}",
        highlight=False,
    )
    metrics = compress(model, out_dir, cfg, log_to_console=not quiet)
    write_code_record(out_dir, model_code_root())  # the compressed model carries the same code
    print_metrics(metrics, REPORT_KEYS)
    figures = figures_from_metrics(metrics)
    if figures:
        console.print(runtime_table(choose_runtime(figures, runtime_tolerance), f"deployment runtimes of {out_dir}"))


def runtime_table(choice: RuntimeChoice, title: str) -> Table:
    """One row per runtime: ms/token, check-window bpb and its change from PyTorch fp32, and which one is chosen."""
    table = Table(title=title)
    table.add_column("runtime", no_wrap=True)
    for col in ("threads", "ms/token p50", "ms/token p90", "check bpb", "change %", "chosen"):
        table.add_column(col, justify="right")
    for f in choice.figures:
        if f.skipped:
            table.add_row(f.name, "", "", "", "", "", f"skipped: {f.skipped}")
            continue
        change = f.change_pct(choice.reference_bpb) if choice.reference_bpb is not None else None
        mark = "[green]chosen[/green]" if f.name == choice.runtime else ("" if choice.eligible(f) else "[red]off[/red]")
        table.add_row(
            f.name,
            str(f.threads or ""),
            "" if f.ms_p50 is None else f"{f.ms_p50:.3f}",
            "" if f.ms_p90 is None else f"{f.ms_p90:.3f}",
            "" if f.check_bpb is None else f"{f.check_bpb:.5f}",
            "" if change is None else f"{change:+.3f}",
            mark,
        )
    return table


@user_errors
def latency_command(
    model: Annotated[Path, typer.Option(help="a run folder (arch.json + model.safetensors), compressed or not")],
    modes: Annotated[str, typer.Option(help="comma list of eager, static, compile, cuda-graph")] = "eager,static",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[
        str, typer.Option(help="CPU thread counts to compare, e.g. 1,2 (default: the measured decode default)")
    ] = str(DECODE_THREADS),
    prompt: Annotated[int, typer.Option(min=1)] = 32,
    decode: Annotated[int, typer.Option(min=2)] = 64,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    runtimes: Annotated[str | None, RUNTIMES_OPTION] = None,
    runtime_tolerance: Annotated[float, TOLERANCE_OPTION] = 1.0,
) -> None:
    """Batch-1 prefill and per-token decode latency (p50/p90) of a model, by decoding mode and thread count."""
    # Everything a user can get wrong is checked before torch is imported.
    validate.input_dir(model, "--model")
    if out is not None:
        validate.output_file(out, "--out", overwrite=overwrite)
    reexec_with_model_code(model)  # timed with the code that trained it
    counts = validate.int_list(threads, "--threads", ge=1, le=1024)
    validate.number(prompt, "--prompt", le=100_000)
    validate.number(decode, "--decode", le=100_000)
    validate.number(repeats, "--repeats", le=10_000)
    validate.number(runtime_tolerance, "--runtime-tolerance", ge=0, le=100)

    # torch is imported only after the cheap checks above, and after the re-exec on the model's own code
    import torch

    from kernels.bandwidth import floor_per_thread_count
    from kernels.compress import load_run
    from kernels.latency import MODES, measure_decode
    from kernels.runtimes import parse_runtimes

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in wanted if m not in MODES]
    if bad or not wanted:
        raise UserError(f"--modes {modes!r}: use a comma list of {', '.join(MODES)}")
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UserError(
            f"--device {device!r}: use cpu" + (" or cuda" if torch.cuda.is_available() else " (no CUDA device here)")
        )
    net, _, _ = load_run(model)
    net = net.to(device)
    results = [
        measure_decode(net, mode, prompt, decode, warmup=2, repeats=repeats, threads=n)
        for n in counts
        for mode in wanted
    ]
    rows = [r.as_dict() for r in results]
    # the physical floor: weight bytes one token reads (fp32 here: these modes run the fp32 model) / bandwidth
    floors = floor_per_thread_count(net, [r.threads for r in results], "fp32") if device == "cpu" else {}
    table = Table(title=f"decode latency of {model} ({device})")
    for col in ("mode", "threads", "prefill_ms_p50", "decode_ms_p50", "decode_ms_p90", "tokens = eager"):
        table.add_column(col, justify="right")
    if floors:
        table.add_column("x floor", justify="right")
    for r, row in zip(results, rows, strict=True):
        cells = [
            r.mode,
            str(r.threads),
            f"{r.prefill_ms_p50:.3f}",
            f"{r.decode_ms_p50:.3f}",
            f"{r.decode_ms_p90:.3f}",
            "(reference)" if r.tokens_equal_eager is None else f"{r.tokens_equal_eager}/{len(r.tokens)}",
        ]
        if floors:
            floor = floors[r.threads]
            row.update(floor.as_dict() | {"floor_multiple": r.decode_ms_p50 / floor.floor_ms})
            cells.append(f"{row['floor_multiple']:.2f}")
        table.add_row(*cells)
    console.print(table)
    for floor in floors.values():
        console.print(floor.describe(), highlight=False)
    drifted = [r.mode for r in results if not r.agrees_with_eager]
    if drifted:
        console.print(
            f"[red]{', '.join(drifted)}: greedy tokens differ from the eager forward's; those times are not "
            "the model's[/red]"
        )
    record: dict[str, object] = {"model": str(model), "device": device, "rows": rows}
    if runtimes is not None:
        if device != "cpu":
            raise UserError("--runtimes compares CPU deployment runtimes: use --device cpu")
        names = parse_runtimes(runtimes)
        choices = []
        for n in counts:
            choice = _runtime_choice(model, names, n, prompt, decode, repeats, runtime_tolerance)
            choices.append(choice.model_dump(mode="json"))
            console.print(
                runtime_table(choice, f"deployment runtimes of {model} ({n or torch.get_num_threads()} threads)")
            )
        record["runtimes"] = choices
    if out:
        try:
            out.write_text(json.dumps(record, indent=2))
        except OSError as err:
            raise UserError(f"cannot write --out {out}: {err.strerror or err}") from None


def _runtime_choice(
    model_dir: Path,
    names: tuple[str, ...],
    threads: int | None,
    prompt: int,
    decode: int,
    repeats: int,
    tolerance: float,
) -> RuntimeChoice:
    """Every runtime of ``names`` measured on the run folder's model; exports and conversions go to a scratch
    folder (the run folder is only read: ONNX graphs, ``ct2_*/`` and ``hf/`` found there are reused)."""
    # imported here, as in the commands: this module is loaded by ``autonas --help``, and these modules import
    # torch and the model's code, which must come after latency_command's re-exec on the model's own code
    import numpy as np

    from harness.data import prepare_corpus
    from kernels.compress import load_run
    from kernels.onnx_export import ONNX_FILE, ONNX_INT8_FILE
    from kernels.quant import INT8_FILE
    from kernels.runtimes import RuntimeSources, choose_runtime, measure, scratch_dir
    from nas.hf import export_blockers, export_hf

    net, spec, tokenizer = load_run(model_dir)
    corpus = prepare_corpus(spec, tokenizer)
    with scratch_dir() as tmp:
        for name in (ONNX_FILE, ONNX_INT8_FILE, "ct2_fp32", "ct2_int8"):
            if (model_dir / name).exists():
                (tmp / name).symlink_to((model_dir / name).resolve())
        blockers = export_blockers(net.arch)
        hf = model_dir / "hf"
        if not blockers and not (hf / "config.json").is_file():
            hf = export_hf(net, tmp / "hf", corpus.tokenizer)
        src = RuntimeSources(
            model=net,
            out=tmp,
            int8_dir=model_dir if (model_dir / INT8_FILE).is_file() else None,
            hf_dir=None if blockers else hf,
            hf_blocker="not exportable: " + "; ".join(blockers) if blockers else None,
        )
        window = np.asarray(corpus["val"][: net.arch.context_length], dtype=np.int64)
        figures = measure(names, src, window, corpus.token_bytes, threads, prompt, decode, repeats, progress=True)
    return choose_runtime(figures, tolerance)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_command)
    app.command("latency")(latency_command)


def make_app() -> typer.Typer:
    app = typer.Typer(
        help="kernels worker: compression and fast inference.",
        no_args_is_help=True,
        add_completion=False,
        cls=OneLineErrors,
    )

    @app.callback()
    def _group() -> None:
        """Keeps ``compress`` a named subcommand (``python -m kernels compress ...``), as under ``autonas``."""

    register(app)
    return app
