"""Command-line entry points of the ``nas`` worker: ``train``, ``evaluate``, ``arch sample|show`` and ``nas search``.

They are registered on the project's ``autonas`` app and also run bare as ``python -m nas ...`` on a
machine that has only torch and the worker's own dependencies. Each option is declared once, as a parameter of
its command. Modules that import torch, transformers or optuna are imported inside the command that needs them:
every ``autonas`` command (``--help`` included) imports this module, and a bad flag is refused before they load.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from harness.budget import process_start
from harness.cli_support import (
    TRAIN_KEYS,
    OneLineErrors,
    console,
    err_console,
    exit_unless_finished,
    print_metrics,
    user_errors,
)
from harness.data import CorpusSpec, prepare_corpus
from harness.errors import UserError
from harness.model_code import active_code_hash, model_code_root, reexec_with_model_code, write_code_record
from harness.run_files import EVAL_BYTES
from harness.tokenizer import parse_tokenizer_spec
from nas import validate
from nas.counting import arch_metrics
from nas.objectives import SearchLimits
from nas.rungs import parse_rungs
from nas.space import SPACES, ArchConfig, ArchConstraints, get_space


def _parse_size(text: str | None, what: str, flag: str) -> int | None:
    """``8`` / ``8MB`` / ``1.5e6`` -> int; MB for byte limits means 10^6 bytes."""
    if text is None:
        return None
    t = text.strip().lower().removesuffix("b").removesuffix("m") if what == "MB" else text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        raise UserError(f"cannot read {what} value {text!r} of {flag}") from None
    if not math.isfinite(value) or value <= 0 or value > 1e15:
        raise UserError(f"{flag} must be a positive finite number (at most 1e15), got {text!r}")
    return int(value * 1_000_000) if what == "MB" else int(value)


def _check_space(space: str) -> None:
    """A named space, or a readable UTF-8 JSON file (``get_space`` says what is wrong inside it)."""
    if space not in SPACES and Path(space).suffix == ".json":
        validate.text_file(Path(space), "--space")


@user_errors
def train_command(
    arch: Annotated[Path | None, typer.Option(help="architecture JSON (default: the default ArchConfig)")] = None,
    budget: Annotated[str, typer.Option(help="60s, 10m, 1h, or tokens: 500ktok, 2Mtok")] = "60s",
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="hard wall-clock cap from the process' start: training "
            "ends there even before its budget (a partial, 'capped' run)"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/train-<arch hash>)")] = None,
    tokenizer: Annotated[str, typer.Option(help="byte, or bpe:<vocab> (e.g. bpe:4096)")] = "byte",
    corpus: Annotated[
        str, typer.Option(help="stdlib, a .jsonl/.parquet/.txt file, a folder of .py files, or a hub name")
    ] = "stdlib",
    text_field: Annotated[str | None, typer.Option(help="text column of a data-set corpus")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option()] = 3e-3,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the training step")] = False,
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = EVAL_BYTES,
    checkpoint_every: Annotated[float, typer.Option(help="seconds between checkpoints")] = 60.0,
    hf: Annotated[
        bool, typer.Option("--hf/--no-hf", help="also export a Hugging Face folder (Llama-family archs)")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train one architecture under a budget; writes metrics.json, log.txt and model.safetensors."""
    from nas.train import TrainConfig, Trainer, prepare_run_dir, resolve_device  # torch: after --help, before training

    started = process_start()  # --max-seconds counts from the worker's start: imports and corpus preparation are inside
    # Everything a user can get wrong is checked before anything is written or any corpus is read.
    parsed_budget = validate.budget(budget, "--budget")
    validate.number(max_seconds, "--max-seconds", gt=0, le=validate.MAX_BUDGET_S)
    validate.seed(seed)
    validate.number(batch_size, "--batch-size", le=65_536)
    validate.number(grad_accum, "--grad-accum", le=65_536)
    validate.number(eval_bytes, "--eval-bytes", le=10**11)
    validate.number(lr, "--lr", gt=0, le=10)
    validate.number(checkpoint_every, "--checkpoint-every", gt=0)
    validate.corpus(corpus)
    _, vocab = parse_tokenizer_spec(tokenizer)
    if arch is not None:
        validate.input_file(arch, "--arch")
    arch_cfg = ArchConfig.load(arch) if arch is not None else ArchConfig(vocab_size=vocab)
    cfg = TrainConfig.from_budget(
        parsed_budget,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        seed=seed,
        device=device,
        compile=compile,
        eval_bytes=eval_bytes,
        checkpoint_every_s=checkpoint_every,
        max_seconds=max_seconds,
    )
    resolve_device(cfg.device)
    spec = CorpusSpec(source=corpus, text_field=text_field)
    out_dir = out or Path("runs") / f"train-{arch_cfg.short_hash()}"
    validate.output_dir(out_dir, "--out", overwrite=overwrite)
    with err_console.status(f"preparing corpus {corpus!r} with tokenizer {tokenizer} ..."):
        data = prepare_corpus(spec, tokenizer)
    trainer = Trainer(arch_cfg, data, cfg, out_dir, spec, tokenizer, log_to_console=not quiet)
    trainer.started = started
    prepare_run_dir(out_dir, overwrite=overwrite)
    write_code_record(out_dir, model_code_root())  # the model carries the code that trains it
    err_console.print(
        f"training {arch_cfg.describe()} for {parsed_budget.describe()} on {trainer.device} -> {out_dir}",
        highlight=False,
    )
    outcome = trainer.run()
    exit_unless_finished(outcome, out_dir)
    if hf:
        _export_hf_folder(out_dir, arch_cfg, data)
    print_metrics(outcome.metrics, TRAIN_KEYS)


def _export_hf_folder(out_dir: Path, arch_cfg: Any, data: Any) -> None:
    from safetensors.torch import load_model  # torch and transformers: only when --hf asks for the export

    from nas.hf import export_blockers, export_hf
    from nas.model import CodeLM

    blockers = export_blockers(arch_cfg)
    if blockers:
        err_console.print(f"no Hugging Face export: {'; '.join(blockers)}", highlight=False)
        return
    model = CodeLM(arch_cfg)
    load_model(model, str(out_dir / "model.safetensors"))
    export_hf(model, out_dir / "hf", data.tokenizer)
    err_console.print(f"Hugging Face folder: {out_dir / 'hf'}", highlight=False)


arch_app = typer.Typer(help="Sample and inspect architectures.", no_args_is_help=True)


@arch_app.command("sample")
@user_errors
def arch_sample(
    space: Annotated[str, typer.Option(help="default, tiny, or a JSON file of gene choices")] = "default",
    n: Annotated[int, typer.Option("-n", min=1, help="how many")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    max_params: Annotated[str | None, typer.Option(help="e.g. 5e6")] = None,
    max_mb: Annotated[str | None, typer.Option(help="max size in MB (10^6 bytes) at --dtype")] = None,
    dtype: Annotated[str, typer.Option(help="dtype for --max-mb: int8, fp16, fp32")] = "int8",
    vocab_size: Annotated[int | None, typer.Option(help="fix the vocabulary (e.g. to a BPE's size)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the (first) architecture here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Draw architectures from a search space, optionally under size constraints; prints JSON."""
    validate.number(n, "-n", le=10_000)
    validate.seed(seed)
    validate.number(vocab_size, "--vocab-size", ge=2, le=1_000_000)
    if out is not None:
        validate.output_file(out, "--out", overwrite=overwrite)
    _check_space(space)
    sp = get_space(space)
    if vocab_size is not None:
        sp = sp.model_copy(update={"vocab_size": (vocab_size,)})
    constraints = ArchConstraints(
        max_params=_parse_size(max_params, "parameter", "--max-params"),
        max_bytes=_parse_size(max_mb, "MB", "--max-mb"),
        bytes_dtype=dtype,
    )
    rng = random.Random(seed)
    archs = [sp.sample_feasible(rng, constraints) for _ in range(n)]
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(archs[0].to_json())
        except OSError as err:
            raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    payload: Any = archs[0].model_dump() if n == 1 else [a.model_dump() for a in archs]
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


@arch_app.command("show")
@user_errors
def arch_show(path: Annotated[Path, typer.Argument(help="architecture JSON")]) -> None:
    """Size, cost and export status of an architecture."""
    from nas.hf import export_blockers  # transformers: only for this command

    validate.input_file(path, "architecture file")
    arch = ArchConfig.load(path)
    table = Table(title=f"{path}: {arch.describe()}", show_header=False)
    for key, value in arch_metrics(arch).items():
        table.add_row(key, f"{value:,}")
    table.add_row("head_dim", str(arch.head_dim))
    blockers = export_blockers(arch)
    table.add_row("hf_export", "LlamaForCausalLM" if not blockers else "no: " + "; ".join(blockers))
    table.add_row("arch_hash", arch.short_hash())
    console.print(table)


@user_errors
def evaluate_command(
    model: Annotated[Path, typer.Option(help="a finished run folder (arch.json + model.safetensors)")],
    split: Annotated[str, typer.Option(help="val or heldout (the locked split no experiment reads)")] = "heldout",
    corpus: Annotated[str, typer.Option(help="'stdlib', a folder, a local file, or a hub data set name")] = "stdlib",
    tokenizer: Annotated[str, typer.Option(help="the tokenizer the model was trained with")] = "byte",
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of text scored")] = EVAL_BYTES,
    out: Annotated[Path | None, typer.Option(help="also write the result as JSON here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Bits per byte of a trained model on a split, by the model's own code and the fixed harness."""
    from harness.metrics import evaluate_bpb  # torch: loaded after the re-exec on the model's own code
    from nas.run_folder import load_trained_model

    validate.input_dir(model, "--model")
    if out is not None:
        validate.output_file(out, "--out", overwrite=overwrite)
    if split not in ("val", "heldout"):
        raise UserError(f"--split {split!r}: use val or heldout")
    parse_tokenizer_spec(tokenizer)
    validate.corpus(corpus)
    reexec_with_model_code(model)  # scored with the code that trained it
    net, _ = load_trained_model(model)
    data = prepare_corpus(CorpusSpec(source=corpus), tokenizer)
    if data[split].size < 2:
        raise UserError(f"the {split} split of {corpus!r} is empty")
    result = evaluate_bpb(net, data[split], data.token_bytes, max_bytes=eval_bytes)
    record = {
        f"{split}_bpb": result.bpb,
        "eval_bytes": result.bytes,
        "tokens": result.tokens,
        "code_hash": active_code_hash(),
        "corpus_fingerprint": data.corpus_fingerprint,
    }
    if out is not None:
        out.write_text(json.dumps(record, indent=2) + "\n")
    console.print_json(json.dumps(record))


search_app = typer.Typer(help="Architecture search.", no_args_is_help=True)


@search_app.command("search")
@user_errors
def search_command(
    out: Annotated[
        Path, typer.Option(help="search folder: results.tsv, pareto.json, pareto.png, best/, trials/")
    ] = Path("runs/search"),
    space: Annotated[str, typer.Option(help="default, tiny, or a JSON file of gene choices")] = "default",
    objectives: Annotated[
        str, typer.Option(help="bpb plus any of bytes_int8, bytes_fp16, params, latency")
    ] = "bpb,bytes_int8",
    strategy: Annotated[str, typer.Option(help="nsga2, evolution or random")] = "nsga2",
    trials: Annotated[int | None, typer.Option(min=1, help="stage-1 (rung-1) trainings")] = None,
    budget: Annotated[str | None, typer.Option(help="wall-clock budget of the search, e.g. 1h")] = None,
    cap_trials: Annotated[
        bool,
        typer.Option(help="stop running trials at the end of --budget (partial results), so the search ends by it"),
    ] = False,
    stage1: Annotated[str, typer.Option(help="stage-1 training budget per trial (30s, 200ktok)")] = "30s",
    stage2: Annotated[str, typer.Option(help="stage-2 budget for promoted trials; 'none' to skip")] = "120s",
    eta: Annotated[int, typer.Option(min=2, help="promote the best 1/eta")] = 3,
    stage2_max: Annotated[int, typer.Option(min=0)] = 4,
    max_mb: Annotated[float | None, typer.Option(help="hard size limit in MB (10^6 bytes)")] = None,
    bytes_dtype: Annotated[str, typer.Option(help="dtype of --max-mb: int8, fp16, fp32")] = "int8",
    max_params: Annotated[str | None, typer.Option(help="hard parameter limit, e.g. 5e6")] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(help="hard per-token decode latency limit (ms, this machine)")
    ] = None,
    screen: Annotated[bool, typer.Option("--screen/--no-screen", help="zero-cost proxy screening")] = True,
    screen_proxy: Annotated[
        str,
        typer.Option(
            help="what ranks candidates at screening: 'learned' (a ridge ranker refit on the study's trained trials, "
            "synflow until it has enough; ranked best in benchmarks/results/proxy_correlation.json) or a proxy"
        ),
    ] = "learned",
    screen_dataset: Annotated[
        str | None,
        typer.Option(help="with --screen-proxy learned: a proxy_correlation dataset (JSON) it also learns from"),
    ] = None,
    screen_by: Annotated[
        str,
        typer.Option(
            help="score: keep the best-ranked half of each screening batch; front: keep its predicted front over "
            "(rank, size), so small models are not screened out of a multi-objective search"
        ),
    ] = "score",
    population: Annotated[int, typer.Option(min=2)] = 12,
    seed: Annotated[int, typer.Option()] = 0,
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    workers: Annotated[int | None, typer.Option(min=1, help="local CPU worker processes")] = None,
    ray_address: Annotated[str | None, typer.Option(help="HOST:PORT of a Ray cluster, or 'local'")] = None,
    storage: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL or journal file (default OUT/study.journal)")
    ] = None,
    study_name: Annotated[str, typer.Option()] = "search",
    resume: Annotated[bool, typer.Option(help="continue the study stored for --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="write into an --out that holds another run's metrics.json")] = False,
    tokenizer: Annotated[str, typer.Option()] = "byte",
    corpus: Annotated[str, typer.Option()] = "stdlib",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = EVAL_BYTES,
    quiet: Annotated[bool, typer.Option(help="no live table")] = False,
    rungs: Annotated[
        str | None,
        typer.Option(help="successive halving over fractions of --max-budget, e.g. 1/27,1/9,1/3,1 (replaces --stage2)"),
    ] = None,
    max_budget: Annotated[str | None, typer.Option(help="tokens of the last rung, e.g. 270ktok")] = None,
    token_budget: Annotated[
        str | None, typer.Option(help="stop when all trials together trained this many tokens, e.g. 5Mtok")
    ] = None,
    replicates: Annotated[int, typer.Option(min=0, help="trials per rung trained twice to measure its noise")] = 2,
    noise_z: Annotated[float, typer.Option(min=0, help="promotion margin in standard deviations")] = 1.0,
    promote_cap: Annotated[float, typer.Option(min=1, help="promotions per rung at most this times 1/eta")] = 1.5,
    inherit: Annotated[
        bool, typer.Option(help="evolution children start from their parent's weights when that keeps its function")
    ] = False,
    grow_share: Annotated[
        float, typer.Option(min=0, max=1, help="with --inherit, share of children mutated by growth moves")
    ] = 0.5,
) -> None:
    """Multi-objective, multi-fidelity architecture search (resumable with --resume)."""
    from nas.search import Search, SearchConfig  # optuna and torch: after the flags are checked

    if budget is not None:
        validate.budget(budget, "--budget", time_only=True)
    elif cap_trials:
        raise UserError("--cap-trials stops trials at the end of --budget: give --budget too")
    validate.budget(stage1, "--stage1")
    if stage2 != "none":
        validate.budget(stage2, "--stage2")
    if (rungs is None) != (max_budget is None):
        raise UserError("--rungs and --max-budget go together: give both (or neither, for --stage1 / --stage2)")
    if rungs is not None and max_budget is not None:
        parse_rungs(rungs)
        if validate.budget(max_budget, "--max-budget").tokens is None:
            raise UserError(f"--max-budget is a token count (rungs add tokens up), e.g. 270ktok, got {max_budget!r}")
    if token_budget is not None and validate.budget(token_budget, "--token-budget").tokens is None:
        raise UserError(f"--token-budget is a token count (all trials together), e.g. 5Mtok, got {token_budget!r}")
    if screen_by not in ("score", "front"):
        raise UserError(f"--screen-by {screen_by!r}: use score or front")
    if inherit and strategy != "evolution":
        raise UserError("--inherit needs --strategy evolution (only its children have a parent)")
    validate.seed(seed)
    validate.number(batch_size, "--batch-size", le=65_536)
    validate.number(eval_bytes, "--eval-bytes", le=10**11)
    validate.number(population, "--population", le=100_000)
    validate.number(eta, "--eta", le=1000)
    validate.number(max_mb, "--max-mb", gt=0, le=1e9)
    validate.number(max_latency_ms, "--max-latency-ms", gt=0, le=1e6)
    validate.number(trials, "--trials", le=1_000_000)
    validate.number(workers, "--workers", le=1024)
    validate.corpus(corpus)
    parse_tokenizer_spec(tokenizer)
    _check_space(space)
    if screen_dataset is not None and not Path(screen_dataset).is_file():
        raise UserError(f"--screen-dataset {screen_dataset}: no such file")
    if storage is not None and "://" not in storage:  # a journal file of ours
        validate.output_file(Path(storage), "--storage", overwrite=True)
    # A search folder of ours is the study's business (--resume, --study-name); another run's results are refused.
    validate.output_dir(out, "--out", overwrite=True)  # a usable folder first
    ours = any((out / name).exists() for name in ("study.journal", "pareto.json", "results.tsv"))
    validate.output_dir(out, "--out", overwrite=overwrite, results=() if ours else validate.RESULT_FILES)
    limits = SearchLimits(
        max_mb=max_mb,
        bytes_dtype=bytes_dtype,
        max_params=_parse_size(max_params, "parameter", "--max-params"),
        max_latency_ms=max_latency_ms,
    )
    cfg = SearchConfig(
        out=str(out),
        space=space,
        objectives=objectives,
        strategy=strategy,
        limits=limits,
        trials=trials,
        budget=budget,
        cap_trials=cap_trials,
        stage1_budget=stage1,
        stage2_budget=stage2,
        eta=eta,
        stage2_max=stage2_max,
        screen=screen,
        screen_proxy=screen_proxy,
        screen_dataset=screen_dataset,
        screen_by=screen_by,
        population=population,
        seed=seed,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        storage=storage,
        study_name=study_name,
        corpus=CorpusSpec(source=corpus),
        tokenizer=tokenizer,
        batch_size=batch_size,
        eval_bytes=eval_bytes,
        rungs=rungs,
        max_budget=max_budget,
        token_budget=token_budget,
        replicates=replicates,
        noise_z=noise_z,
        promote_cap=promote_cap,
        inherit=inherit,
        grow_share=grow_share,
    )
    summary = Search(cfg, resume=resume, live=not quiet).run()
    console.print()
    table = Table(title=f"Pareto front (stage {summary['stage_of_front']}), {out}/pareto.json")
    for name in summary["objectives"]:
        table.add_column(name, justify="right")
    table.add_column("trial", justify="right")
    table.add_column("architecture")
    for m in summary["front"]:
        table.add_row(*(f"{m['objectives'][n]:.4g}" for n in summary["objectives"]), str(m["trial"]), m["describe"])
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach the worker's commands to a Typer app."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.add_typer(arch_app, name="arch")
    app.add_typer(search_app, name="nas")


def make_app() -> typer.Typer:
    app = typer.Typer(
        help="nas worker: train and inspect small code LMs.",
        no_args_is_help=True,
        add_completion=False,
        cls=OneLineErrors,
    )
    register(app)
    return app
