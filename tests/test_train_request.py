"""One training request, declared once: the train plan's config, the distil plan's and a search trial's spec are the
same model (the same flat JSON as before it existed), and one conversion makes the trainer's configuration."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.plans import DistillConfigPlan, PlanError, TrainConfigPlan, parse_plan
from harness.run_files import EVAL_BYTES
from nas.request import TrainRequest
from nas.space import ArchConfig
from nas.trial import TrialSpec

ARCH = ArchConfig().model_dump()


def test_the_plans_and_the_trial_spec_share_the_request() -> None:
    train = parse_plan({"kind": "train", "config": {"arch": ARCH, "budget": "8ktok", "seed": 3}, "rationale": "x"})
    distill = parse_plan(
        {"kind": "distill", "config": {"arch": ARCH, "budget": "8ktok", "loss": "rkl"}, "rationale": "x"}
    )
    spec = TrialSpec(number=1, arch=ArchConfig(**ARCH), budget="8ktok", out_dir="/tmp/t", seed=3)
    for config in (train.config, distill.config, spec):
        assert isinstance(config, TrainRequest)
    assert TrainRequest.model_fields.keys() <= TrialSpec.model_fields.keys() & DistillConfigPlan.model_fields.keys()
    shared = TrainRequest.model_fields.keys()
    assert {k: getattr(train.config, k) for k in shared} == {k: getattr(spec, k) for k in shared}


def test_old_shaped_plans_and_trial_specs_still_read() -> None:
    # the JSON a planner wrote and a worker got before the request was one type: the same keys, flat
    old_train = {"arch": ARCH, "budget": "60s", "lr": 0.001, "batch_size": 8, "seed": 2}
    assert TrainConfigPlan.model_validate(old_train).model_dump() == {
        **old_train,
        "arch": ArchConfig(**ARCH).model_dump(),
    }
    old_distill = {"teacher": "e001", **old_train, "loss": "fkl", "temperature": 2.0, "ce_weight": 0.5}
    assert set(DistillConfigPlan.model_validate(old_distill).model_dump()) == set(old_distill)
    old_spec = {
        "number": 4,
        "stage": 2,
        "arch": ARCH,
        "budget": "120s",
        "out_dir": "/tmp/s2-00004",
        "tokenizer": "byte",
        "batch_size": 16,
        "lr": 0.003,
        "seed": 0,
        "device": "auto",
        "eval_bytes": EVAL_BYTES,
        "time_limit_s": None,
        "deadline": None,
        "measure_latency": True,
    }
    spec = TrialSpec.model_validate_json(json.dumps(old_spec))
    assert spec.number == 4 and spec.stage == 2 and spec.budget == "120s"
    assert TrialSpec.model_validate_json(spec.model_dump_json()) == spec  # what an executor sends a worker


def test_a_planner_is_bounded_more_tightly_than_the_trainer() -> None:
    wide = {"arch": ARCH, "budget": "8ktok", "lr": 2.0, "batch_size": 1024}
    assert TrialSpec(number=0, out_dir="/tmp/t", **wide).lr == 2.0  # a search may ask what the trainer accepts
    with pytest.raises(PlanError, match="lr"):
        parse_plan({"kind": "train", "config": wide, "rationale": "x"})
    with pytest.raises(ValidationError, match="extra"):
        TrainRequest.model_validate({"arch": ARCH, "budget": "1s", "lr_schedule": "cosine"})


@pytest.mark.parametrize(
    ("budget", "seconds", "tokens"), [("90s", 90.0, None), ("250ktok", None, 250_000), ("2m", 120.0, None)]
)
def test_the_one_conversion_to_the_trainers_config(budget: str, seconds: float | None, tokens: int | None) -> None:
    request = TrainRequest(arch=ArchConfig(**ARCH), budget=budget, lr=0.01, batch_size=8, seed=7)
    cfg = request.train_config(device="cpu", eval_bytes=4096, max_seconds=30.0)
    assert (cfg.budget_s, cfg.budget_tokens) == (seconds, tokens)
    assert (cfg.lr, cfg.batch_size, cfg.seed) == (0.01, 8, 7)
    assert (cfg.device, cfg.eval_bytes, cfg.max_seconds) == ("cpu", 4096, 30.0)
