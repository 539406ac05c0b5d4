"""A search with rungs survives SIGKILL: killed after rung-1 results and a promotion, the same command with
``--resume`` completes, trains no finished trial again, promotes by the noise rule on what was recorded, stays
within ``--token-budget``, and writes results.tsv / pareto.json that agree with each other.

Everything is read from the files the search writes: the trial folders (``log.txt`` says each training's start),
the Optuna journal (replayed in order, it says which trials each promotion saw), ``rungs.json``, results.tsv and
pareto.json. No fixed sleep decides when to kill: the test watches the folders.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nas.pareto import pareto_front
from nas.rungs import next_promotion
from nas.space import get_space

REPO = Path(__file__).resolve().parents[1]
TOKEN_BUDGET = 90_000
AMBIGUOUS_S = 1.0  # a replicate finished this close to a promotion may or may not have been seen by it


def _command(out: Path, space: Path, corpus: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nas",
        "nas",
        "search",
        "--out",
        str(out),
        "--space",
        str(space),
        "--strategy",
        "evolution",
        "--inherit",
        "--rungs",
        "1/9,1/3,1",
        "--max-budget",
        "27ktok",
        "--token-budget",
        f"{TOKEN_BUDGET}tok",
        "--replicates",
        "1",
        "--eta",
        "3",
        "--trials",
        "9",
        "--population",
        "4",
        "--no-screen",
        "--eval-bytes",
        "4000",
        "--batch-size",
        "8",
        "--workers",
        "2",  # two trainings at once: a promotion is decided while another promoted trial still runs
        "--corpus",
        str(corpus),
        "--quiet",
    ]


def _starts(folder: Path) -> int:
    """Trainings begun from scratch in a trial folder (a resume from a checkpoint logs 'resumed from' instead)."""
    log = folder / "log.txt"
    return log.read_text().count(" start ") if log.exists() else 0


@dataclass
class _Trial:
    stage: int
    number: int
    state: int = 0  # optuna TrialState value: 0 RUNNING, 1 COMPLETE, 2 PRUNED, 3 FAIL, 4 WAITING
    values: list[float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # time.time() of its RUNNING


@dataclass(frozen=True)
class _Decision:
    """One promotion out of ``stage``, as the journal shows it when the promoted trial got its parent."""

    stage: int  # the rung it left
    parent: int
    at: float  # wall clock of the ask (the decision was made just before)
    offset: int  # byte offset of its journal line
    ok: list[tuple[int, list[float]]]  # the rung's ok trials then: (number, values), by number
    went_up: set[int]  # parents already promoted out of that rung then


def _replay(journal: Path) -> list[_Decision]:
    """Every promotion of the journal, with the rung's state at that moment (a torn last line is skipped, as the
    storage skips it)."""
    stage_of: list[int] = []  # study id -> stage
    trials: list[_Trial] = []  # trial id -> trial
    per_study: dict[int, int] = {}
    decisions: list[_Decision] = []
    offset = 0
    with open(journal, "rb") as fh:
        for raw in fh:
            here, offset = offset, offset + len(raw)
            try:
                op = json.loads(raw)
            except ValueError:
                continue
            code = op["op_code"]
            if code == 0:
                name = op["study_name"]
                stage_of.append(int(name.rsplit(".stage", 1)[1]) if ".stage" in name else 1)
            elif code == 4:
                sid = op["study_id"]
                number = per_study.get(sid, 0)
                per_study[sid] = number + 1
                t = _Trial(stage_of[sid], number, int(op.get("state", 0)))
                t.attrs.update(op.get("user_attrs") or {})
                if t.state == 0 and op.get("datetime_start"):
                    t.started = datetime.fromisoformat(op["datetime_start"]).timestamp()
                trials.append(t)
            elif code == 6:
                t = trials[op["trial_id"]]
                t.state = int(op["state"])
                if op.get("values") is not None:
                    t.values = list(op["values"])
                if t.state == 0 and op.get("datetime_start"):
                    t.started = datetime.fromisoformat(op["datetime_start"]).timestamp()
            elif code == 8:
                t = trials[op["trial_id"]]
                t.attrs.update(op["user_attr"])
                if "parent" in op["user_attr"] and t.stage > 1:
                    below = t.stage - 1
                    ok = [
                        (u.number, list(u.values or []))
                        for u in trials
                        if u.stage == below and u.state == 1 and u.attrs.get("status") == "ok"
                    ]
                    went_up = {
                        u.attrs["parent"] for u in trials if u.stage == t.stage and u is not t and "parent" in u.attrs
                    }
                    assert t.started is not None
                    decisions.append(_Decision(below, int(op["user_attr"]["parent"]), t.started, here, ok, went_up))
    return decisions


def _sigmas(out: Path, stage: int, ok_numbers: set[int], values: dict[int, float], at: float) -> set[float]:
    """The sigma a promotion at ``at`` can have seen: replicate pairs of the rung finished before it (by their
    metrics.json's time); a replicate finished within AMBIGUOUS_S of it may have been seen or not."""
    sure: list[tuple[float, float]] = []
    maybe: list[tuple[float, float]] = []
    for folder in sorted((out / "trials").glob(f"s{stage}-*-r1")):
        number = int(folder.name.split("-")[1])
        metrics = folder / "metrics.json"
        if number not in ok_numbers or not metrics.exists():
            continue
        m = json.loads(metrics.read_text())
        if m.get("status") != "ok":
            continue
        when = metrics.stat().st_mtime
        pair = (values[number], float(m["val_bpb"]))
        if when < at - AMBIGUOUS_S:
            sure.append(pair)
        elif when <= at + AMBIGUOUS_S:
            maybe.append(pair)
    out_sigmas = set()
    for k in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, k):
            pairs = sure + list(extra)
            out_sigmas.add((sum((a - b) ** 2 for a, b in pairs) / (2 * len(pairs))) ** 0.5 if pairs else 0.0)
    return out_sigmas


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.tsv") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.slow
def test_a_rung_search_killed_mid_promotion_resumes(tmp_path: Path, small_corpus_dir: Path) -> None:
    out = tmp_path / "s"
    space = tmp_path / "space.json"
    space.write_text(
        get_space("tiny")
        .model_copy(
            update={
                "n_layers": (1, 2, 3, 4, 5),
                "d_model": (32, 48),
                "ffn_mult": (2.0, 3.0, 4.0, 5.0),
                "context_length": (64,),
            }
        )
        .model_dump_json()
    )
    cmd = _command(out, space, small_corpus_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    trials = out / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # rung-1 results and a promotion that started training
        rung1 = list(trials.glob("s1-?????/metrics.json")) if trials.exists() else []
        if len(rung1) >= 3 and list(trials.glob("s2-?????/log.txt")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the killed workers are gone (their group was killed with them)
    killed_at = (out / "study.journal").stat().st_size
    folders_then = {p: _starts(p) for p in trials.iterdir()}
    finished_then = {
        p: ((p / "metrics.json").stat().st_mtime_ns, (p / "log.txt").read_text())
        for p in folders_then
        if (p / "metrics.json").exists()
    }
    assert any(p.name.startswith("s2-") for p in folders_then)

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # 1. no finished trial (or replicate) was trained again; an interrupted one started again at most once
    for folder, (mtime, log) in finished_then.items():
        assert (folder / "metrics.json").stat().st_mtime_ns == mtime, folder.name
        assert (folder / "log.txt").read_text() == log, folder.name
    for folder in trials.iterdir():
        assert (folder / "metrics.json").is_file(), f"{folder.name} never finished"
        allowed = 2 if folder in folders_then and folder not in finished_then else 1
        assert 1 <= _starts(folder) <= allowed, (folder.name, _starts(folder))
    rows = _rows(out)
    assert not [r for r in rows if r["state"] == "running"]
    trained = [r for r in rows if r["status"] not in ("rejected", "duplicate", "not_run", "lost")]
    names = {
        f"s{r['stage']}-{int(r['trial']):05d}" + (f"-r{r['replicate']}" if r["replicate"] else "") for r in trained
    }
    assert names == {p.name for p in trials.iterdir()}  # one folder per training, one row per folder
    ok1 = [r for r in rows if r["stage"] == "1" and r["status"] == "ok" and not r["replicate"]]
    assert len({r["arch_hash"] for r in ok1}) == len(ok1)  # no architecture trained twice at rung 1

    # 2. every promotion, before and after the resume, is what the noise rule gives on the rung's recorded results
    rungs = json.loads((out / "rungs.json").read_text())
    decisions = _replay(out / "study.journal")
    after = [d for d in decisions if d.offset >= killed_at]
    assert decisions and after, "the resumed search made no promotion to check"
    for d in decisions:
        numbers = [n for n, _ in d.ok]
        values = dict((n, v[0]) for n, v in d.ok)
        promoted = {i for i, n in enumerate(numbers) if n in d.went_up}
        choices = {
            next_promotion([v for _, v in d.ok], promoted, rungs["eta"], sigma, rungs["noise_z"], rungs["promote_cap"])
            for sigma in _sigmas(out, d.stage, set(numbers), values, d.at)
        }
        assert d.parent in {numbers[i] for i in choices if i is not None}, (d, choices)
    promotions = [r for r in rows if r["stage"] != "1" and not r["replicate"]]
    assert len(promotions) == len(decisions)  # a promotion the journal shows is a row, and no row is unexplained

    # 3. the tokens trained in all stay within --token-budget, and pareto.json counts them as results.tsv does
    pareto = json.loads((out / "pareto.json").read_text())
    total = sum(int(r["tokens_trained"] or 0) for r in trained)
    assert pareto["tokens_trained"] == total <= TOKEN_BUDGET

    # 4. pareto.json agrees with results.tsv: counts, the front (each architecture at the furthest rung it reached,
    # its non-dominated members), their values, and the rungs' noise
    counts: dict[str, int] = {}
    for r in rows:
        key = f"stage{r['stage']}{'_replicate' if r['replicate'] else ''}_{r['status']}"
        counts[key] = counts.get(key, 0) + 1
    assert pareto["counts"] == counts
    furthest: dict[str, dict[str, str]] = {}
    for r in sorted((r for r in rows if r["status"] == "ok" and not r["replicate"]), key=lambda r: int(r["stage"])):
        furthest[r["arch_hash"]] = r
    last = list(furthest.values())
    front = [last[i] for i in pareto_front([[float(r["val_bpb"]), float(r["size_bytes_int8"])] for r in last])]
    assert {(int(r["stage"]), int(r["trial"])) for r in front} == {(m["stage"], m["trial"]) for m in pareto["front"]}
    by_key = {(int(r["stage"]), int(r["trial"])): r for r in front}
    for m in pareto["front"]:
        r = by_key[(m["stage"], m["trial"])]
        assert m["objectives"]["bpb"] == pytest.approx(float(r["val_bpb"]), rel=1e-5)
        assert m["objectives"]["bytes_int8"] == float(r["size_bytes_int8"]) and m["arch_hash"] == r["arch_hash"]
    for noise in pareto["rungs"]["noise"]:
        pairs = [r for r in rows if r["replicate"] and r["stage"] == str(noise["rung"]) and r["status"] == "ok"]
        assert noise["replicate_pairs"] == len(pairs)
    assert pareto["rungs"]["noise"] == rungs["noise"]
