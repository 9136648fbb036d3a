"""Input targets (``"<name>:input"`` / ``layer_input``): a gated MLP's neuron vector
``act(gate(x)) * up(x)`` — the input of ``down_proj`` — as a target for examples and losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmattr._core.errors import InputError
from llmattr.demo import load_demo_model, load_eval_prompts
from llmattr.optim import (
    ChannelActivation,
    InputOptimization,
    ModuleOutputsHook,
    collect_activations,
    layer_input,
    max_activating_examples,
    n_steps,
)
from llmattr.optim.layers import resolve_target


@pytest.fixture(scope="module")
def demo():
    model, tok = load_demo_model()
    return model.double().eval(), tok


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_input_of_down_proj_is_the_gated_product(demo) -> None:
    model, tok = demo
    mlp = model.model.layers[1].mlp
    ids = torch.tensor([tok("copy : red cat")["input_ids"]])
    seen = {}
    handle = mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0]))
    try:
        got = collect_activations(model, "model.layers.1.mlp.down_proj:input", ids)
    finally:
        handle.remove()
    x = seen["x"]
    expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    (value,) = got.values()
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)
    assert _no_hooks(model)


def test_name_and_layer_input_resolve_to_the_same_target(demo) -> None:
    model, _ = demo
    down = model.model.layers[1].mlp.down_proj
    tap = resolve_target(model, "model.layers[1].mlp.down_proj:input")
    assert tap is layer_input(down) is resolve_target(model, tap)
    assert not list(tap.parameters())  # the model's weights are not re-registered
    with pytest.raises(InputError, match=":input"):
        resolve_target(model, "model.layers.1.mlp.nope:input")
    with pytest.raises(InputError, match="not a submodule"):
        resolve_target(model, layer_input(nn.Linear(2, 2)))


def test_max_activating_examples_on_the_mlp_neuron_equal_a_loop(demo) -> None:
    model, tok = demo
    mlp = model.model.layers[1].mlp
    corpus = [e.prompt for e in load_eval_prompts()][:12]
    neuron = 7
    res = max_activating_examples(
        model, "model.layers.1.mlp.down_proj:input", neuron, corpus, k=5, tokenizer=tok,
        batch_size=5,
    )  # fmt: skip
    scores = []
    for text in corpus:
        ids = torch.tensor([tok(text)["input_ids"]])
        got = collect_activations(model, layer_input(mlp.down_proj), ids)
        scores += got[layer_input(mlp.down_proj)][0, :, neuron].tolist()
    best = sorted(scores, reverse=True)[:5]
    torch.testing.assert_close(
        torch.tensor([e.value for e in res.examples], dtype=torch.float64),
        torch.tensor(best, dtype=torch.float64),
        rtol=0,
        atol=1e-10,
    )
    assert "down_proj:input" in repr(res)
    assert _no_hooks(model)


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.unused = nn.Conv2d(3, 4, 3), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_loss_on_a_layer_input_equals_the_previous_output_and_cleans_up() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    x = torch.rand(2, 3, 9, 9)
    with ModuleOutputsHook([model[1], layer_input(model[2])]) as hook:
        model(x)
        out = hook.consume_outputs()
    torch.testing.assert_close(out[layer_input(model[2])], out[model[1]], rtol=0, atol=0)
    image = nn.Parameter(torch.rand(1, 3, 9, 9))
    opt = InputOptimization(model, ChannelActivation("2:input", 1), image, nn.Identity())
    history = opt.optimize(n_steps(20, show_progress=False), lr=0.05)
    assert history[-1] < history[0]
    assert _no_hooks(model)
    with pytest.raises(InputError, match="never ran"):
        bad = _WithUnused()
        InputOptimization(
            bad, ChannelActivation("unused:input", 0), torch.rand(1, 3, 6, 6), nn.Identity()
        ).optimize(n_steps(1, show_progress=False))
    assert _no_hooks(bad)
