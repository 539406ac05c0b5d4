"""Live updates of a run page as server-sent events: the page opens one ``EventSource`` and the server pushes the
re-rendered live part whenever the run's files change, so a new experiment appears without a reload.

The server looks at the run's files (modification time and size, :func:`serve.console_runs.fingerprint`) every
:data:`POLL_S` seconds and reads the run again only when they moved; reading runs in a worker thread so the event
loop keeps serving the model API. When the run is no longer live (finished or crashed) a last update and an ``end``
event go out and the stream closes, so the browser does not reconnect forever.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import Request

from serve.console_runs import Run, UnknownRun, fingerprint, read_run, run_dir

POLL_S = 1.0
HEARTBEAT_S = 15.0
STATE_CHECK_S = 10.0


def sse(event: str, payload: dict[str, object]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


async def run_events(request: Request, runs_dir: Path, run_id: str, render: Callable[[Run], str]) -> AsyncIterator[str]:
    """``update`` events carrying the live part's HTML (``{"html": ..., "state": ...}``), then ``end``."""
    seen: tuple[float, ...] | None = None
    last_sent = last_read = time.monotonic()
    while not await request.is_disconnected():
        try:
            folder = run_dir(runs_dir, run_id)
        except UnknownRun:
            yield sse("end", {"reason": "the run folder is gone"})
            return
        now_print = await asyncio.to_thread(fingerprint, folder)
        # the files moved, or a while passed (a run that stops writing turns from running to crashed)
        if now_print != seen or time.monotonic() - last_read > STATE_CHECK_S:
            last_read = time.monotonic()
            try:
                run = await asyncio.to_thread(read_run, runs_dir, run_id)
            except UnknownRun:
                yield sse("end", {"reason": "the run folder is gone"})
                return
            if now_print != seen or not run.live:
                seen = now_print
                html = await asyncio.to_thread(render, run)
                yield sse("update", {"html": html, "state": run.state, "experiments": len(run.experiments)})
                last_sent = time.monotonic()
            if not run.live:
                yield sse("end", {"state": run.state})
                return
        if time.monotonic() - last_sent > HEARTBEAT_S:
            yield ": still here\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_S)
