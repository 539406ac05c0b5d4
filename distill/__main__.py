"""``python -m distill ...``: the distillation worker's CLI without the agent."""

from distill.cli import make_app

if __name__ == "__main__":
    make_app()(prog_name="python -m distill")
