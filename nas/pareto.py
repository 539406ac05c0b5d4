"""Pareto tools for minimisation: non-dominated sorting, crowding distance and exact hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b everywhere and better somewhere (all objectives minimised).

    Both points score the same objectives, so a length mismatch is a caller's bug and raises.
    """
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indices of ``points`` grouped into fronts: front 0 is the Pareto set (Deb et al.'s fast sort)."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n
    fronts: list[list[int]] = [[]]
    for i in range(n):
        for j in range(n):
            if i != j and dominates(points[i], points[j]):
                dominated_by[i].append(j)
            elif i != j and dominates(points[j], points[i]):
                count[i] += 1
        if count[i] == 0:
            fronts[0].append(i)
    k = 0
    while fronts[k]:
        nxt: list[int] = []
        for i in fronts[k]:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        k += 1
        fronts.append(nxt)
    return fronts[:-1]


def pareto_front(points: Sequence[Point]) -> list[int]:
    return non_dominated_sort(points)[0] if points else []


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """Crowding distance of each member of one front (boundary points get infinity)."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: float("inf") for i in front}
    for m in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][m])
        lo, hi = points[ordered[0]][m], points[ordered[-1]][m]
        dist[ordered[0]] = dist[ordered[-1]] = float("inf")
        if hi == lo:
            continue
        # neighbour triples: the shifted copies are shorter by design, so zip stops at the shortest
        for a, b, c in zip(ordered, ordered[1:], ordered[2:], strict=False):
            dist[b] += (points[c][m] - points[a][m]) / (hi - lo)
    return dist


def rank_order(points: Sequence[Point]) -> list[int]:
    """All indices, best first: by front, then by crowding distance (more isolated first)."""
    out: list[int] = []
    for front in non_dominated_sort(points):
        crowd = crowding_distance(points, front)
        out.extend(sorted(front, key=lambda i: (-crowd[i], i)))
    return out


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Exact volume dominated by ``points`` and bounded by ``reference`` (slicing over the last axis).

    Points not strictly better than the reference in every objective add nothing. Exponential in the
    number of objectives but exact; fine for the 2-4 objectives and hundreds of points used here.
    """
    pts = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    d = len(reference)
    if d == 1:
        return reference[0] - min(p[0] for p in pts)
    pts = [pts[i] for i in pareto_front(pts)]
    if d == 2:
        pts.sort()
        volume, prev_y = 0.0, reference[1]
        for x, y in pts:
            if y < prev_y:
                volume += (reference[0] - x) * (prev_y - y)
                prev_y = y
        return volume
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else reference[-1]
        if upper > p[-1]:
            volume += hypervolume([q[:-1] for q in pts[: i + 1]], reference[:-1]) * (upper - p[-1])
    return volume
