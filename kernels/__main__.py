"""``python -m kernels ...``: the compression worker's CLI without the agent."""

from kernels.cli import make_app

if __name__ == "__main__":
    make_app()(prog_name="python -m kernels")
