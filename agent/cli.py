"""The ``autonas`` command: one Typer app that gathers the workers' commands."""

from __future__ import annotations

import typer

from agent.commands import register as register_agent
from agent.paper.cli import register as register_paper
from distill.cli import register as register_distill
from harness.cli_support import OneLineErrors
from kernels.cli import register as register_kernels
from kernels.export_cli import register as register_export
from nas.cli import register as register_nas
from serve.cli import register as register_serve

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
