"""The morning report: report.md and report.html with the experiments table, a bpb-vs-size plot, the best
model's path, and its score on the locked held-out split (read here and nowhere else in the loop)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from agent.best import copy_best
from agent.confining import score_model
from agent.llm import CostLedger
from agent.plans import SearchPlan
from agent.progress import PROGRESS
from agent.settings import RunSettings
from agent.state import AgentState, HistoryEntry
from harness.errors import UserError
from harness.scoring import ScoringRefused
from nas.pareto import pareto_front
from sandbox.confine import ConfinementUnavailable
from sandbox.safe_files import UnsafeFile, copy_regular


def heldout_bpb(settings: RunSettings, best: Path) -> float | None:
    """val-style bits per byte of the best model on the held-out files no experiment has seen, scored by the harness
    in this process while the model's own code (the copy in ``best/code``) runs apart, confined when edited."""
    if not (best / "model.safetensors").is_file():
        return None
    try:
        return score_model(settings, best, "heldout", (settings.run_dir / "heldout").absolute()).bpb
    except (ScoringRefused, ConfinementUnavailable, UserError) as err:
        PROGRESS.print(f"[yellow]held-out score: {err}[/yellow]")
        return None


def _plot(history: list[HistoryEntry], incumbent_id: str | None, path: Path) -> bool:
    pts: list[tuple[float, float, str, str]] = []  # (int8 size, bpb, decision, id) of each measured model
    for h in history:
        size = h.metrics.get("size_bytes_int8")
        if h.plan.is_model and h.val_bpb is not None and size:
            pts.append((size, h.val_bpb, h.decision, h.id))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"keep": "#2ca02c", "discard": "#9aa5b1", "close": "#ff7f0e", "repeat": "#1f77b4"}
    for decision, colour in colours.items():
        sel = [(x, y) for x, y, d, _ in pts if d == decision]
        if sel:
            ax.scatter([x for x, _ in sel], [y for _, y in sel], c=colour, label=decision, s=28)
    front = sorted((pts[i][0], pts[i][1]) for i in pareto_front([(x, y) for x, y, _, _ in pts]))
    front_x, front_y = [x for x, _ in front], [y for _, y in front]
    ax.step(front_x, front_y, where="post", color="#d62728", alpha=0.5, lw=1, label="Pareto front (size, bpb)")
    for x, y, _, i in pts:
        ax.annotate(i, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if i == incumbent_id:
            ax.scatter([x], [y], s=160, facecolors="none", edgecolors="#d62728", label="best")
    ax.set_xscale("log")
    ax.set_xlabel("int8 size (bytes)")
    ax.set_ylabel("val bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(settings: RunSettings, ledger: CostLedger, llms: str, state: AgentState) -> Path:
    """report.md, report.html, summary.json and best/ in the run folder. ``llms`` says which planner and judge ran
    (the ledger has their calls)."""
    history = state.get("history", [])
    incumbent = state.get("incumbent")
    best = copy_best(Path(incumbent.run_dir), settings.run_dir) if incumbent and incumbent.run_dir else None
    held = heldout_bpb(settings, best) if best else None
    out = settings.run_dir
    has_plot = _plot(history, incumbent.id if incumbent else None, out / "report.png")
    kept = [h for h in history if h.decision == "keep"]
    first = next((h for h in history if h.val_bpb is not None and h.plan.is_model), None)
    lines = [
        f"# AutoNAS run {settings.run_id}",
        "",
        f"Goal: {settings.goal}",
        "",
        f"Stopped: {state.get('stop_reason', 'finished')}. {len(history)} experiments, {len(kept)} kept, "
        f"{state.get('elapsed_s', 0):.0f}s elapsed ({state.get('worker_s', 0):.0f}s in workers, "
        f"{state.get('agent_s', 0):.1f}s agent overhead).",
        "",
        _llm_line(llms, ledger),
        "",
    ]
    if incumbent:
        assert incumbent.val_bpb is not None  # a kept model always has its score
        m = incumbent.metrics
        lines += [
            "## Best model",
            "",
            f"- experiment {incumbent.id} (commit {incumbent.commit[:10]}): val bpb {incumbent.val_bpb:.4f}"
            + (f" on {m['eval_bytes']:,} validation bytes" if isinstance(m.get("eval_bytes"), int) else "")
            + (f", first experiment {first.val_bpb:.4f}" if first and first.val_bpb is not None else ""),
            f"- held-out bpb (locked split, read only here): {held:.4f}"
            if held is not None
            else "- held-out bpb: not available",
            f"- int8 size {m.get('size_bytes_int8', 0) / 1e6:.3f} MB, {m.get('params', 0):,} parameters, "
            f"decode {m.get('latency_ms_p50', float('nan')):.2f} ms/token p50",
            f"- files: `{best}`",
            "",
        ]
    lines += [
        "## Experiments",
        "",
        "| id | kind | decision | val bpb | noise bpb | int8 MB | ms/token | rationale | judge |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in history:
        m = h.metrics
        bpb = f"{h.val_bpb:.4f}" if h.val_bpb is not None else "-"
        size = f"{m['size_bytes_int8'] / 1e6:.3f}" if isinstance(m.get("size_bytes_int8"), (int, float)) else "-"
        lat = f"{m['latency_ms_p50']:.2f}" if isinstance(m.get("latency_ms_p50"), (int, float)) else "-"
        noise = f"{h.noise_bpb:.4f}" + (
            " (floor)" if h.noise_source == "floor" else ""
        )  # the margin it was judged against
        lines.append(
            f"| {h.id} | {h.plan.kind} | {h.decision} | {bpb} | {noise} | {size} | {lat} | "
            f"{h.plan.rationale.replace('|', '/')} | {h.reason.replace('|', '/')} |"
        )
    if has_plot:
        lines += ["", "![val bpb against int8 size, with the Pareto front of the trained experiments](report.png)"]
    search_plot = _latest_search_plot(history, out)
    if search_plot:
        lines += [
            "",
            f"Pareto front of the latest architecture search (short training): ![search front]({search_plot.name})",
        ]
    lines += [
        "",
        "Discarded experiments keep their full diff under `refs/autonas/discarded/<id>` in the workspace; "
        "`results.tsv` and `journal.md` there list everything that was tried.",
    ]
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(md, settings.run_id))
    (out / "summary.json").write_text(
        json.dumps(
            {
                "experiments": len(history),
                "kept": len(kept),
                "best_val_bpb": incumbent.val_bpb if incumbent else None,
                "first_val_bpb": first.val_bpb if first else None,
                "heldout_bpb": held,
                "elapsed_s": state.get("elapsed_s"),
                "agent_s": state.get("agent_s"),
                "worker_s": state.get("worker_s"),
                "best_dir": str(best) if best else None,
                "llm_calls": len(ledger.records),
                "llm_input_tokens": ledger.tokens[0],
                "llm_output_tokens": ledger.tokens[1],
                "llm_cost_usd": ledger.total_usd,
                "planned_by": {
                    src: sum(h.planner == src for h in history) for src in sorted({h.planner for h in history})
                },
            },
            indent=2,
        )
    )
    return out / "report.md"


def _latest_search_plot(history: list[HistoryEntry], out: Path) -> Path | None:
    """Copy the latest search's pareto.png next to the report (the workspace's runs/ is not committed); a worker's
    file, so only a regular one is copied, never through a link."""
    for h in reversed(history):
        src = Path(h.run_dir or "") / "pareto.png"
        if isinstance(h.plan, SearchPlan):
            dst = out / "search_pareto.png"
            try:
                if copy_regular(src, dst, 64 * 2**20):
                    return dst
            except UnsafeFile:
                return None
    return None


def _llm_line(llms: str, ledger: CostLedger) -> str:
    if not ledger.records:
        return llms + ". No LLM calls."
    failed = sum(not r.ok for r in ledger.records)
    tin, tout = ledger.tokens
    return (
        f"{llms}. {len(ledger.records)} LLM calls ({failed} without a usable answer), "
        f"{tin:,} input and {tout:,} output tokens, ${ledger.total_usd:.4f} (per call: `llm_calls.jsonl`)."
    )


def _html(md: str, title: str) -> str:
    """A plain HTML rendering of the Markdown report (tables, headings, the plot), without dependencies."""
    body, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                continue
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif "![" in line:
            text, _, rest = line.partition("![")
            alt, _, src = rest.partition("](")
            body.append(f"<p>{html.escape(text)}</p>" if text.strip() else "")
            body.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt.rstrip("]"))}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"
