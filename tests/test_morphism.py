"""Function-preserving growth (nas.morphism): a grown child computes its parent's logits before any training."""

from __future__ import annotations

import pytest
import torch

from nas.model import build_model
from nas.morphism import grow, plan_inheritance
from nas.space import ArchConfig

PARENT = ArchConfig(
    n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, head_size=16, vocab_size=256, context_length=64
)


def _trained_like(arch: ArchConfig, seed: int = 0):  # noqa: ANN202
    """A parent whose weights are not the initialiser's (norm gains and residual projections off their init)."""
    model = build_model(arch, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    ("changes", "moves"),
    [
        ({"d_ff": 160}, ("wider FFN",)),
        ({"n_heads": 6, "n_kv_heads": 3}, ("more heads",)),
        ({"n_layers": 5}, ("deeper",)),
        ({"d_ff": 128, "n_layers": 3, "n_heads": 8, "n_kv_heads": 4}, ("wider FFN", "more heads", "deeper")),
        ({"activation": "gelu", "d_ff": 128}, ("wider FFN",)),  # a GELU parent: no gate to copy
    ],
)
@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_a_grown_child_has_its_parents_logits(changes: dict, moves: tuple, pos: str) -> None:
    base = PARENT.model_copy(update={"pos": pos})
    parent_arch = base.model_copy(update={"activation": "gelu"}) if "activation" in changes else base
    parent = _trained_like(parent_arch)
    child_arch = ArchConfig(**{**parent_arch.model_dump(), **changes})
    child, how = grow(parent, child_arch, seed=1)
    assert how.preserved and how.moves == moves
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(child.eval()(ids), parent(ids), rtol=1e-5, atol=1e-5)
    n_child = sum(p.numel() for p in child.parameters())
    assert n_child > sum(p.numel() for p in parent.parameters())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"d_model": 96}, "d_model changed"),
        ({"activation": "gelu"}, "activation changed"),
        ({"d_ff": 64}, "smaller"),
        ({"n_layers": 1}, "smaller"),
        ({"n_heads": 8}, "per key/value head"),  # 4/2 -> 8/2: old heads would move to other kv groups
        ({"head_size": 32}, "head size"),
    ],
)
def test_a_change_that_cannot_keep_the_function_starts_from_scratch(changes: dict, reason: str) -> None:
    child_arch = ArchConfig(**{**PARENT.model_dump(), **changes})
    how = plan_inheritance(PARENT, child_arch)
    assert not how.preserved and reason in how.reason
    parent = _trained_like(PARENT)
    child, how2 = grow(parent, child_arch, seed=3)
    assert how2 == how and how.describe().startswith("scratch: ")
    fresh = build_model(child_arch, seed=3)
    for (name, a), b in zip(child.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_wider_ffns_copies_can_diverge() -> None:
    """Split units share their outgoing weight but are real copies: one gradient step makes them differ."""
    parent = _trained_like(PARENT)
    child, _ = grow(parent, PARENT.model_copy(update={"d_ff": 192}), seed=4)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    loss = torch.nn.functional.cross_entropy(child(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grad = child.layers[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_trial_starts_from_its_parents_folder_once(tmp_path) -> None:  # noqa: ANN001
    """run_trial's start: grown from the parent's model.safetensors (same logits), recorded in init.json, and read
    back (never grown again) when the trial is run a second time, e.g. after a kill."""
    from safetensors.torch import load_model, save_model

    from nas.trial import TrialSpec, prepare_start

    parent_dir = tmp_path / "trials" / "s1-00003"
    parent_dir.mkdir(parents=True)
    parent = _trained_like(PARENT)
    save_model(parent, str(parent_dir / "model.safetensors"))
    (parent_dir / "arch.json").write_text(PARENT.to_json())
    child_arch = PARENT.model_copy(update={"n_layers": 3})
    spec = TrialSpec(number=7, arch=child_arch, budget="1ktok", out_dir=str(tmp_path / "c"), init_from=str(parent_dir))
    record, weights = prepare_start(spec, tmp_path / "c")
    assert record.init == "parent s1-00003 (deeper)" and record.init_from == "s1-00003" and weights is not None
    child = build_model(child_arch, seed=9)
    load_model(child, str(weights))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(child.eval()(ids), parent(ids), rtol=1e-5, atol=1e-5)
    (parent_dir / "model.safetensors").unlink()  # a second start must not look at the parent again
    again, weights_again = prepare_start(spec, tmp_path / "c")
    assert again == record and weights_again == weights
    wider = PARENT.model_copy(update={"d_model": 96, "d_ff": 128})
    scratch = spec.model_copy(update={"arch": wider, "out_dir": str(tmp_path / "d")})
    record, weights = prepare_start(scratch, tmp_path / "d")
    assert record.init == "scratch: d_model changed" and weights is None
