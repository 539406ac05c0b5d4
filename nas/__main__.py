"""``python -m nas ...``: the worker's CLI without the agent."""

from nas.cli import make_app

if __name__ == "__main__":
    make_app()(prog_name="python -m nas")
