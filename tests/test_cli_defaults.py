"""An option's default is the default of the settings field it fills.

``autonas run`` takes its defaults from RunSettings itself. The workers' commands cannot import their config
models at start-up (nas.train and kernels.compress import torch, and every ``autonas`` command, ``--help``
included, imports the workers' CLIs), so their options keep literal defaults: this test holds them to the
models' fields, which the search, the trials and the agent use without the CLI."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from pydantic import BaseModel

from agent.cli import app
from agent.llm import LLMSpec
from agent.settings import RunSettings
from distill.losses import KDLossConfig
from kernels.compress import CompressConfig
from nas.search import SearchConfig
from nas.train import TrainConfig


def _option_defaults(path: str) -> dict[str, Any]:
    cmd: Any = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return {p.name: p.default for p in cmd.params if p.param_type_name == "option"}  # typer may vendor click


SAME_NAME = object()
# command -> (settings model, {option: field}); SAME_NAME for an option named as its field
CASES: dict[str, list[tuple[type[BaseModel], dict[str, Any]]]] = {
    "run": [
        (
            RunSettings,
            {
                "budget": SAME_NAME,
                "experiment_budget": SAME_NAME,
                "grace": SAME_NAME,
                "max_experiments": SAME_NAME,
                "max_cost": "max_cost_usd",
                "max_gpu_hours": SAME_NAME,
                "search_trials": SAME_NAME,
                "tokenizer": SAME_NAME,
                "corpus": SAME_NAME,
                "eval_bytes": SAME_NAME,
                "seed": SAME_NAME,
                "max_plan_attempts": SAME_NAME,
                "memory_mb": SAME_NAME,
                "claude_binary": SAME_NAME,
                "claude_model": SAME_NAME,
                "editor_max_turns": SAME_NAME,
                "editor_timeout": SAME_NAME,
            },
        ),
        (LLMSpec, {"planner": "provider", "llm_timeout": "timeout_s"}),
    ],
    "train": [
        (
            TrainConfig,
            {
                "batch_size": SAME_NAME,
                "grad_accum": SAME_NAME,
                "lr": SAME_NAME,
                "seed": SAME_NAME,
                "device": SAME_NAME,
                "compile": SAME_NAME,
                "eval_bytes": SAME_NAME,
                "checkpoint_every": "checkpoint_every_s",
                "max_seconds": SAME_NAME,
            },
        )
    ],
    "distill": [
        (
            TrainConfig,
            {
                "batch_size": SAME_NAME,
                "lr": SAME_NAME,
                "seed": SAME_NAME,
                "device": SAME_NAME,
                "eval_bytes": SAME_NAME,
                "max_seconds": SAME_NAME,
            },
        ),
        (KDLossConfig, {"loss": "kind", "temperature": SAME_NAME, "ce_weight": SAME_NAME, "skew": SAME_NAME}),
    ],
    "compress": [
        (
            CompressConfig,
            {
                "int8": SAME_NAME,
                "int8_backend": SAME_NAME,
                "prune": SAME_NAME,
                "recover_lr": SAME_NAME,
                "recover_distill": SAME_NAME,
                "eval_bytes": SAME_NAME,
                "seed": SAME_NAME,
                "onnx": SAME_NAME,
            },
        )
    ],
    "nas search": [
        (
            SearchConfig,
            {
                "space": SAME_NAME,
                "objectives": SAME_NAME,
                "strategy": SAME_NAME,
                "trials": SAME_NAME,
                "budget": SAME_NAME,
                "cap_trials": SAME_NAME,
                "stage1": "stage1_budget",
                "stage2": "stage2_budget",
                "eta": SAME_NAME,
                "stage2_max": SAME_NAME,
                "screen": SAME_NAME,
                "screen_proxy": SAME_NAME,
                "screen_dataset": SAME_NAME,
                "population": SAME_NAME,
                "seed": SAME_NAME,
                "executor": SAME_NAME,
                "workers": SAME_NAME,
                "ray_address": SAME_NAME,
                "storage": SAME_NAME,
                "study_name": SAME_NAME,
                "tokenizer": SAME_NAME,
                "batch_size": SAME_NAME,
                "eval_bytes": SAME_NAME,
            },
        )
    ],
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_option_defaults_are_the_settings_defaults(command: str) -> None:
    options = _option_defaults(command)
    for model, fields in CASES[command]:
        for option, field in fields.items():
            field = option if field is SAME_NAME else field
            assert option in options, (command, option)
            assert options[option] == model.model_fields[field].default, (command, option, model.__name__, field)


def test_run_paths_and_editors_default_to_the_settings() -> None:
    options = _option_defaults("run")
    assert str(options["runs_dir"]) == RunSettings.model_fields["runs_dir"].default
    assert tuple(options["editor"].split(",")) == RunSettings.model_fields["editors"].default


def test_the_command_line_starts_without_torch() -> None:
    """Every ``autonas`` command, refused ones included, pays for its imports: the command tree itself (help, option
    checks, one-line refusals) must not import torch, which costs seconds; each command imports it after its checks."""
    import subprocess
    import sys

    probe = "import sys, agent.cli\nprint([m for m in ('torch', 'onnxruntime', 'ctranslate2') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
