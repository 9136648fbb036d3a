"""AttackComparator: Captum 0.9's results and summaries, grouped forwards, raw inputs, bad input."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
from conftest import Counting
from torch import nn

from llmattr._core.errors import InputError
from llmattr.robust import FGSM, PGD, AttackComparator

captum_robust = pytest.importorskip("captum.robust")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*(requires_grad|required_grads).*:UserWarning"),
]

Metrics = namedtuple("Metrics", ["accuracy", "confidence"])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3), nn.Softmax(-1)).double()


def accuracy(out, target):
    return (out.argmax(1) == target).double()


def two_metrics(out, target):
    return Metrics((out.argmax(1) == target).double(), out.max(1).values.mean())


def noise(x, std=0.1):
    return x + std * torch.randn_like(x)


def build(cls, net, attacks, fgsm, pgd, metric, preproc=None):
    comp = cls(net, metric, preproc)
    comp.add_attack(fgsm(net), "FGSM", attack_kwargs={"epsilon": 0.2}, **attacks)
    comp.add_attack(
        pgd(net), "PGD", attack_kwargs=dict(radius=0.3, step_size=0.1, step_num=4), **attacks
    )
    comp.add_attack(noise, "Noise", num_attempts=3, attack_kwargs={"std": 0.5})
    comp.add_attack(noise, num_attempts=1)
    return comp


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return type(a).__name__ == type(b).__name__ and all(same(x, y) for x, y in zip(a, b))
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), atol=1e-12)


@pytest.mark.parametrize("ppe", [1, 3, 10])
@pytest.mark.parametrize("metric", [accuracy, two_metrics])
@pytest.mark.parametrize("before", [True, False])
def test_results_and_summaries_match_captum(ppe, metric, before):
    net = model()
    attacks = dict(additional_attack_arg_names=["target"], apply_before_preproc=before)

    def preproc(x):
        return x * 2.0

    ours = build(AttackComparator, net, attacks, FGSM, PGD, metric, preproc)
    theirs = build(
        captum_robust.AttackComparator, net, attacks, captum_robust.FGSM, captum_robust.PGD,
        metric, preproc,
    )  # fmt: skip
    for batch in range(2):
        x = torch.randn(4, 6, dtype=torch.float64)
        target = torch.tensor([0, 1, 2, batch])
        kw = dict(perturbations_per_eval=ppe, target=target)
        torch.manual_seed(batch)
        r_ours = ours.evaluate(x, **kw)
        torch.manual_seed(batch)
        r_theirs = theirs.evaluate(x, **kw)
        assert same(r_ours, r_theirs)
    assert set(r_ours["Noise"]) == {"mean", "min", "max"} and set(r_ours["FGSM"]) == {"mean"}
    assert same(ours.summary(), theirs.summary())
    assert "Noise Max Attempt" in ours.summary()
    ours.reset()
    assert ours.summary() == {}


@pytest.mark.parametrize("ppe", [1, 2, 4, 7])
def test_grouped_forwards_count_like_captum(ppe):
    """Original + FGSM + PGD + 3 noise attempts + 1 noise = 7 inputs, ceil(7 / ppe) forwards."""
    net = model()
    counted_ours, counted_theirs = Counting(net), Counting(net)
    attacks = dict(additional_attack_arg_names=["target"])
    ours = build(AttackComparator, counted_ours, attacks, lambda m: FGSM(net), lambda m: PGD(net),
                 accuracy)  # fmt: skip
    theirs = build(
        captum_robust.AttackComparator, counted_theirs, attacks,
        lambda m: captum_robust.FGSM(net), lambda m: captum_robust.PGD(net), accuracy,
    )  # fmt: skip
    x, t = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    ours.evaluate(x, perturbations_per_eval=ppe, target=t)
    theirs.evaluate(x, perturbations_per_eval=ppe, target=t)
    assert counted_ours.calls == counted_theirs.calls == math.ceil(7 / ppe)


def test_grouping_does_not_change_results_with_extra_args():
    def net(x, scale, shift):
        return torch.softmax(x[:, :3] * scale.reshape(-1, 1) + shift, -1)

    def flip(x):
        return -x

    x, scale = torch.randn(5, 6, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    results = []
    for ppe in (1, 2, 3):
        comp = AttackComparator(net, lambda out: out[:, 0])
        comp.add_attack(flip, "flip")
        comp.add_attack(noise, "noise", num_attempts=2, attack_kwargs={"std": 0.0})
        results.append(comp.evaluate(x, (scale, 0.5), perturbations_per_eval=ppe))
    assert same(results[0], results[1]) and same(results[0], results[2])
    expected = torch.softmax(-x[:, :3] * scale.reshape(-1, 1) + 0.5, -1)[:, 0]
    assert torch.allclose(results[0]["flip"]["mean"], expected, atol=1e-12)


def test_raw_text_inputs_are_evaluated_one_at_a_time():
    """Strings cannot be concatenated: Captum fails with perturbations_per_eval > 1; we run them
    one forward each."""
    vocab = {"good": 1.0, "bad": -1.0}

    def sentiment(texts):
        return torch.tensor([[sum(vocab.get(w, 0.0) for w in t.split())] for t in texts])

    def drop_first(texts):
        return [" ".join(t.split()[1:]) for t in texts]

    comp = AttackComparator(Counting(sentiment), lambda out: (out > 0).double().reshape(-1))
    comp.add_attack(drop_first, "drop")
    result = comp.evaluate(["good movie", "bad good good"], perturbations_per_eval=4)
    assert result["Original"].tolist() == [1.0, 1.0]
    assert result["drop"]["mean"].tolist() == [0.0, 1.0]  # "movie", "good good"
    assert comp.forward_func.calls == 2


def test_missing_attack_arg_warns():
    net = model()
    comp = AttackComparator(net, lambda out: out.sum())
    comp.add_attack(FGSM(net), attack_kwargs={"epsilon": 0.1}, additional_attack_arg_names=["t"])
    with pytest.warns(UserWarning, match="Additional sample arg t not provided for FGSM"):
        with pytest.raises(TypeError):  # FGSM then misses its target, as in Captum
            comp.evaluate(torch.randn(2, 6, dtype=torch.float64))


def test_bad_input():
    net = model()
    comp = AttackComparator(net, accuracy)
    comp.add_attack(noise)
    with pytest.raises(RuntimeError, match="same name"):
        comp.add_attack(noise)
    with pytest.raises(InputError, match="Original"):
        comp.add_attack(noise, "Original")
    with pytest.raises(InputError, match="num_attempts"):
        comp.add_attack(noise, "n0", num_attempts=0)
    with pytest.raises(InputError, match="perturbations_per_eval"):
        comp.evaluate(torch.randn(2, 6), perturbations_per_eval=0, target=torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        comp.add_attack("not callable", "x")


def test_tuple_inputs_reach_the_model_as_one_argument_like_captum():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()

    def net(pair, bias):
        return torch.softmax(lin(torch.cat(pair, 1)) + bias, -1)

    def scale(pair, factor=2.0):
        return tuple(p * factor for p in pair)

    x = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    bias = torch.randn(4, 1, dtype=torch.float64)
    results = []
    for cls in (AttackComparator, captum_robust.AttackComparator):
        comp = cls(net, lambda out: out[:, 1])
        comp.add_attack(scale, "x2")
        comp.add_attack(scale, "x3", attack_kwargs={"factor": 3.0})
        results.append([comp.evaluate(x, bias, perturbations_per_eval=p) for p in (1, 2)])
    assert all(same(a, b) for a, b in zip(*results))
    assert same(results[0][0], results[0][1])
