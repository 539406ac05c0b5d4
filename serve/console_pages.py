"""The web console's routes under ``/console``: server-rendered pages (Jinja2 templates in ``serve/templates``),
local static files (``serve/static``: one stylesheet, one script; nothing from another site), the live stream of a
run page and the STOP action.

Every route checks the key first (:mod:`serve.console_auth`); an id that is not a valid run or experiment id is a
404 page, whatever it contains. Pages only read the runs folder; STOP writes the run's STOP file and nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from sandbox.redact import redact, secret_values
from serve import console_auth as auth
from serve.console_experiment import read_experiment
from serve.console_live import run_events
from serve.console_plots import bpb_over_time, bpb_vs_size
from serve.console_runs import Run, UnknownRun, list_runs, read_run, request_stop
from serve.registry import ModelRegistry

HERE = Path(__file__).parent
MAX_LOGIN_BYTES = 4096


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _num(value: float | None, fmt: str = ".4f", signed: bool = False) -> str:
    if value is None:
        return ""
    return format(value, ("+" if signed else "") + fmt)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def templates(secrets: tuple[str, ...]) -> Jinja2Templates:
    """The console's templates, with every value they print passed through :func:`sandbox.redact.redact` (Jinja's
    ``finalize``): whatever a run folder holds, no page shows a key or a tail of one."""
    out = Jinja2Templates(directory=str(HERE / "templates"))

    def mask(value: object) -> object:
        if isinstance(value, Markup):  # already-safe HTML (the plots, the live part): the mask is safe HTML too
            return Markup(redact(str(value), secrets))
        return redact(value, secrets) if isinstance(value, str) else value

    out.env.finalize = mask
    out.env.filters["duration"] = _duration
    out.env.filters["num"] = _num
    out.env.globals["when"] = _when
    return out


class NotSignedIn(Exception):
    """The console needs the key and the request has neither the cookie nor the bearer header."""


def mount_console(app: FastAPI, runs_dir: Path | None, api_key: str | None, registry: ModelRegistry) -> None:
    """Add the console's routes and static files to ``app`` (the same app as the model API)."""
    router = APIRouter(prefix="/console")
    TEMPLATES = templates(secret_values(extra=[api_key]))  # noqa: N806 - the one template set of this app

    def guard(request: Request) -> None:
        if not auth.key_given(request, api_key):
            raise NotSignedIn()

    def page(request: Request, name: str, status: int = 200, **context: object) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, name, {"signed_in": api_key is not None, **context}, status_code=status
        )

    def the_run(run_id: str) -> Run:
        if runs_dir is None:
            raise UnknownRun(run_id)
        return read_run(runs_dir, run_id)

    def live_html(run: Run) -> str:
        template = TEMPLATES.get_template("_run_live.html")
        return template.render(
            run=run,
            time_plot=bpb_over_time(run.experiments, run.started_at),
            size_plot=bpb_vs_size(run.experiments),
        )

    @router.get("/", response_class=HTMLResponse)
    def runs_list(request: Request) -> HTMLResponse:
        guard(request)
        return page(request, "runs.html", runs=list_runs(runs_dir), runs_dir=runs_dir)

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        guard(request)
        run = the_run(run_id)
        return page(request, "run.html", run=run, live=live_html(run))

    @router.get("/runs/{run_id}/events")
    def run_stream(request: Request, run_id: str) -> StreamingResponse:
        guard(request)
        run = the_run(run_id)  # 404 before a stream starts
        assert runs_dir is not None
        return StreamingResponse(
            run_events(request, runs_dir, run.id, live_html),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/runs/{run_id}/stop")
    def stop(request: Request, run_id: str) -> JSONResponse:
        guard(request)
        if request.headers.get(auth.ACTION_HEADER) != "stop":
            return JSONResponse({"error": "STOP is sent by the console's button (a header is missing)"}, 403)
        run = the_run(run_id)
        if not run.live:
            return JSONResponse({"error": f"the run is {run.state}: nothing to stop"}, 409)
        assert runs_dir is not None
        request_stop(runs_dir, run.id)
        return JSONResponse({"stopped": run.id, "note": "the run stops before its next experiment"})

    @router.get("/runs/{run_id}/experiments/{exp_id}", response_class=HTMLResponse)
    def experiment_page(request: Request, run_id: str, exp_id: str) -> HTMLResponse:
        guard(request)
        run = the_run(run_id)
        assert runs_dir is not None
        detail = read_experiment(run, exp_id, runs_dir, api_key)
        return page(request, "experiment.html", run=run, exp=detail)

    @router.get("/playground", response_class=HTMLResponse)
    def playground(request: Request, model: str | None = None) -> HTMLResponse:
        guard(request)
        models = [m.id for m in registry.entries()]
        return page(request, "playground.html", models=models, chosen=model if model in models else None)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None) -> HTMLResponse:
        return page(request, "login.html", next=auth.safe_next(next), error=None)

    @router.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        body = (await request.body())[:MAX_LOGIN_BYTES].decode("utf-8", "replace")
        form = parse_qs(body)
        given, target = form.get("key", [""])[0], auth.safe_next(form.get("next", [None])[0])
        if not auth.check_key(given, api_key):
            return page(request, "login.html", status=401, next=target, error="that is not the server's key")
        response = RedirectResponse(target, status_code=303)
        if api_key is not None:
            response.set_cookie(auth.COOKIE, auth.session_token(api_key), httponly=True, samesite="strict", path="/")
        return response

    @router.post("/logout")
    def logout() -> RedirectResponse:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, err: NotSignedIn) -> Response:
        if request.method == "GET" and not request.url.path.endswith("/events"):
            return RedirectResponse(f"/console/login?next={quote(request.url.path)}", status_code=303)
        return JSONResponse({"error": "sign in with the server's API key first"}, 401)

    @app.exception_handler(UnknownRun)
    async def unknown(request: Request, err: UnknownRun) -> HTMLResponse:
        return page(request, "missing.html", status=404, what=str(err)[:100])
