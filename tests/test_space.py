import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.errors import UserError
from nas.counting import count_params, flops_per_token, size_bytes
from nas.model import build_model
from nas.space import GENES, SPACES, ArchConfig, ArchConstraints, SearchSpace, get_space


def test_json_round_trip_and_hash():
    a = ArchConfig(n_layers=3, d_model=96, n_heads=6, n_kv_heads=2, d_ff=256, activation="gelu", pos="learned")
    b = ArchConfig.from_json(a.to_json())
    assert a == b and hash(a) == hash(b) and a.short_hash() == b.short_hash()
    assert len({a, b, ArchConfig()}) == 2
    with pytest.raises(ValidationError):
        a.n_layers = 5  # frozen


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"d_model": 100, "n_heads": 3}, "d_model (100) must be divisible by n_heads (3)"),
        ({"n_heads": 4, "n_kv_heads": 3}, "must be a multiple of n_kv_heads"),
        ({"d_model": 36, "n_heads": 4}, "RoPE needs an even head size"),
        ({"activation": "relu"}, "activation"),
        ({"n_layers": 0}, "n_layers"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_validation_messages(fields, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ArchConfig.from_json(json.dumps(fields))


def test_load_reports_missing_and_malformed(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ArchConfig.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        ArchConfig.load(bad)


@pytest.mark.parametrize("space_name", list(SPACES))
def test_counts_match_built_model(space_name):
    rng = random.Random(1)
    space = get_space(space_name)
    for _ in range(12):
        arch = space.sample(rng)
        if count_params(arch).total > 3_000_000:
            continue
        model = build_model(arch)
        unique = {id(p): p for p in model.parameters()}
        assert sum(p.numel() for p in unique.values()) == count_params(arch).total
        assert size_bytes(arch, "fp32") == 4 * count_params(arch).total
        assert size_bytes(arch, "int8") < 0.3 * size_bytes(arch, "fp32")
        assert flops_per_token(arch) > 2 * count_params(arch).non_embedding


ARCHS = st.builds(
    lambda seed, name: get_space(name).sample(random.Random(seed)),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(SPACES)),
)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(list(SPACES)), st.integers(1, 4))
def test_sample_mutate_crossover_always_valid(seed, name, n_genes):
    space = get_space(name)
    rng = random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    child = space.mutate(a, rng, n_genes=n_genes)
    mixed = space.crossover(a, b, rng)
    for arch in (a, b, child, mixed):
        # re-validating from JSON proves the config is valid, not merely constructed
        assert ArchConfig.from_json(arch.to_json()) == arch
        assert arch.d_model % arch.n_heads == 0 and arch.n_heads % arch.n_kv_heads == 0
        assert arch.n_layers in space.n_layers and arch.d_model in space.d_model
    assert child != a  # the default spaces always allow a different neighbour
    ga, gb, gm = space.encode(a), space.encode(b), space.encode(mixed)
    for gene in GENES:
        if gene not in ("head_dim", "kv_ratio"):  # these two may be repaired to fit d_model / n_heads
            assert gm[gene] in (ga[gene], gb[gene]), gene


def test_mutation_is_a_small_step():
    space = get_space("default")
    rng = random.Random(0)
    for _ in range(200):
        a = space.sample(rng)
        c = space.mutate(a, rng, n_genes=1)
        ga, gc = space.encode(a), space.encode(c)
        changed = [g for g in ga if ga[g] != gc[g]]
        assert 1 <= len(changed) <= 3  # one gene, plus head/kv repairs it may force


def test_sampling_is_seeded():
    space = get_space("default")
    assert [space.sample(random.Random(7)) for _ in range(3)] == [space.sample(random.Random(7)) for _ in range(3)]


def test_constraints_reject_and_feasible_sampling():
    space = get_space("default")
    limit = ArchConstraints(max_params=1_000_000)
    rng = random.Random(3)
    archs = [space.sample_feasible(rng, limit) for _ in range(50)]
    assert all(count_params(a).total <= 1_000_000 for a in archs)
    big = ArchConfig(n_layers=12, d_model=512, n_heads=8, n_kv_heads=8, d_ff=2048)
    assert limit.violations(big) and "parameters > max" in limit.violations(big)[0]
    by_bytes = ArchConstraints(max_bytes=2_000_000, bytes_dtype="int8")
    assert by_bytes.allows(ArchConfig()) and not by_bytes.allows(big)


def test_impossible_constraints_say_so():
    with pytest.raises(UserError, match="no architecture in the search space fits"):
        get_space("default").sample_feasible(random.Random(0), ArchConstraints(max_params=100))


def test_unknown_space_and_space_file(tmp_path):
    with pytest.raises(UserError, match="unknown search space"):
        get_space("nope")
    f = tmp_path / "space.json"
    f.write_text(SearchSpace(n_layers=(2,), d_model=(64,)).model_dump_json())
    sp = get_space(str(f))
    assert sp.sample(random.Random(0)).d_model == 64
    f.write_text(json.dumps({"n_layers": []}))
    with pytest.raises(UserError, match="no choices"):
        get_space(str(f))


def test_model_parameters_are_unique_when_tied():
    m = build_model(ArchConfig(tie_embeddings=True))
    assert m.lm_head.weight is m.embed_tokens.weight
    assert torch.equal(
        build_model(ArchConfig(), seed=3).embed_tokens.weight, build_model(ArchConfig(), seed=3).embed_tokens.weight
    )
