"""DataLoaderAttribution against Captum's on the same loaders (float64, seeded): shapes, values,
roles, baselines, masks, reduce / to_metric, perturbations_per_pass, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import llmattr
from llmattr._core.errors import InputError

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's requires_grad notices

F64 = torch.float64


class TwoInputs(nn.Module):
    """f(x, z) = tanh(x W + z V): 3 outputs; z is a (batch, 2, 3) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(4, 3).double()
        self.v = nn.Linear(6, 3).double()

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        out = self.w(x)
        return torch.tanh(out if z is None else out + self.v(z.reshape(len(z), -1)))


def accuracy_and_sum(acc, out: Tensor, elements: tuple) -> Tensor:
    s = (out.argmax(1) == elements[-1]).double().sum() + out.sum()
    return s if acc is None else acc + s


def both(model, loader, **kw):
    ours = llmattr.DataLoaderAttribution(llmattr.FeatureAblation(model)).attribute(loader, **kw)
    theirs = captum_attr.DataLoaderAttribution(captum_attr.FeatureAblation(model)).attribute(
        loader, **kw
    )
    return ours, theirs


def assert_same(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.fixture
def data():
    x = torch.randn(10, 4, dtype=F64)
    z = torch.randn(10, 2, 3, dtype=F64)
    y = torch.randint(0, 3, (10,))
    return x, z, y


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"return_input_shape": False},
        {"reduce": accuracy_and_sum},
        {"reduce": accuracy_and_sum, "perturbations_per_pass": 3, "baselines": 0.5},
        {
            "reduce": accuracy_and_sum,
            "to_metric": lambda a: torch.stack([a, a**2]),
            "baselines": torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64),
            "feature_mask": torch.tensor([[0, 0, 1, 2]]),
            "perturbations_per_pass": 2,
        },
    ],
    ids=["concat", "flat", "reduce", "ppp3", "mask-metric"],
)
def test_one_attributed_input_and_a_label(data, kw) -> None:
    x, _, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    ours, theirs = both(TwoInputs(), loader, input_roles=(0, 2), **kw)
    assert_same(ours, theirs)


@pytest.mark.parametrize("ppp", [1, 4])
def test_two_attributed_inputs_with_a_shared_feature(data, ppp: int) -> None:
    x, z, y = data
    loader = DataLoader(TensorDataset(x, z, y), batch_size=3)
    masks = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[2, 3, 3], [4, 4, 0]]]))
    bases = (torch.zeros(1, 4, dtype=F64) + 0.3, -1.0)
    kw = dict(input_roles=(0, 0, 2), reduce=accuracy_and_sum, feature_mask=masks)
    ours, theirs = both(TwoInputs(), loader, baselines=bases, perturbations_per_pass=ppp, **kw)
    assert isinstance(ours, tuple) and [a.shape for a in ours] == [(1, 4), (1, 2, 3)]
    assert_same(ours, theirs)
    flat, flat_c = both(TwoInputs(), loader, baselines=bases, return_input_shape=False, **kw)
    assert flat.shape == (1, 5)
    assert_same(flat, flat_c)


def test_forward_only_element_and_default_masks_across_inputs(data) -> None:
    x, z, y = data
    loader = DataLoader(TensorDataset(z, x, y), batch_size=4)

    def model(z: Tensor, x: Tensor) -> Tensor:
        return TwoInputs.forward(net, x, z)

    net = TwoInputs()
    ours, theirs = both(model, loader, input_roles=(0, 1, 2), reduce=accuracy_and_sum)
    assert ours[0].shape == (1, 2, 3) and len(ours) == 1
    assert_same(ours, theirs)


def test_single_tensor_loader_uses_every_example(data) -> None:
    """A loader of bare tensors gives a tensor back, equal to what a loader of 1-element lists
    gives (Captum's own result there). Captum's version zips the roles with the batch tensor
    itself, so it only ever sees the first example of each batch."""
    x, _, _ = data
    red = lambda a, o, _: o.sum(0) + (0 if a is None else a)  # noqa: E731
    model = TwoInputs()
    ours, theirs = both(model, DataLoader(x, batch_size=3), reduce=red)
    assert isinstance(ours, Tensor) and ours.shape == (3, 4)
    ours_list, theirs_list = both(model, DataLoader(TensorDataset(x), batch_size=3), reduce=red)
    assert_same(ours_list, theirs_list)
    torch.testing.assert_close(ours, theirs_list[0], rtol=1e-10, atol=1e-12)
    assert theirs.shape == (1, 4)  # Captum: one metric from first rows only


def test_attribution_is_the_metric_drop_and_traversals_are_counted(data) -> None:
    x, _, y = data
    loads = []

    class Loader:
        def __iter__(self):
            loads.append(1)
            return iter(DataLoader(TensorDataset(x, y), batch_size=5))

    model = TwoInputs()
    mask = torch.tensor([[0, 1, 1, 0]])
    attr = llmattr.DataLoaderAttribution(llmattr.FeatureAblation(model)).attribute(
        Loader(), input_roles=(0, 2), feature_mask=mask, reduce=accuracy_and_sum,
        perturbations_per_pass=1,
    )  # fmt: skip
    full = accuracy_and_sum(None, model(x), (x, y))
    x0 = x.clone()
    x0[:, [0, 3]] = 0
    drop = full - accuracy_and_sum(None, model(x0), (x0, y))
    torch.testing.assert_close(attr[0][0, [0, 3]], drop.expand(2))
    assert len(loads) == 1 + 1 + 2  # first batch peek, unperturbed pass, one pass per feature


def test_integer_inputs_keep_their_dtype() -> None:
    """Captum ablates with ``x * keep + b * (1 - keep)``, which turns token ids into floats (an
    embedding then fails); ours replaces elements, so ids stay ids."""
    emb = nn.Embedding(10, 3).double()
    ids = torch.randint(1, 10, (6, 5))
    loader = DataLoader(TensorDataset(ids), batch_size=4)

    def model(t: Tensor) -> Tensor:
        assert t.dtype == torch.long
        return emb(t).sum((1, 2))

    attr = llmattr.DataLoaderAttribution(llmattr.FeatureAblation(model)).attribute(
        loader, reduce=lambda a, o, _: o.sum() + (0 if a is None else a)
    )
    assert attr[0].shape == (1, 5)
    want = torch.stack([emb(ids[:, p]).sum() - emb(torch.zeros_like(ids[:, p])).sum()
                        for p in range(5)])  # fmt: skip
    torch.testing.assert_close(attr[0][0], want)
    with pytest.raises((RuntimeError, AssertionError)):
        captum_attr.DataLoaderAttribution(captum_attr.FeatureAblation(model)).attribute(
            loader, reduce=lambda a, o, _: o.sum() + (0 if a is None else a)
        )


def test_the_wrapped_method_is_left_untouched(data) -> None:
    x, _, y = data
    model = TwoInputs()
    fa = llmattr.FeatureAblation(model)
    llmattr.DataLoaderAttribution(fa).attribute(
        DataLoader(TensorDataset(x, y), batch_size=5), input_roles=(0, 2)
    )
    assert fa.forward_func is model


BAD = [
    ({"input_roles": (0,)}, "roles-length"),
    ({"input_roles": (2, 2)}, "no-attributed"),
    ({"input_roles": (0, 2), "baselines": torch.zeros(2, 4, dtype=F64)}, "baseline-batch"),
    ({"input_roles": (0, 2), "baselines": (0.0, 1.0)}, "baseline-count"),
    ({"input_roles": (0, 2), "feature_mask": torch.zeros(2, 4, dtype=torch.long)}, "mask-batch"),
    ({"input_roles": (0, 2), "feature_mask": (torch.zeros(1, 4).long(),) * 2}, "mask-count"),
    ({"input_roles": (0, 2), "to_metric": lambda a: 3.0}, "metric-type"),
]


@pytest.mark.parametrize("kw", [b[0] for b in BAD], ids=[b[1] for b in BAD])
def test_invalid_arguments_raise_like_captum(data, kw) -> None:
    x, _, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    with pytest.raises(AssertionError):
        captum_attr.DataLoaderAttribution(captum_attr.FeatureAblation(TwoInputs())).attribute(
            loader, **kw
        )
    with pytest.raises(InputError):
        llmattr.DataLoaderAttribution(llmattr.FeatureAblation(TwoInputs())).attribute(loader, **kw)


def test_only_feature_ablation_is_supported() -> None:
    with pytest.raises(AssertionError):
        captum_attr.DataLoaderAttribution(captum_attr.Saliency(TwoInputs()))
    with pytest.raises(InputError):
        llmattr.DataLoaderAttribution(llmattr.Saliency(TwoInputs()))
    dla = llmattr.DataLoaderAttribution(llmattr.FeatureAblation(TwoInputs()))
    with pytest.raises(NotImplementedError):
        dla.attribute_future()


def test_loader_yielding_tuples(data) -> None:
    """A loader whose collate returns tuples works like one returning lists (Captum's version
    fails on tuples: it only converts lists)."""
    x, _, y = data
    as_tuple = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda b: tuple(
        torch.stack(col) for col in zip(*b)))  # fmt: skip
    as_list = DataLoader(TensorDataset(x, y), batch_size=4)
    model = TwoInputs()
    kw = dict(input_roles=(0, 2), reduce=accuracy_and_sum)
    _, theirs = both(model, as_list, **kw)
    got = llmattr.DataLoaderAttribution(llmattr.FeatureAblation(model)).attribute(as_tuple, **kw)
    assert_same(got, theirs)
    with pytest.raises(UnboundLocalError):
        captum_attr.DataLoaderAttribution(captum_attr.FeatureAblation(model)).attribute(
            as_tuple, **kw
        )
