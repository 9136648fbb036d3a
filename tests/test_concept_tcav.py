"""TCAV on tensor models: parity with Captum 0.9, the planted-concept test, caching, bad input."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import assert_no_hooks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from llmattr._core.errors import InputError
from llmattr.concept import TCAV, Classifier, Concept, DefaultClassifier, ttest_ind

ca = pytest.importorskip("captum.concept")


class MeanDiffClassifier(Classifier):
    """Deterministic: each class's weight row is its mean activation minus the overall mean."""

    def __init__(self) -> None:
        self._w, self._c = None, []

    def train_and_eval(self, dataloader, **kwargs):
        x, y = map(torch.cat, zip(*list(dataloader)))
        self._c = sorted({int(v) for v in y})
        mu = x.mean(0)
        self._w = torch.stack([x[y == c].mean(0) - mu for c in self._c])
        return {"accs": torch.tensor(1.0)}

    def weights(self):
        return self._w

    def classes(self):
        return self._c


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.flatten(1))


def _concept(i: int, name: str, shift: float, n: int = 12, batch: int = 5) -> Concept:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, :4] += shift  # a pattern in the top half
    return Concept(i, name, DataLoader(x, batch_size=batch))


@pytest.fixture
def cnn() -> CNN:
    return CNN().double().eval()


def test_matches_captum_given_the_same_classifier(cnn, tmp_path):
    concepts = [_concept(0, "top", 2.0), _concept(1, "rand_a", 0.0), _concept(2, "rand_b", 0.5)]
    sets = [[concepts[0], concepts[1]], [concepts[0], concepts[2]], concepts]
    x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layers = ["conv1", "relu2"]
    ours = TCAV(cnn, layers, classifier=MeanDiffClassifier(), save_path=str(tmp_path / "o"))
    theirs = ca.TCAV(cnn, layers, classifier=MeanDiffClassifier(), save_path=str(tmp_path / "c"))
    got, want = ours.interpret(x, sets, target=1), theirs.interpret(x, sets, target=1)
    assert set(got) == set(want) == {"0-1", "0-2", "0-1-2"}
    assert list(got) == list(want)  # Captum's key order: the sets sorted by size
    n_nonzero = 0
    for key, concepts_ in zip(["0-1", "0-2", "0-1-2"], sets):
        for layer in layers:
            w_ours = ours.cavs[key][layer].stats["weights"]
            w_theirs = theirs.cavs[key][layer].stats["weights"]
            torch.testing.assert_close(w_ours, w_theirs.to(w_ours.dtype))  # same activations
            assert torch.equal(got[key][layer]["sign_count"].float(),
                               want[key][layer]["sign_count"].float())  # fmt: skip
            n_nonzero += int((got[key][layer]["sign_count"] > 0).sum())
            # magnitude: Captum 0.9 returns the mean of the per-input scores; ours is the
            # documented share of positive mass, in [0, 1]
            grads = torch.autograd.functional.jacobian  # noqa: F841 (readability)
            sens = ours._sensitivities(x, 1, None, {})[layers.index(layer)]
            order = [ours.cavs[key][layer].stats["classes"].index(c.id) for c in concepts_]
            tcav = sens @ w_ours[order].T
            torch.testing.assert_close(want[key][layer]["magnitude"].double(), tcav.mean(0),
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
            ratio = tcav.clamp(min=0).sum(0) / tcav.abs().sum(0)
            torch.testing.assert_close(got[key][layer]["magnitude"], ratio)
            assert ((ratio >= 0) & (ratio <= 1)).all()
    assert n_nonzero > 0
    assert_no_hooks(cnn)


def test_default_classifier_separates_and_is_deterministic(cnn, tmp_path):
    concepts = [_concept(0, "top", 3.0, n=30), _concept(1, "rand", 0.0, n=30)]
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    a = TCAV(cnn, "relu1", save_path=str(tmp_path / "a")).interpret(x, [concepts], target=0)
    tc = TCAV(cnn, "relu1", save_path=str(tmp_path / "b"))
    b = tc.interpret(x, [concepts], target=0)
    assert torch.equal(a["0-1"]["relu1"]["sign_count"], b["0-1"]["relu1"]["sign_count"])
    assert tc.cavs["0-1"]["relu1"].stats["accs"] > 0.9
    # two concepts: rows [-w, w] so the two scores are complementary
    torch.testing.assert_close(b["0-1"]["relu1"]["sign_count"].sum(), torch.tensor(1.0).double())


class Planted(nn.Module):
    """``h = W x`` where W's first row reads the planted pattern p, so a concept whose examples
    add p moves ``h`` along ``W p`` (mostly ``e_0``); target 0 is ``3 h_0 + sum_i u_i h_i^2 / 2``:
    its gradient with respect to ``h`` is ``3 e_0 + u * h``, whose other part changes sign with
    the input (so a random direction is as often with as against it)."""

    def __init__(self, d: int, p: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.layer = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.layer.weight.normal_(0, 0.3)
            self.layer.weight[0] = p
        self.u = nn.Parameter(torch.randn(2, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return h[:, :1] * torch.tensor([3.0, 0.0], dtype=h.dtype) + (h * h / 2) @ self.u.T


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy: the concept's scores are all 1
def test_planted_concept_scores_near_one_and_random_near_half(tmp_path):
    d, n = 16, 60
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(d, dtype=torch.float64)
    p[:4] = 0.5
    model = Planted(d, p.float()).double().eval()

    def data(i: int, planted: bool) -> Concept:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        return Concept(i, f"c{i}", DataLoader(x + 4.0 * p if planted else x, batch_size=32))

    planted = data(0, True)
    randoms = [data(i, False) for i in range(1, 9)]
    inputs = torch.randn(40, d, generator=g, dtype=torch.float64)
    tcav = TCAV(model, ["layer"], save_path=str(tmp_path))
    concept_sets = [[planted, r] for r in randoms]
    random_sets = [[randoms[0], r] for r in randoms[1:]]
    scores = tcav.interpret(inputs, concept_sets + random_sets, target=0)
    concept_scores = [float(scores[f"0-{r.id}"]["layer"]["sign_count"][0]) for r in randoms]
    random_scores = [float(scores[f"1-{r.id}"]["layer"]["sign_count"][0]) for r in randoms[1:]]
    assert min(concept_scores) > 0.9
    mean_random = sum(random_scores) / len(random_scores)
    assert 0.3 < mean_random < 0.7
    _, p_value = ttest_ind(concept_scores, random_scores)
    assert p_value < 1e-3
    # the other concept of each set gets the complementary score
    for r in randoms:
        torch.testing.assert_close(scores[f"0-{r.id}"]["layer"]["sign_count"].sum(),
                                   torch.tensor(1.0, dtype=torch.float64))  # fmt: skip


def test_cache_is_reused_for_the_same_model_and_not_for_another(cnn, tmp_path):
    calls = []
    concepts = [_concept(0, "top", 2.0), _concept(1, "rand", 0.0)]
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    handle = cnn.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = TCAV(cnn, "relu1", model_id="m", save_path=str(tmp_path)).interpret(
            x, [concepts], target=0)  # fmt: skip
        n_first = len(calls)
        again = TCAV(cnn, "relu1", model_id="m", save_path=str(tmp_path))
        second = again.interpret(x, [concepts], target=0)
        assert len(calls) == n_first + 1  # only the inputs' forward: activations, CAVs cached
        assert torch.equal(first["0-1"]["relu1"]["sign_count"],
                           second["0-1"]["relu1"]["sign_count"])  # fmt: skip
    finally:
        handle.remove()
    other = CNN().double().eval()
    with torch.no_grad():
        other.conv1.weight.mul_(-1)  # a different model saved under the same model_id
    tc = TCAV(other, "relu1", model_id="m", save_path=str(tmp_path))
    tc.interpret(x, [concepts], target=0)
    direct = torch.cat([other.relu1(other.conv1(b)).flatten(1) for b in concepts[0].data_iter])
    stored = tc._store().load("relu1", concepts[0])
    torch.testing.assert_close(stored, direct)  # recomputed, not the first model's
    assert len(os.listdir(tmp_path / "m")) == 2  # one folder per model fingerprint


def test_in_memory_cavs_follow_weight_changes(cnn, tmp_path):
    concepts = [_concept(0, "top", 2.0), _concept(1, "rand", 0.0)]
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    tc = TCAV(cnn, "relu2", save_path=str(tmp_path))
    tc.interpret(x, [concepts], target=0)
    w1 = tc.cavs["0-1"]["relu2"].stats["weights"].clone()
    with torch.no_grad():
        cnn.conv2.weight.mul_(-1)
    tc.interpret(x, [concepts], target=0)
    assert not torch.allclose(tc.cavs["0-1"]["relu2"].stats["weights"], w1)


def test_force_train_and_multiprocess_argument(cnn, tmp_path):
    concepts = [_concept(0, "top", 2.0), _concept(1, "rand", 0.0)]
    tc = TCAV(cnn, ["relu1", "relu2"], save_path=str(tmp_path))
    cavs = tc.compute_cavs([concepts], force_train=True, processes=2)
    assert set(cavs["0-1"]) == {"relu1", "relu2"}
    assert cavs["0-1"]["relu2"].stats["weights"].shape == (2, 64)


def test_bad_input_fails_before_any_forward(cnn, tmp_path):
    calls = []
    handle = cnn.register_forward_hook(lambda *a: calls.append(1))
    a, b = _concept(0, "top", 2.0), _concept(1, "rand", 0.0)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    tc = TCAV(cnn, "relu1", save_path=str(tmp_path))
    try:
        with pytest.raises(InputError, match="two or more"):
            tc.interpret(x, [[a]], target=0)
        with pytest.raises(InputError, match="no examples"):
            tc.interpret(x, [[a, Concept(5, "empty", DataLoader(torch.zeros(0, 1, 8, 8)))]])
        with pytest.raises(InputError, match="no examples"):
            tc.interpret(x, [[a, b], [a, Concept(6, "none", None)]], target=0)
        with pytest.raises(InputError, match="two names"):
            tc.interpret(x, [[a, b], [a, Concept(1, "other", b.data_iter)]], target=0)
        with pytest.raises(InputError, match="attribute_to_layer_input"):
            tc.interpret(x, [[a, b]], target=0, attribute_to_layer_input=True)
        assert calls == []
    finally:
        handle.remove()
    with pytest.raises(InputError, match="not in the model"):
        TCAV(cnn, ["relu1", "nope"], save_path=str(tmp_path))
    with pytest.raises(AssertionError):  # what Captum users catch
        TCAV(cnn, "relu1", save_path=str(tmp_path)).interpret(x, [[a]], target=0)


def test_no_hook_left_and_mode_kept_when_the_model_raises(cnn, tmp_path):
    class Boom(Exception):
        pass

    concepts = [_concept(0, "top", 2.0), _concept(1, "rand", 0.0)]
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    tc = TCAV(cnn, ["relu1", "relu2"], save_path=str(tmp_path))
    tc.compute_cavs([concepts])

    def boom(*args):
        raise Boom

    handle = cnn.fc.register_forward_hook(boom)
    try:
        with pytest.raises(Boom):
            tc.interpret(x, [concepts], target=0)
    finally:
        handle.remove()
    assert_no_hooks(cnn)
    assert not cnn.training and all(p.requires_grad for p in cnn.parameters())


def test_default_classifier_multiclass_and_errors():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(3, dtype=torch.float64) * 4
    x = torch.cat([torch.randn(20, 3, generator=g, dtype=torch.float64) + c for c in centers])
    y = torch.arange(3).repeat_interleave(20) + 7
    clf = DefaultClassifier()
    stats = clf.train_and_eval(DataLoader(TensorDataset(x, y), batch_size=15))
    assert stats["accs"] > 0.9
    assert clf.classes() == [7, 8, 9]
    w = clf.weights()
    assert w.shape == (3, 3)
    assert (w.argmax(1) == torch.arange(3)).all()  # each row points to its class's center
    with pytest.raises(InputError, match="train_and_eval first"):
        DefaultClassifier().weights()


def test_result_keys_follow_captums_size_order_and_zero_scores_give_zero_magnitude(tmp_path):
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(0)
    cs = [
        Concept(i, f"c{i}", [torch.randn(6, 3, generator=g, dtype=torch.float64) + 0.3 * i])
        for i in range(4)
    ]
    sets = [[cs[0], cs[1], cs[2]], [cs[0], cs[3]], [cs[1], cs[2]]]
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ours = TCAV(model, ["0"], classifier=MeanDiffClassifier(), save_path=str(tmp_path / "o"))
    single = copy.deepcopy(model).float()  # Captum's TCAV fails on float64 models
    cs32 = [Concept(c.id, c.name, [t.float() for t in c.data_iter]) for c in cs]
    sets32 = [[cs32[0], cs32[1], cs32[2]], [cs32[0], cs32[3]], [cs32[1], cs32[2]]]
    theirs = ca.TCAV(single, ["0"], classifier=MeanDiffClassifier(), save_path=str(tmp_path / "c"))
    assert list(ours.interpret(x, sets, target=1)) == ["0-3", "1-2", "0-1-2"]
    assert list(theirs.interpret(x.float(), sets32, target=1)) == ["0-3", "1-2", "0-1-2"]
    with torch.no_grad():
        model[2].weight[1].zero_()  # output 1 no longer depends on the layer: every score is 0
    flat = TCAV(model, ["0"], save_path=str(tmp_path / "z")).interpret(x, [cs[:2]], target=1)
    assert torch.equal(flat["0-1"]["0"]["magnitude"], torch.zeros(2, dtype=torch.float64))
