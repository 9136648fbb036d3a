"""Soft-prompt optimization (llmattr.optim.soft_prompt) on the shipped demo model (vocabulary 48):
the soft value is checked against the brute-force maximum over all 48**3 token prompts, and the
projection against a brute-force nearest-neighbour loop."""

from __future__ import annotations

import copy
import itertools
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("transformers")

from llmattr._core.errors import InputError
from llmattr.demo import load_demo_model
from llmattr.optim.layers import ModuleOutputsHook, resolve_target
from llmattr.optim.loss import NeuronActivation
from llmattr.optim.optimization import NonFiniteLossError
from llmattr.optim.soft_prompt import nearest_tokens, optimize_soft_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "model.layers.1.mlp.act_fn"
NEURONS = torch.randperm(128, generator=torch.Generator().manual_seed(0))[:10].tolist()


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _act(model, layer, position: int, **inputs) -> torch.Tensor:
    """(N, features) activation of ``layer`` at ``position`` for one forward on ``inputs``."""
    module = resolve_target(model, layer)
    with torch.no_grad(), ModuleOutputsHook([module]) as hook:
        model(**inputs)
        return hook.consume_outputs()[module][:, position, :]


@pytest.fixture(scope="module")
def exhaustive(demo):
    """(128,) maximum of each unit of LAYER over all 48**3 prompts (last position)."""
    model, _ = demo
    v = torch.arange(48)
    grid = torch.cartesian_prod(v, v, v)
    return torch.cat([_act(model, LAYER, -1, input_ids=c) for c in grid.split(16384)]).amax(0)


def test_soft_value_bounds_the_exhaustive_max_for_every_neuron(demo, exhaustive):
    model, _ = demo
    above = 0
    for n in NEURONS:
        res = optimize_soft_prompt(model, LAYER, n, steps=60, restarts=6, seed=0)
        above += res.soft_value >= exhaustive[n].item()
        # the projected prompts are token prompts: the exhaustive max bounds them
        assert max(res.value_cosine, res.value_l2) == res.value <= exhaustive[n].item() + 1e-5
    assert above >= 9, above
    assert _hooks(model) == 0


def test_norm_constraint_keeps_vectors_in_the_token_norm_range(demo, exhaustive):
    model, _ = demo
    norms = model.get_input_embeddings().weight.detach().norm(dim=1)
    allowed = list(range(1, 48))  # the padding token 0 has a zero embedding
    for n in NEURONS[:3]:
        res = optimize_soft_prompt(
            model, LAYER, n, steps=60, restarts=6, constrain_norm=True, allowed_ids=allowed
        )
        lo, hi = norms[1:].min().item(), norms[1:].max().item()
        assert res.norm_range == pytest.approx((lo, hi))
        got = res.embeds.norm(dim=1)
        assert (got >= lo - 1e-5).all() and (got <= hi + 1e-5).all()
        assert res.soft_value >= exhaustive[n].item()
        assert set(res.ids_cosine + res.ids_l2) <= set(allowed)


def test_values_are_exact_and_projection_is_the_nearest_token(demo):
    model, tok = demo
    res = optimize_soft_prompt(
        model, LAYER, 44, steps=25, restarts=3, prefix_ids=[2], position=-2, tokenizer=tok
    )
    weight = model.get_input_embeddings().weight.detach()
    embeds = torch.cat([weight[[2]], res.embeds])[None]
    exact = _act(model, LAYER, -2, inputs_embeds=embeds)[0, 44].item()
    assert res.soft_value == pytest.approx(exact, abs=1e-5)
    assert res.soft_value >= res.history[-1]  # the final point is scored after the last step
    assert len(res.history) == 25
    assert all(a <= b for a, b in itertools.pairwise(res.history))
    for metric, ids in (("cosine", res.ids_cosine), ("l2", res.ids_l2)):
        naive = []
        for e in res.embeds:
            scores = []
            for row in weight:
                if metric == "cosine":
                    denom = max(e.norm().item() * row.norm().item(), 1e-30)
                    scores.append((e @ row).item() / denom if row.norm() > 0 else 0.0)
                else:
                    scores.append(-math.dist(e.tolist(), row.tolist()))
            naive.append(max(range(48), key=lambda i, s=scores: (s[i], -i)))
        assert ids == naive
        value = _act(model, LAYER, -2, input_ids=torch.tensor([[2, *ids]]))[0, 44].item()
        got = res.value_cosine if metric == "cosine" else res.value_l2
        assert got == pytest.approx(value, abs=1e-5)
    assert res.ids in (res.ids_cosine, res.ids_l2)
    assert res.text == tok.decode(res.ids)


def test_model_is_untouched_and_runs_are_seeded(demo):
    model, _ = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    a = optimize_soft_prompt(model, LAYER, 13, steps=15, restarts=2, seed=7)
    b = optimize_soft_prompt(model, LAYER, 13, steps=15, restarts=2, seed=7)
    assert torch.equal(a.embeds, b.embeds) and a.history == b.history
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training == training
    assert _hooks(model) == 0


def test_a_loss_objective_equals_its_neuron_and_composes(demo):
    model, _ = demo
    a = optimize_soft_prompt(model, LAYER, 31, steps=15, restarts=3, seed=1)
    b = optimize_soft_prompt(model, None, NeuronActivation(LAYER, 31), steps=15, restarts=3, seed=1)
    torch.testing.assert_close(a.embeds, b.embeds)
    assert a.soft_value == pytest.approx(b.soft_value, abs=1e-6)
    loss = NeuronActivation(LAYER, 3) - 0.5 * NeuronActivation(LAYER, 7)
    res = optimize_soft_prompt(model, None, loss, steps=30, restarts=4)
    act = _act(model, LAYER, -1, inputs_embeds=res.embeds[None])[0]
    assert res.soft_value == pytest.approx((act[3] - 0.5 * act[7]).item(), abs=1e-5)


def test_float64_model(demo):
    model = copy.deepcopy(demo[0]).double()
    res = optimize_soft_prompt(model, LAYER, 13, steps=5, restarts=2)
    assert res.embeds.dtype == torch.float64 and math.isfinite(res.soft_value)


def test_a_nan_objective_names_the_step_and_leaves_no_hooks(demo):
    model, _ = demo
    loss = (NeuronActivation(LAYER, 13) - 100) ** 0.5  # sqrt of a negative number
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        optimize_soft_prompt(model, None, loss, steps=3, restarts=2)
    assert _hooks(model) == 0


def test_nearest_tokens_rejects_an_unknown_metric():
    with pytest.raises(InputError, match="'cosine' or 'l2'"):
        nearest_tokens(torch.ones(2, 3), torch.ones(4, 3), torch.arange(4), "dot")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer="model.nope"), "not a layer"),
        (dict(objective=500), "out of range"),
        (dict(objective=torch.ones(5)), "5 entries"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(steps=0), "steps"),
        (dict(restarts=0), "restarts"),
        (dict(length=0), "length"),
        (dict(position=3), "position"),
        (dict(allowed_ids=[48]), r"\[0, 48\)"),
    ],
)
def test_errors_are_clear_and_leave_no_hooks(demo, kwargs, match):
    model, _ = demo
    args = dict(layer=LAYER, objective=13, steps=3, restarts=2) | kwargs
    with pytest.raises(InputError, match=match):
        optimize_soft_prompt(model, **args)
    assert _hooks(model) == 0
