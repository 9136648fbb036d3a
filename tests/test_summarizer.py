"""Summarizer, ClassSummarizer and the Stat family against Captum's (float64, seeded), plus the
properties Captum's versions break: numerical stability far from zero and tensor labels."""

from __future__ import annotations

import pytest
import torch

import llmattr
from llmattr._core.errors import InputError
from llmattr.attr import (
    MSE,
    ClassSummarizer,
    CommonStats,
    Count,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
    Summarizer,
    Var,
)

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's requires_grad notices

F64 = torch.float64


def ours_and_theirs(make):  # make(module) -> stats, built from llmattr's and from Captum's
    return make(llmattr.attr), make(captum_attr)


def summarizers(make, cls: str = "Summarizer"):
    """The same summarizer from llmattr and from Captum."""
    return getattr(llmattr.attr, cls)(make(llmattr.attr)), getattr(captum_attr, cls)(
        make(captum_attr)
    )


ALL = lambda m: [  # noqa: E731
    m.Mean(), m.Var(), m.Var(order=1), m.Var(order=2), m.StdDev(), m.StdDev(order=1),
    m.StdDev(order=3), m.MSE(), m.Min(), m.Max(), m.Sum(), m.Count(),
]  # fmt: skip


def assert_summary_equal(got, want) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_summary_equal(g, w)
        return
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        if isinstance(w, torch.Tensor):
            assert isinstance(g, torch.Tensor) and g.dtype == w.dtype, key
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=key)
        else:
            assert g == w, key


@pytest.mark.parametrize("n_updates", [1, 2, 3, 7])
def test_every_stat_matches_captum_on_tensors(n_updates: int) -> None:
    ours, theirs = summarizers(ALL)
    for _ in range(n_updates):
        x = torch.randn(3, 4, dtype=F64)
        ours.update(x)
        theirs.update(x)
    assert_summary_equal(ours.summary, theirs.summary)


def test_tuples_of_tensors_and_floats_match_captum() -> None:
    ours, theirs = summarizers(lambda m: m.CommonStats())
    for _ in range(4):
        x = (torch.randn(2, dtype=F64), float(torch.rand(())), torch.randint(0, 9, (3,)))
        ours.update(x)
        theirs.update(x)
    got = ours.summary
    assert isinstance(got, list) and len(got) == 3
    assert_summary_equal(got, theirs.summary)


def test_floats_and_float32_match_captum() -> None:
    ours, theirs = summarizers(ALL)
    for v in (1.5, -2.0, 4.25):
        ours.update(v)
        theirs.update(v)
    assert_summary_equal(ours.summary, theirs.summary)
    ours, theirs = summarizers(ALL)
    for _ in range(3):
        x = torch.randn(5)
        ours.update(x)
        theirs.update(x)
    assert_summary_equal(ours.summary, theirs.summary)


def test_summary_is_none_before_updates_and_holds_only_requested_stats() -> None:
    summ = Summarizer([StdDev(order=1)])
    assert summ.summary is None
    summ.update(torch.ones(2))
    assert list(summ.summary) == ["sample_std_dev"]  # its Var / MSE / Mean / Count stay hidden
    assert Summarizer(CommonStats()).summary is None


def test_names_and_custom_names() -> None:
    names = [s.name for s in (Mean(), Var(), Var(order=1), Var(order=2), StdDev(), MSE())]
    assert names == ["mean", "variance", "sample_variance", "variance(2)", "std_dev", "mse"]
    assert [s.name for s in ours_and_theirs(lambda m: m.StdDev(order=2))] == ["std_dev2)"] * 2
    summ = Summarizer([Mean(name="avg"), Max(name="top")])
    summ.update(torch.tensor([1.0, 3.0]))
    summ.update(torch.tensor([3.0, 1.0]))
    assert torch.equal(summ.summary["avg"], torch.tensor([2.0, 2.0]))
    assert torch.equal(summ.summary["top"], torch.tensor([3.0, 3.0]))


def test_stats_are_equal_by_class_and_parameters() -> None:
    assert Var(order=1) == Var(order=1) and hash(Var(order=1)) == hash(Var(order=1))
    assert Var() != Var(order=1) and Mean() != Count()
    summ = Summarizer([Mean(), Mean(), Count()])
    summ.update(torch.zeros(1))
    assert set(summ.summary) == {"mean", "count"}


def test_var_order_divides_by_n_minus_order() -> None:
    xs = torch.randn(6, 3, dtype=F64)
    summ = Summarizer([Var(), Var(order=1), Var(order=2), StdDev(order=1), Sum(), Min()])
    for x in xs:
        summ.update(x)
    s = summ.summary
    torch.testing.assert_close(s["variance"], xs.var(0, correction=0))
    torch.testing.assert_close(s["sample_variance"], xs.var(0, correction=1))
    torch.testing.assert_close(s["variance(2)"], xs.var(0, correction=2))
    torch.testing.assert_close(s["sample_std_dev"], xs.std(0, correction=1))
    torch.testing.assert_close(s["sum"], xs.sum(0))
    torch.testing.assert_close(s["min"], xs.min(0).values)


def test_welford_is_stable_far_from_zero() -> None:
    """A naive E[x^2] - E[x]^2 in float64 loses every digit at mean 1e9; Welford keeps them."""
    base = torch.randn(1000, dtype=F64)
    xs = 1e9 + base
    summ = Summarizer([Var(order=1), Mean()])
    for x in xs:
        summ.update(x.reshape(1))
    torch.testing.assert_close(summ.summary["sample_variance"], base.var().reshape(1), rtol=1e-6,
                               atol=0)  # fmt: skip
    naive = (xs**2).mean() - xs.mean() ** 2
    assert abs(float(naive) * 1000 / 999 - float(base.var())) > 1e-3  # the naive way fails


def test_updates_do_not_alias_the_callers_tensors() -> None:
    x = torch.tensor([1.0, 2.0])
    summ = Summarizer([Min(), Max(), Sum(), Mean()])
    summ.update(x)
    x.add_(100)
    assert all(torch.equal(v, torch.tensor([1.0, 2.0])) for v in summ.summary.values())


def test_mixing_single_and_tuple_updates_raises_like_captum() -> None:
    for mod, err in ((llmattr.attr, InputError), (captum_attr, AssertionError)):
        summ = mod.Summarizer([mod.Mean()])
        summ.update(torch.zeros(2))
        with pytest.raises(err):
            summ.update((torch.zeros(2),))
    with pytest.raises(AssertionError):
        Summarizer([Mean()]).update("x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "labels",
    [None, 2, [3], [0, 1, 0, 2, 1], ["a", "b", "a", "a", "b"]],
    ids=["none", "int", "one-list", "int-list", "str-list"],
)
@pytest.mark.parametrize("as_tuple", [False, True])
def test_class_summarizer_matches_captum(labels, as_tuple: bool) -> None:
    ours, theirs = summarizers(lambda m: m.CommonStats(), "ClassSummarizer")
    for _ in range(3):
        x = torch.randn(5, 3, dtype=F64)
        x = (x, torch.randn(5, 2, 2, dtype=F64)) if as_tuple else x
        ours.update(x, labels)
        theirs.update(x, labels)
    assert_summary_equal(ours.summary, theirs.summary)
    got, want = ours.class_summaries, theirs.class_summaries
    assert set(got) == set(want)
    for key in want:
        assert_summary_equal(got[key], want[key])


def test_class_summarizer_groups_equal_tensor_labels() -> None:
    """Captum keys tensor labels by the tensor object, so every example becomes its own class;
    ours keys them by value, so a tensor label behaves like the same list of ints."""
    x = torch.randn(6, 3, dtype=F64)
    labels = torch.tensor([0, 1, 0, 1, 1, 2])
    by_tensor, by_list = ClassSummarizer([Mean(), Count()]), ClassSummarizer([Mean(), Count()])
    by_tensor.update(x, labels)
    by_list.update(x, labels.tolist())
    assert set(by_tensor.class_summaries) == {0, 1, 2}
    for key, summary in by_list.class_summaries.items():
        assert_summary_equal(by_tensor.class_summaries[key], summary)
    torch.testing.assert_close(by_tensor.class_summaries[1][0]["mean"], x[[1, 3, 4]].mean(0))
    theirs = captum_attr.ClassSummarizer([captum_attr.Mean()])
    theirs.update(x, labels)
    assert len(theirs.class_summaries) == 6  # Captum: one "class" per example


def test_class_summarizer_label_count_mismatch_raises_like_captum() -> None:
    x = torch.randn(4, 2)
    with pytest.raises(InputError):
        ClassSummarizer([Mean()]).update(x, [0, 1])
    with pytest.raises(AssertionError):
        captum_attr.ClassSummarizer([captum_attr.Mean()]).update(x, [0, 1])


def test_exported_from_llmattr() -> None:
    for name in ("Summarizer", "ClassSummarizer", "CommonStats", "Mean", "Var", "StdDev", "MSE",
                 "Min", "Max", "Sum", "Count"):  # fmt: skip
        assert getattr(llmattr, name) is getattr(llmattr.attr, name)
