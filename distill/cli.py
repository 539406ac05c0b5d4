"""``autonas distill`` (also ``python -m distill distill``): a teacher distilled into a student architecture.

``autonas eval humaneval`` is registered here too (the ``distill`` worker's app) but lives in
:mod:`distill.humaneval_cli`. Modules that import torch or an LLM SDK are imported inside the command, after
every flag is checked: ``autonas --help`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from distill.humaneval_cli import eval_app
from harness.budget import process_start
from harness.cli_support import (
    TRAIN_KEYS,
    OneLineErrors,
    err_console,
    exit_unless_finished,
    print_metrics,
    progress_bar,
    user_errors,
)
from harness.data import CorpusSpec, load_documents, split_documents
from harness.errors import UserError
from harness.model_code import model_code_root, write_code_record
from harness.run_files import EVAL_BYTES
from harness.tokenizer import load_tokenizer_file, parse_tokenizer_spec
from nas import validate
from nas.space import ArchConfig

if TYPE_CHECKING:
    from nas.train import TrainConfig  # imports torch

SeqMode = Literal["mix", "replace"]  # how sequence-level KD uses the teacher's text (distill.train.sequence_distill)
_SEQ_MODES: tuple[SeqMode, ...] = ("mix", "replace")


def _seq_mode(mode: str) -> SeqMode:
    """--mode as the trainer takes it: the checked string, typed as one of :data:`SeqMode`."""
    for known in _SEQ_MODES:
        if known == mode:
            return known
    raise UserError(f"unknown --mode {mode!r}: use mix or replace")


# --------------------------------------------------------------------------------------------------
# distill


@user_errors
def distill_command(
    teacher: Annotated[
        str,
        typer.Option(help="run folder of ours, a Hugging Face folder, hf:<id>, openai:<model> or anthropic:<model>"),
    ],
    student: Annotated[Path, typer.Option(help="student architecture JSON (e.g. from a NAS front)")],
    loss: Annotated[
        str, typer.Option(help="fkl, rkl, skl, srkl (token-level) or seq (sequence-level on teacher text)")
    ] = "fkl",
    budget: Annotated[str, typer.Option(help="60s, 10m, 1h, or tokens: 2Mtok")] = "10m",
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="hard wall-clock cap from the process' start (teacher loading "
            "included): training ends there even before its budget"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/distill-<student hash>-<loss>)")] = None,
    temperature: Annotated[float, typer.Option(help="KD temperature")] = 1.0,
    ce_weight: Annotated[float, typer.Option(help="weight of the hard-label cross-entropy in [0, 1]")] = 0.5,
    skew: Annotated[float, typer.Option(help="skew for skl / srkl (DistiLLM alpha)")] = 0.1,
    topk: Annotated[
        int, typer.Option(help="use only the teacher's top-k log-probs plus a tail bucket (0: full logits)")
    ] = 0,
    cache_topk: Annotated[
        Path | None,
        typer.Option(help="folder caching the teacher's top-k log-probs (needs --topk); shared by students"),
    ] = None,
    adopt_teacher_vocab: Annotated[
        bool, typer.Option(help="give the student the teacher's vocabulary size and tokenizer")
    ] = False,
    corpus: Annotated[str, typer.Option(help="stdlib, a local file/folder, or a hub name")] = "stdlib",
    text_field: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 3e-3,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = EVAL_BYTES,
    prompts: Annotated[int, typer.Option(help="API teacher: code prompts cut from the corpus' train split")] = 200,
    teacher_data: Annotated[
        Path | None, typer.Option(help="API teacher: the JSONL data set (cached, resumable)")
    ] = None,
    teacher_base_url: Annotated[str | None, typer.Option(help="API teacher: an OpenAI-compatible server")] = None,
    teacher_max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
    mode: Annotated[str, typer.Option(help="seq: 'mix' teacher text with the corpus, or 'replace' it")] = "mix",
    tokenizer: Annotated[str, typer.Option(help="seq: the student's tokenizer (byte, bpe:<n>, file:<json>)")] = "byte",
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Distil a teacher into a student architecture under a budget; writes the trainer's run folder."""
    from distill.losses import KDLossConfig  # torch (all three)
    from distill.train import LOSSES, distill, reconcile_student
    from nas.train import TrainConfig, prepare_run_dir, resolve_device

    started = process_start()  # --max-seconds counts from the worker's start
    validate.number(max_seconds, "--max-seconds", gt=0, le=validate.MAX_BUDGET_S)
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
    seq_mode = _seq_mode(mode)
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
    cfg = TrainConfig.from_budget(
        parsed, batch_size=batch_size, lr=lr, seed=seed, device=device, eval_bytes=eval_bytes, max_seconds=max_seconds
    )
    resolve_device(cfg.device)
    spec = CorpusSpec(source=corpus, text_field=text_field)
    out_dir = out or Path("runs") / f"distill-{arch.short_hash()}-{loss}"
    validate.output_dir(out_dir, "--out", overwrite=overwrite)
    if loss == "seq":
        _sequence_level(
            teacher,
            arch,
            spec,
            cfg,
            out_dir,
            prompts,
            teacher_data,
            teacher_base_url,
            teacher_max_tokens,
            concurrency,
            seq_mode,
            tokenizer,
            seed,
            quiet,
            overwrite,
            started,
        )
        return
    if teacher.startswith(("openai:", "anthropic:")):
        raise UserError(
            f"{teacher} is an API teacher: it gives text (and at most top-20 log-probs), not logits; use --loss seq"
        )
    from distill.teachers import load_teacher  # torch and transformers

    with err_console.status(f"loading teacher {teacher} ..."):
        t = load_teacher(teacher)
    sidecar = student.parent / "tokenizer.json"
    student_fp = None
    if sidecar.is_file():
        student_fp = load_tokenizer_file(sidecar).fingerprint()
    elif arch.vocab_size == 256:
        student_fp = "byte"
    arch = reconcile_student(arch, t, adopt_teacher_vocab, student_fp)
    kd = KDLossConfig(kind=loss, temperature=temperature, ce_weight=ce_weight, skew=skew)
    prepare_run_dir(out_dir, overwrite=overwrite)
    write_code_record(out_dir, model_code_root())  # the student carries the code that trains it
    err_console.print(
        f"distilling {t.name} -> {arch.describe()} ({loss}, T={temperature:g}, ce {ce_weight:g}"
        f"{f', top-{topk}' if topk else ''}) for {parsed.describe()} -> {out_dir}",
        highlight=False,
    )
    outcome = distill(
        t, arch, spec, cfg, kd, out_dir, topk or None, log_to_console=not quiet, cache_dir=cache_topk, started=started
    )
    _finish(outcome, out_dir)


def _finish(outcome: Any, out_dir: Path) -> None:
    exit_unless_finished(outcome, out_dir)
    print_metrics(outcome.metrics, TRAIN_KEYS)


def _sequence_level(
    teacher: str,
    arch: ArchConfig,
    spec: CorpusSpec,
    cfg: TrainConfig,
    out_dir: Path,
    n_prompts: int,
    teacher_data: Path | None,
    base_url: str | None,
    max_tokens: int,
    concurrency: int,
    mode: SeqMode,
    tokenizer: str,
    seed: int,
    quiet: bool,
    overwrite: bool,
    started: float | None = None,
) -> None:
    from distill.api_teacher import APITeacher, APITeacherSpec, generate_teacher_data, prompts_from_corpus  # LLM SDKs
    from distill.train import sequence_distill  # torch
    from nas.train import prepare_run_dir

    _, vocab = parse_tokenizer_spec(tokenizer)
    if arch.vocab_size != vocab:
        raise UserError(f"student vocab_size {arch.vocab_size} differs from tokenizer {tokenizer} ({vocab} tokens)")
    data_file = teacher_data or out_dir.parent / f"teacher-{teacher.replace(':', '-').replace('/', '_')}.jsonl"
    if teacher.startswith(("openai:", "anthropic:")):
        api = APITeacher(
            APITeacherSpec.parse(teacher, base_url=base_url, max_tokens=max_tokens, concurrency=concurrency)
        )
        docs = split_documents(load_documents(spec), spec)["train"]
        code_prompts = prompts_from_corpus(((d.key, d.text) for d in docs), n_prompts, seed)
        if not code_prompts:
            raise UserError(f"corpus {spec.source!r} has no documented top-level functions to prompt the teacher with")
        with progress_bar(f"teacher {api.name}") as bar:
            task = bar.add_task("gen", total=len(code_prompts))
            rep = generate_teacher_data(
                api, code_prompts, data_file, lambda i, n: bar.update(task, completed=i + 0, total=n)
            )
        err_console.print(
            f"teacher data {data_file}: {rep.written} new, {rep.skipped_cached} cached, {len(rep.failed)} failed "
            f"(left for the next run), {rep.input_tokens}+{rep.output_tokens} tokens",
            highlight=False,
        )
    elif teacher_data is None or not teacher_data.is_file():
        raise UserError(
            "--loss seq needs an API teacher (openai:<model> / anthropic:<model>) or an existing --teacher-data file"
        )
    prepare_run_dir(out_dir, overwrite=overwrite)
    outcome = sequence_distill(
        data_file,
        arch,
        spec,
        tokenizer,
        cfg,
        out_dir,
        mode,
        log_to_console=not quiet,
        started=started,
    )
    _finish(outcome, out_dir)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
    app.add_typer(eval_app, name="eval")


def make_app() -> typer.Typer:
    app = typer.Typer(
        help="distill worker: knowledge distillation and code evaluation.",
        no_args_is_help=True,
        add_completion=False,
        cls=OneLineErrors,
    )
    register(app)
    return app
