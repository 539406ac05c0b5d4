"""The paper's figures, drawn from the run's numbers: quality against INT8 size and against latency, Pareto fronts
marked. Vector PDFs, so the figure's numbers are the table's numbers at any zoom."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from agent.paper.facts import RunFacts  # noqa: E402
from nas.pareto import pareto_front  # noqa: E402


def pareto_figure(facts: RunFacts, path: Path) -> bool:
    """bpb against INT8 size and against ms/token for every measured model; False when there is nothing to draw."""
    # (int8 MB, ms/token or None, bpb, kept) of every trained model with a size
    pts = [
        (e.size_bytes_int8 / 1e6, e.latency_ms_p50, e.val_bpb, e.kept)
        for e in facts.experiments
        if e.is_model and e.size_bytes_int8 and e.val_bpb is not None
    ]
    if not pts:
        return False
    timed = [(lat, bpb, kept) for _, lat, bpb, kept in pts if lat is not None]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(7.5 if timed else 4.2, 3.2), squeeze=False)
    panels: list[tuple[str, list[tuple[float, float, bool]]]] = [
        ("INT8 size (MB)", [(mb, bpb, kept) for mb, _, bpb, kept in pts])
    ]
    if timed:
        panels.append(("decode ms/token (batch 1)", timed))
    for ax, (label, panel) in zip(axes[0], panels, strict=True):
        xs, ys, kept = [p[0] for p in panel], [p[1] for p in panel], [p[2] for p in panel]
        ax.scatter(
            [x for x, k in zip(xs, kept, strict=True) if not k],
            [y for y, k in zip(ys, kept, strict=True) if not k],
            c="#9aa5b1",
            s=18,
            label="discarded",
        )
        ax.scatter(
            [x for x, k in zip(xs, kept, strict=True) if k],
            [y for y, k in zip(ys, kept, strict=True) if k],
            c="#2ca02c",
            s=24,
            label="kept",
        )
        front = sorted((xs[i], ys[i]) for i in pareto_front(list(zip(xs, ys, strict=True))))
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="#d62728", lw=1, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
