"""The ``autonas`` command: one Typer app that gathers the workers' commands.

It is also where packages that may not import each other are joined: ``autonas eval humaneval --runtime`` (in
``distill``) decodes a run folder with the model server's engine (in ``serve``), handed in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agent.commands import register as register_agent
from agent.paper.cli import register as register_paper
from distill.cli import register as register_distill
from distill.humaneval_cli import FolderRuntimes, register_folder_runtimes
from harness.cli_support import OneLineErrors
from kernels.cli import register as register_kernels
from kernels.export_cli import register as register_export
from nas.cli import register as register_nas
from serve.cli import register as register_serve
from serve.runtime_choice import RUNTIME_CHOICES

app = typer.Typer(
    help="AutoNAS-CodeLM: architecture search, training, distillation and compression of tiny code LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,  # usage errors in one line and exit 2, like every UserError
)
register_agent(app)
register_nas(app)
register_distill(app)
register_kernels(app)
register_export(app)
register_serve(app)
register_paper(app)


def _engine_folder_source(folder: Path, runtime: str) -> Any:
    """A run folder decoded by the server's engine on ``runtime`` (torch loads only when a folder is scored)."""
    from serve.folder_source import EngineFolderSource

    return EngineFolderSource(folder, runtime)


register_folder_runtimes(FolderRuntimes(RUNTIME_CHOICES, _engine_folder_source))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
