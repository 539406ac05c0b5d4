"""``autonas serve``: the model API and the console over a runs folder, in one process, with no other service."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from harness.cli_support import err_console, user_errors
from harness.errors import UserError
from serve.runtime_choice import RUNTIME_CHOICES

API_KEY_ENV = "AUTONAS_SERVE_API_KEY"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name or address may be reached from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int) -> None:
    """A clear line now, rather than uvicorn's traceback later, when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


@user_errors
def serve_command(
    runs_dir: Annotated[
        Path,
        typer.Option("--runs-dir", help="Offer every run's kept model (RUN/best) and show the runs in the console."),
    ] = Path("runs"),
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Also offer this model folder: PATH or NAME=PATH (repeatable).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --api-key.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help=f"Require this bearer key on /v1 (or set {API_KEY_ENV}).")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Sequences decoded together per model.")] = 16,
    max_waiting: Annotated[int, typer.Option(min=1, max=10_000, help="Queued requests before 429.")] = 64,
    max_loaded_mb: Annotated[float, typer.Option(min=1, help="Weights kept loaded, all models together.")] = 2048.0,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="What decodes: auto (each folder's measured fastest that batches: ONNX int8/fp32, else PyTorch), "
            "torch, onnx or onnx-int8.",
        ),
    ] = "auto",
) -> None:
    """Serve the runs' models behind an OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions)."""
    if runtime not in RUNTIME_CHOICES:
        raise UserError(f"--runtime {runtime!r}: use one of {', '.join(RUNTIME_CHOICES)}")
    # deliberate: the app, the engine and the registry import torch; the checks above and `autonas --help` need none
    from serve.app import ServeSettings, create_app
    from serve.engine import EngineOptions
    from serve.registry import parse_model_option

    key = api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and key is None:
        raise UserError(
            f"--host {host} would let other machines reach the models and the runs; give --api-key (or {API_KEY_ENV})"
        )
    named = dict(parse_model_option(m) for m in model or [])
    if not runs_dir.is_dir() and not named:
        raise UserError(f"no models to serve: {runs_dir} is not a folder and no --model was given")
    check_bind(host, port)
    settings = ServeSettings(
        runs_dir=runs_dir if runs_dir.is_dir() else None,
        models=named,
        api_key=key,
        max_loaded_mb=max_loaded_mb,
        engine=EngineOptions(max_batch=max_batch, max_waiting=max_waiting, runtime=runtime),
    )
    err_console.print(
        f"serving on http://{host}:{port}/v1 ({len(named)} named models, runs in {runs_dir}; runtime {runtime}); "
        f"console at http://{host}:{port}/console/"
    )
    # a console page following a live run holds an event stream open: Ctrl-C ends it after a few seconds
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
