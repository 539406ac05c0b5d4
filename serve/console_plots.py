"""The run page's two plots as small inline SVG, drawn here: no chart library, nothing fetched, cheap enough to
redraw on every live update.

- bpb over time: each measured experiment at the minute it finished, coloured by decision, with the best kept bpb so
  far as a step line;
- bpb against int8 size (log scale) with the Pareto front (smaller and better): :func:`front_2d`.

Every label is escaped: an experiment id or decision comes from a file in the run folder.
"""

from __future__ import annotations

import math
from html import escape

from serve.console_runs import Experiment

W, H = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 40
COLOURS = {"keep": "#2ca02c", "discard": "#9aa5b1", "close": "#ff7f0e", "repeat": "#1f77b4", "crash": "#d62728"}


def front_2d(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (smaller is better on each), in size order: the
    same set as :func:`nas.pareto.pareto_front`, by one sort and a sweep (that one sorts every front, quadratic in
    the points, which is most of a 200-experiment page's time)."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front: list[int] = []
    best = math.inf
    for i in order:
        x, y = points[i]
        if y < best or (front and points[front[-1]] == (x, y)):
            front.append(i)
            best = y
    return front


def _scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202 - a small closure
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _frame(
    title: str, xlabel: str, body: list[str], xticks: list[tuple[float, str]], yticks: list[tuple[float, str]]
) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="plot" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="plot-area"/>',
    ]
    for x, label in xticks:
        parts.append(
            f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" class="tick" text-anchor="middle">{escape(label)}</text>'
        )
    for y, label in yticks:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{escape(label)}</text>')
    parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" class="axis" text-anchor="middle">{xlabel}</text>')
    parts.append(
        f'<text x="12" y="{(TOP + H - BOTTOM) / 2}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 12 {(TOP + H - BOTTOM) / 2})">val bits per byte</text>'
    )
    return "".join(parts + body + ["</svg>"])


def _empty(title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" class="plot" role="img">'
        f'<text x="10" y="34" class="axis">{escape(title)}: no measured experiment yet</text></svg>'
    )


def _dot(x: float, y: float, e: Experiment, extra: str = "") -> str:
    colour = COLOURS.get(e.decision, "#555")
    tip = f"{e.id} {e.decision} bpb {e.val_bpb:.4f}" + extra
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"><title>{escape(tip)}</title></circle>'


def bpb_over_time(experiments: list[Experiment], started_at: float) -> str:
    title = "val bpb over time"
    pts = [(e.finished_at - started_at, e) for e in experiments if e.val_bpb is not None and e.finished_at is not None]
    if not pts:
        return _empty(title)
    pts.sort(key=lambda p: p[0])
    ts = [t / 60 for t, _ in pts]
    ys = [e.val_bpb for _, e in pts if e.val_bpb is not None]
    ylo, yhi = min(ys), max(ys)
    pad = (yhi - ylo) * 0.08 or 0.05
    sx = _scale(0.0, max(max(ts), 1e-3), LEFT + 6, W - RIGHT - 6)
    sy = _scale(ylo - pad, yhi + pad, H - BOTTOM, TOP)
    body, best, steps = [], math.inf, []
    for t, (_, e) in zip(ts, pts, strict=True):
        assert e.val_bpb is not None
        if e.decision == "keep" and e.val_bpb < best:
            best = e.val_bpb
            steps.append((sx(t), sy(best)))
        body.append(_dot(sx(t), sy(e.val_bpb), e, f" at {t:.1f} min"))
    if steps:
        path = f"M{steps[0][0]:.1f},{steps[0][1]:.1f}"
        for x, y in steps[1:]:
            path += f" H{x:.1f} V{y:.1f}"
        path += f" H{W - RIGHT - 6}"
        body.insert(0, f'<path d="{path}" class="incumbent"><title>best kept so far</title></path>')
    xt = [(sx(v), f"{v:.1f}") for v in _ticks(0.0, max(ts))]
    yt = [(sy(v), f"{v:.3f}") for v in _ticks(ylo - pad, yhi + pad)]
    return _frame(title, "minutes since the run started", body, xt, yt)


def bpb_vs_size(experiments: list[Experiment]) -> str:
    title = "val bpb against int8 size"
    pts = [e for e in experiments if e.val_bpb is not None and e.int8_mb]
    if not pts:
        return _empty(title)
    xs = [math.log10(e.int8_mb or 1e-9) for e in pts]
    ys = [e.val_bpb or 0.0 for e in pts]
    xpad = (max(xs) - min(xs)) * 0.08 or 0.1
    ypad = (max(ys) - min(ys)) * 0.08 or 0.05
    sx = _scale(min(xs) - xpad, max(xs) + xpad, LEFT, W - RIGHT)
    sy = _scale(min(ys) - ypad, max(ys) + ypad, H - BOTTOM, TOP)
    front = front_2d([(e.int8_mb or 0.0, e.val_bpb or 0.0) for e in pts])
    body = []
    if front:
        path = f"M{sx(xs[front[0]]):.1f},{sy(ys[front[0]]):.1f}"
        for i in front[1:]:
            path += f" H{sx(xs[i]):.1f} V{sy(ys[i]):.1f}"
        body.append(f'<path d="{path}" class="front"><title>Pareto front (size, bpb)</title></path>')
    for x, y, e in zip(xs, ys, pts, strict=True):
        body.append(_dot(sx(x), sy(y), e, f", {e.int8_mb:.3f} MB int8"))
    xt = [(sx(v), f"{10**v:.3g}") for v in _ticks(min(xs) - xpad, max(xs) + xpad)]
    yt = [(sy(v), f"{v:.3f}") for v in _ticks(min(ys) - ypad, max(ys) + ypad)]
    return _frame(title, "int8 size (MB, log scale)", body, xt, yt)
