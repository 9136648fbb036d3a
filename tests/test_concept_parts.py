"""The pieces of llmattr.concept: CAV files, data helpers, the t-test, plugged classifiers."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llmattr.concept import (
    CAV,
    TCAV,
    Concept,
    CustomIterableDataset,
    concepts_to_str,
    dataset_to_dataloader,
    ttest_ind,
)
from llmattr.concept.stats import _ttest


def test_cav_round_trip_and_safe_paths(tmp_path):
    concepts = [Concept(0, "../../evil name", None), Concept(3, "b", None)]
    stats = {"weights": torch.randn(2, 5), "classes": np.array([0, 3]), "accs": np.float64(0.75)}
    cav = CAV(concepts, "layer/../x", stats, str(tmp_path), "org/../model")
    cav.save()
    path = CAV.assemble_save_path(str(tmp_path), "org/../model", concepts, "layer/../x")
    assert os.path.commonpath([path, str(tmp_path)]) == str(tmp_path)
    assert os.path.basename(path).startswith("0-3-") and os.path.exists(path)
    loaded = CAV.load(str(tmp_path), "org/../model", concepts, "layer/../x")
    assert [c.name for c in loaded.concepts] == [c.name for c in concepts]
    torch.testing.assert_close(loaded.stats["weights"], stats["weights"])
    assert loaded.stats["classes"].tolist() == [0, 3] and loaded.stats["accs"] == 0.75
    # same ids, other names: a stale file is not reused
    assert CAV.load(str(tmp_path), "org/../model", [Concept(0, "x", None), concepts[1]],
                    "layer/../x") is None  # fmt: skip
    assert CAV.load(str(tmp_path), "other", concepts, "layer/../x") is None


def test_concepts_to_str_and_identifier():
    a, b = Concept(2, "stripes", None), Concept(10, "random", None)
    assert concepts_to_str([a, b]) == "2-10"
    assert a.identifier == "stripes-2" and repr(b) == "Concept(10, 'random')"


def test_custom_iterable_dataset_reads_a_folder_in_order(tmp_path):
    for i in (2, 0, 1):
        torch.save(torch.full((3,), float(i)), tmp_path / f"{i}.pt")
    ds = CustomIterableDataset(lambda f: torch.load(f), str(tmp_path))
    batches = list(dataset_to_dataloader(ds, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3), (1, 3)]
    assert torch.cat(batches)[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_ttest_without_scipy_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for equal_var in (True, False):
        for _ in range(5):
            a = [rng.random() for _ in range(rng.randint(2, 9))]
            b = [rng.random() + 0.2 for _ in range(rng.randint(2, 9))]
            t, p = _ttest(a, b, equal_var)
            want = stats.ttest_ind(a, b, equal_var=equal_var)
            assert t == pytest.approx(want.statistic, rel=1e-9)
            assert p == pytest.approx(want.pvalue, rel=1e-7)
    assert ttest_ind([0.9, 1.0, 0.95], [0.5, 0.4, 0.6])[1] < 0.01
    with pytest.raises(ValueError):
        ttest_ind([1.0], [0.0, 1.0])


class NumpyClassifier:
    """An sklearn-style classifier (numpy weights and classes, one row for two classes)."""

    def train_and_eval(self, dataloader, test_split_ratio=0.33):
        x, y = map(torch.cat, zip(*list(dataloader)))
        self.w = (x[y == 7].mean(0) - x[y == 4].mean(0)).numpy()
        return {"accs": np.float64(1.0), "split": test_split_ratio}

    def weights(self):
        return np.stack([-self.w, self.w])

    def classes(self):
        return np.array([4, 7])


def test_plugged_sklearn_style_classifier(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)).double()
    a = Concept(7, "a", DataLoader(torch.randn(8, 3, dtype=torch.float64) + 2, batch_size=3))
    b = Concept(4, "b", DataLoader(torch.randn(8, 3, dtype=torch.float64), batch_size=3))
    tc = TCAV(model, ["0"], classifier=NumpyClassifier(), save_path=str(tmp_path),
              test_split_ratio=0.5)  # fmt: skip
    x = torch.randn(5, 3, dtype=torch.float64)
    out = tc.interpret(x, [[a, b]])
    w = torch.as_tensor(tc.classifier.w)
    grad = model[1].weight.reshape(-1)  # d output / d layer 0 output, the same for every input
    want = float((grad @ w > 0).double())
    assert out["7-4"]["0"]["sign_count"].tolist() == [want, 1 - want]
    assert tc.cavs["7-4"]["0"].stats["split"] == 0.5
    reloaded = CAV.load(str(tmp_path), tc._cav_id(), [a, b], "0")
    assert list(reloaded.stats["classes"]) == [4, 7]


def test_plugged_layer_attr_methods_match_the_default(tmp_path):
    captum_attr = pytest.importorskip("captum.attr")
    from llmattr import LayerGradientXActivation

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                            torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()  # fmt: skip
    data = [torch.randn(20, 4, dtype=torch.float64) + i for i in range(2)]
    c = [Concept(i, f"c{i}", DataLoader(d, batch_size=8)) for i, d in enumerate(data)]
    x = torch.randn(10, 4, dtype=torch.float64)
    methods = [None, LayerGradientXActivation(m, m[1], multiply_by_inputs=False),
               captum_attr.LayerGradientXActivation(m, m[1], multiply_by_inputs=False)]  # fmt: skip
    outs = [TCAV(m, ["1", "3"], layer_attr_method=meth, save_path=str(tmp_path / str(i)))
            .interpret(x, [c], target=0) for i, meth in enumerate(methods)]  # fmt: skip
    for layer in ("1", "3"):
        for out in outs[1:]:
            for score in ("sign_count", "magnitude"):
                torch.testing.assert_close(out["0-1"][layer][score], outs[0]["0-1"][layer][score])
