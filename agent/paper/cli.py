"""The ``autonas paper`` command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from agent.llm import LLMSpec, make_client
from harness.cli_support import console, err_console, user_errors
from harness.errors import UserError

RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def resolve_run(run: str, runs_dir: Path) -> Path:
    """A run id under ``runs_dir`` (checked against path tricks) or a run folder's path."""
    as_path = Path(run).expanduser()
    if as_path.is_dir() and (as_path / "run.json").exists():
        return as_path
    if not RUN_ID.match(run) or run in (".", ".."):
        raise UserError(f"{run!r} is neither a run id nor a run folder")
    folder = runs_dir / run
    if not folder.is_dir():
        raise UserError(f"no run {run!r} in {runs_dir}")
    return folder


@user_errors
def paper_command(
    run: Annotated[str, typer.Argument(help="run id (in --runs-dir) or a run folder")],
    runs_dir: Annotated[Path, typer.Option()] = Path("runs"),
    out: Annotated[
        Path | None, typer.Option(help="folder for paper.tex, figures and paper.pdf (default RUN/paper)")
    ] = (None),
    llm: Annotated[
        Literal["offline", "anthropic", "openai"], typer.Option(help="who writes the prose (numbers never)")
    ] = "offline",
    llm_model: Annotated[str | None, typer.Option(help="the LLM's model name")] = None,
    base_url: Annotated[str | None, typer.Option(help="an OpenAI/Anthropic-compatible server")] = None,
) -> None:
    """Write a research paper (LaTeX, figures, BibTeX, PDF) from a run; every number comes from the run's files."""
    folder = resolve_run(run, runs_dir)
    client = make_client(LLMSpec(provider=llm, model=llm_model, base_url=base_url), "paper")
    # GitPython (for the commits' trailers) refuses to import where git is not installed: `autonas` starts without it
    from agent.paper.write import write_paper

    result = write_paper(folder, out or folder / "paper", client)
    for note in result.notes:
        err_console.print(note, highlight=False, markup=False, soft_wrap=True)
    if not result.finished_run:
        err_console.print("the run is still going: the paper says so on its first page", highlight=False)
    console.print(f"paper: {result.pdf or result.folder / 'paper.tex'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("paper")(paper_command)
