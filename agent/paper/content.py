"""The paper's numbers, tables and offline prose, all computed from :class:`~agent.paper.facts.RunFacts`.

Tables are built here in full (no model writes a table). The prose of each section is a template with
placeholders (``{{key}}``) and citations (``[@key]``), chosen by what the run measured; an LLM may rewrite the
templates' wording (:mod:`agent.paper.prose`) but draws from the same book of numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.judge import MIN_NOISE, judge
from agent.paper.facts import ExperimentFacts, RunFacts
from agent.paper.numbers import NumberBook
from harness.data import CorpusSpec


@dataclass(frozen=True)
class Table:
    caption: str
    label: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


@dataclass
class Section:
    """A section's title, its prose template (placeholders and citations), and the tables that follow it."""

    title: str
    prose: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # figure names made by agent.paper.figures


def _f(value: float | int | None, fmt: str) -> str:
    return "--" if value is None else fmt.format(value)


def number_book(facts: RunFacts) -> NumberBook:
    book = NumberBook()
    s, summary = facts.settings, facts.summary
    models = [e for e in facts.experiments if e.is_model]
    book.add("n_experiments", len(facts.experiments), "{:d}")
    book.add("n_kept", len(facts.kept), "{:d}")
    book.add("n_models", len(models), "{:d}")
    book.add("space_size", facts.space_size, "{:,}")
    book.add("n_genes", len(facts.space_genes), "{:d}")
    book.add("eval_bytes", s.get("eval_bytes"), "{:,}")
    book.add("heldout_pct", 100 * CorpusSpec().heldout_fraction, "{:g}")
    book.add("judge_k", inspect.signature(judge).parameters["k"].default, "{:g}")
    book.add("min_noise", MIN_NOISE, "{:g}")
    # quantities the run was given as text (they carry units), quoted as they were typed
    book.text["budget"], book.text["experiment_budget"] = str(s.get("budget")), str(s.get("experiment_budget"))
    book.text["goal"], book.text["hardware"] = _quote(facts.goal), facts.hardware
    book.text["workspace_head"] = facts.workspace_head or "(no commit)"
    if isinstance(summary.get("elapsed_s"), (int, float)):
        book.add("elapsed_h", summary["elapsed_s"] / 3600, "{:.2f}")
    # a noise measured by repeats; the judge's floor (noise_source "floor") is an assumption, not a measurement
    noises = [e.noise_bpb for e in facts.experiments if e.noise_bpb is not None and e.noise_source != "floor"]
    book.add("noise_bpb", noises[-1] if noises else None, "{:.4f}")
    best = facts.best
    if best is not None:
        book.add("best_val_bpb", best.val_bpb, "{:.4f}")
        book.add("best_size_mb", best.size_bytes_int8 / 1e6 if best.size_bytes_int8 else None, "{:.2f}")
        book.add("best_latency_ms", best.latency_ms_p50, "{:.2f}")
        book.add("best_params", best.params, "{:,}")
        book.add("best_tokens", best.tokens_trained, "{:,}")
        first = next((e for e in facts.kept if e.is_model), None)
        if first is not None and first is not best and first.val_bpb is not None and best.val_bpb is not None:
            book.add("first_val_bpb", first.val_bpb, "{:.4f}")
            book.add("gain_bpb", first.val_bpb - best.val_bpb, "{:.4f}")
    book.add("heldout_bpb", summary.get("heldout_bpb"), "{:.4f}")
    scores = [e.metrics["humaneval_pass_at_1"] for e in facts.experiments if "humaneval_pass_at_1" in e.metrics]
    book.add("humaneval_pass1", max(scores) if scores else None, "{:.4f}")
    book.add("llm_cost_usd", summary.get("llm_cost_usd"), "{:.2f}")
    return book


def kept_table(facts: RunFacts) -> Table:
    rows = [
        (
            e.id,
            e.kind,
            _f(e.val_bpb, "{:.4f}"),
            _f(e.delta_bpb, "{:+.4f}"),
            _f(e.noise_bpb, "{:.4f}"),
            _f(e.size_bytes_int8 / 1e6 if e.size_bytes_int8 else None, "{:.2f}"),
            _f(e.latency_ms_p50, "{:.2f}"),
            _f(e.tokens_trained, "{:,}"),
        )
        for e in facts.kept
    ]
    cols = ("exp.", "kind", "val bpb", "delta", "noise", "INT8 MB", "ms/token", "tokens")
    return Table(
        "Kept experiments: bits per byte on the validation split, change against the incumbent, "
        "the measured noise, INT8 size, batch-1 decode latency and tokens trained.",
        "tab:kept",
        cols,
        rows,
    )


def all_table(facts: RunFacts) -> Table:
    rows = [(e.id, e.kind, e.decision, _f(e.val_bpb, "{:.4f}"), e.arch or "--") for e in facts.experiments]
    return Table(
        "Every experiment of the run and the judge's decision.",
        "tab:all",
        ("exp.", "kind", "decision", "val bpb", "architecture"),
        rows,
    )


def _arch_tokens(e: ExperimentFacts) -> list[str]:
    return e.arch.split()


def ablation_table(facts: RunFacts) -> Table | None:
    """Pairs of trained models whose architectures differ in one gene, at the same tokens trained."""
    models = [e for e in facts.experiments if e.is_model and e.arch]
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            ta, tb = _arch_tokens(a), _arch_tokens(b)
            if len(ta) != len(tb) or a.tokens_trained != b.tokens_trained or a.kind != b.kind:
                continue
            diff = [(x, y) for x, y in zip(ta, tb, strict=True) if x != y]
            if len(diff) == 1 and a.val_bpb is not None and b.val_bpb is not None:
                rows.append(
                    (
                        f"{diff[0][0]} to {diff[0][1]}",
                        a.id,
                        b.id,
                        f"{a.val_bpb:.4f}",
                        f"{b.val_bpb:.4f}",
                        f"{b.val_bpb - a.val_bpb:+.4f}",
                    )
                )
    if not rows:
        return None
    return Table(
        "Ablations: pairs of trained models that differ in one architectural choice at equal tokens.",
        "tab:ablation",
        ("change", "from", "to", "bpb from", "bpb to", "delta"),
        rows,
    )


def distill_table(facts: RunFacts) -> Table | None:
    """Distillation against training from scratch: the same architecture at (within 10 %) equal tokens."""
    rows = []
    for d in (e for e in facts.experiments if e.kind == "distill" and e.val_bpb is not None):
        for t in (e for e in facts.experiments if e.kind == "train" and e.val_bpb is not None):
            if d.arch and d.arch == t.arch and d.tokens_trained and t.tokens_trained:
                if abs(d.tokens_trained - t.tokens_trained) <= 0.1 * t.tokens_trained:
                    rows.append(
                        (
                            d.arch,
                            t.id,
                            d.id,
                            f"{t.val_bpb:.4f}",
                            f"{d.val_bpb:.4f}",
                            f"{(d.val_bpb or 0) - (t.val_bpb or 0):+.4f}",
                            f"{d.tokens_trained:,}",
                        )
                    )
    if not rows:
        return None
    return Table(
        "Distillation against training from scratch at equal tokens.",
        "tab:distill",
        ("architecture", "scratch", "distilled", "bpb scratch", "bpb distilled", "delta", "tokens"),
        rows,
    )


def compression_table(facts: RunFacts) -> Table | None:
    rows = []
    for e in facts.experiments:
        m = e.metrics
        if e.kind == "compress" and isinstance(m.get("val_bpb_before"), (int, float)):
            rows.append(
                (
                    e.id,
                    str(m.get("prune") or "none"),
                    "yes" if m.get("int8") else "no",
                    _f(m.get("val_bpb_before"), "{:.4f}"),
                    _f(m.get("val_bpb"), "{:.4f}"),
                    _f(m.get("val_bpb_change_pct"), "{:+.2f}"),
                    _f(m.get("size_bytes_on_disk_int8") or m.get("size_bytes_int8"), "{:,}"),
                )
            )
    if not rows:
        return None
    return Table(
        "Compression: pruning and INT8 with the bits per byte they cost.",
        "tab:compress",
        ("exp.", "pruning", "INT8", "bpb before", "bpb after", "change %", "bytes"),
        rows,
    )


def humaneval_table(facts: RunFacts) -> Table | None:
    rows = [
        (
            e.id,
            _f(e.metrics.get("humaneval_pass_at_1"), "{:.4f}"),
            _f(e.metrics.get("humaneval_passed"), "{}"),
            _f(e.metrics.get("humaneval_samples"), "{}"),
        )
        for e in facts.experiments
        if "humaneval_pass_at_1" in e.metrics
    ]
    if not rows:
        return None
    return Table(
        "HumanEval [@chen2021humaneval] pass@1 where it was measured.",
        "tab:humaneval",
        ("exp.", "pass@1", "passed", "samples"),
        rows,
    )


def reproducibility_table(facts: RunFacts) -> Table:
    rows = [
        (
            e.id,
            e.commit[:10] or "--",
            _f(e.seed, "{}"),
            _f(e.tokens_trained, "{:,}"),
            (e.trailers.get("corpus") or "--")[:16],
            f"autonas reproduce {facts.run_id} {e.id}",
        )
        for e in facts.kept
    ]
    return Table(
        "How to re-make every reported model: commit, seed, tokens, corpus fingerprint and command.",
        "tab:repro",
        ("exp.", "commit", "seed", "tokens", "corpus", "command"),
        rows,
    )


def sections(facts: RunFacts, book: NumberBook) -> list[Section]:
    """The paper's sections with their offline prose (templates chosen by what the run measured)."""
    best = facts.best
    if best is not None:
        headline = (
            "The best kept model reaches {{best_val_bpb}} bits per byte on the validation split"
            + (" and {{heldout_bpb}} on a held-out split no experiment saw" if book.has("heldout_bpb") else "")
            + (", in {{best_size_mb}} MB at INT8" if book.has("best_size_mb") else "")
            + "."
        )
    else:
        headline = "No experiment was kept, so the run reports no model."
    status = (
        ""
        if facts.finished
        else (
            " This is a draft: the run was still going when it was written, and the numbers are those recorded so far."
        )
    )
    abstract = (
        "We report an autonomous search for a small code language model with the goal {{goal}}. "
        "An agent planned, ran and judged {{n_experiments}} experiments within a wall-clock budget of {{budget}}; "
        "{{n_kept}} were kept. " + headline + status
    )
    method = (
        "Architectures are decoder-only transformers drawn from a search space of {{space_size}} configurations "
        "over {{n_genes}} choices (depth, width, heads, feed-forward size, activation, normalisation, positions). "
        "Searches ask and tell candidates through Optuna [@akiba2019optuna] with NSGA-II [@deb2002nsga2] or "
        "regularized evolution [@real2019regularized], screened by zero-cost proxies [@abdelfattah2021zerocost]. "
        "Each experiment trains for a budget of {{experiment_budget}}, counted in tokens so that results do not "
        "depend on the machine's speed. Quality is bits per byte on {{eval_bytes}} bytes of a validation split, "
        "scored by a fixed harness that no experiment can edit; {{heldout_pct}} percent of the files form a locked "
        "held-out split read only for the final report. An experiment is kept when it beats the incumbent by more "
        "than {{judge_k}} standard deviations of the measured run-to-run noise (at least {{min_noise}} bits per "
        "byte); a smaller gain is re-run with another seed. Models are exported to INT8 [@dettmers2022llmint8] for "
        "size and latency, and distillation follows [@hinton2015distilling; @gu2024minillm; @ko2024distillm]. "
        "The experiments ran on {{hardware}}."
    )
    results = "Table [ref:tab:kept] lists the kept experiments and Table [ref:tab:all] every experiment. "
    if book.has("gain_bpb"):
        results += "From the first kept model to the best, validation bits per byte fell by {{gain_bpb}}. "
    if book.has("noise_bpb"):
        results += "The measured noise between seeds was {{noise_bpb}} bits per byte. "
    else:
        results += "No repeat measured the noise, so the judge used its floor of {{min_noise}} bits per byte. "
    if book.has("humaneval_pass1"):
        results += "The best HumanEval pass@1 measured was {{humaneval_pass1}}. "
    out = [
        Section("Abstract", abstract),
        Section("Method", method),
        Section("Results", results, [kept_table(facts), all_table(facts)], ["pareto"]),
    ]
    extra = [
        t
        for t in (ablation_table(facts), distill_table(facts), compression_table(facts), humaneval_table(facts))
        if t is not None
    ]
    if extra:
        out.append(
            Section(
                "Ablations, distillation and compression",
                "Where the run holds comparable pairs, the tables below set them side by side; pruning "
                "follows magnitude or Wanda [@sun2024wanda] scores.",
                extra,
            )
        )
    out.append(Section("Limitations", _limitations(facts, book)))
    out.append(
        Section(
            "Reproducibility",
            "Every reported model can be re-made from its commit with the command in "
            "Table [ref:tab:repro]; the run's workspace head is {{workspace_head}}.",
            [reproducibility_table(facts)],
        )
    )
    return out


def _limitations(facts: RunFacts, book: NumberBook) -> str:
    parts = [
        "Each experiment trains for a short budget ({{experiment_budget}}), so a ranking between "
        "architectures at this fidelity may not hold for longer training."
    ]
    if not book.has("heldout_bpb"):
        parts.append("The held-out score was not measured for this run.")
    if not book.has("humaneval_pass1"):
        parts.append("HumanEval was not measured; bits per byte is the only quality measure reported.")
    parts.append("Latency was measured on the machine of the run only, at batch size one.")
    if not facts.finished:
        parts.append("The run had not finished when this was written.")
    return " ".join(parts)


def _quote(text: str) -> str:
    return "``" + text.replace("{", "(").replace("}", ")") + "''"
