"""Continuing an architecture search after a kill: only the same plan's study is continued, in its own folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from agent.progress import PROGRESS
from harness.errors import UserError
from nas.search import SearchConfig
from nas.storage import open_storage, study_exists

if TYPE_CHECKING:  # the plan module calls this one: a type only, no import circle
    from agent.plans import SearchPlan

PLAN_STAMP = "agent_plan.json"


def search_continuation(out: Path, plan: SearchPlan) -> list[str]:
    """``["--resume"]`` when a nas_search experiment is re-run (after a kill) in a folder that holds its study: the
    search continues, its finished trials count. The folder carries a stamp of the plan that started the study, so
    a study of another plan is never continued: that folder is moved aside (kept for review) and the search starts
    afresh, as it does when the study is missing or unreadable."""
    stamp = {"kind": plan.kind, "config": plan.config.model_dump(), "code_change": plan.code_change}
    stamp_path = out / PLAN_STAMP
    if (out / "study.journal").exists():
        try:
            same_plan = json.loads(stamp_path.read_text()) == stamp
        except (OSError, ValueError):
            same_plan = False
        if same_plan:
            try:
                if study_exists(open_storage(None, out), SearchConfig.model_fields["study_name"].default):
                    return ["--resume"]
            except UserError:
                pass
        n = 1
        while out.with_name(f"{out.name}.stale-{n}").exists():
            n += 1
        aside = out.with_name(f"{out.name}.stale-{n}")
        out.rename(aside)
        out.mkdir()
        PROGRESS.print(
            f"     [dim]{out.name}: the folder held a study this plan cannot continue; moved to {aside.name}[/]"
        )
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    return []
