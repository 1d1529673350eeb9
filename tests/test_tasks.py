"""weightgen.tasks: fixed digits splits, generated MNIST-1D, class-subset codes, the registry."""
from __future__ import annotations

import random
import socket
import urllib.request

import numpy as np
import pytest
import torch

from weightgen.registry import RegistryError
from weightgen.tasks import (
    TASKS, Task, TaskCodeError, all_codes, binary_subset, code_bits, code_from_classes, get_task, parse_code,
)
from weightgen.tasks import digits as digits_mod
from weightgen.tasks import mnist1d as mnist1d_mod

SPLITS = ("train", "val", "test")


# -- digits -------------------------------------------------------------------------------
def test_digits_split_sizes_and_shapes():
    t = get_task("digits")
    assert isinstance(t, Task)
    assert t.num_classes == 10 and t.condition == {}
    # 1797 images, 60 / 20 / 20
    assert {s: len(t.split(s)[1]) for s in SPLITS} == {"train": 1078, "val": 359, "test": 360}
    assert t.input_shape == (1, 8, 8)
    for s in SPLITS:
        x, y = t.split(s)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert len(x) == len(y)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_digits_standardize_uses_the_training_splits_statistics():
    raw, std = get_task("digits"), get_task("digits", standardize=True)
    x_tr = std.split("train")[0]
    assert abs(float(x_tr.mean())) < 1e-5 and abs(float(x_tr.std()) - 1.0) < 1e-3
    # val and test are shifted and scaled by the training split's mean and deviation, not their own
    mean, dev = float(raw.split("train")[0].mean()), float(raw.split("train")[0].std(correction=0))
    for s in SPLITS:
        assert torch.equal(raw.split(s)[1], std.split(s)[1])
        torch.testing.assert_close(std.split(s)[0], (raw.split(s)[0] - mean) / dev)
    assert float(raw.split("train")[0].min()) == 0.0  # the cached raw arrays are untouched


def test_digits_rejects_an_unknown_option_by_name():
    with pytest.raises(RegistryError, match="unknown option .standardise.*allowed: standardize"):
        get_task("digits", standardise=True)


def test_digits_splits_are_stratified():
    t = get_task("digits")
    total = sum(torch.bincount(t.split(s)[1], minlength=10) for s in SPLITS).double()
    share = total / total.sum()
    for s in SPLITS:
        counts = torch.bincount(t.split(s)[1], minlength=10)
        assert (counts > 0).all(), f"split {s} misses a class: {counts.tolist()}"
        # stratified: every class has its overall share of the split, up to rounding
        expected = share * len(t.split(s)[1])
        assert ((counts - expected).abs() <= 1.0).all(), (s, counts.tolist(), expected.tolist())


def test_digits_splits_are_disjoint():
    t = get_task("digits")
    rows = {s: {tuple(r.tolist()) for r in t.split(s)[0].flatten(1)} for s in SPLITS}
    # a handful of digits images are exact duplicates in the data set itself; the splits
    # must still not share (almost) anything
    assert len(rows["train"] & rows["test"]) <= 5
    assert len(rows["train"] & rows["val"]) <= 5


def test_digits_is_deterministic():
    a = get_task("digits")
    digits_mod._digits_arrays.cache_clear()  # really recompute the split
    b = get_task("digits")
    for s in SPLITS:
        assert torch.equal(a.split(s)[0], b.split(s)[0])
        assert torch.equal(a.split(s)[1], b.split(s)[1])


def test_split_rejects_unknown_name():
    with pytest.raises(ValueError, match="train, val, test"):
        get_task("digits").split("holdout")


def test_scores():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    task = get_task("digits")
    s = task.scores(logits, y)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["error"] == pytest.approx(1 / 3)
    assert s["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    # the batched form: one row per model, the same numbers
    batched = task.batch_scores(torch.stack([logits, -logits]), y)
    assert batched["accuracy"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert batched["loss"][0].item() == pytest.approx(s["loss"])
    assert task.failures(logits[None], y).tolist() == [[False, False, True]]
    assert (task.kind, task.headline, task.metrics) == ("classification", "accuracy", {"loss": "lower", "accuracy": "higher"})


def test_a_task_made_by_hand_infers_its_classes_and_checks_its_headline():
    x, y = torch.zeros(6, 3), torch.tensor([0, 2, 1, 2, 0, 1])
    assert Task("mine", x, y, x, y, x, y).num_classes == 3
    assert Task("mine", x, y, x, y, x, y, num_classes=5).num_classes == 5
    with pytest.raises(ValueError, match="headline metric 'psnr' is not one of its metrics \\(loss, accuracy\\)"):
        Task("mine", x, y, x, y, x, y, headline="psnr")


# -- MNIST-1D -------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the task tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_mnist1d_is_generated_without_download(no_network):
    t = get_task("mnist1d", num_samples=500, seed=3)
    # mnist1d keeps 80% for training, of which this task keeps 20% for validation
    sizes = {s: len(t.split(s)[1]) for s in SPLITS}
    assert sizes == {"train": 320, "val": 80, "test": 100}
    assert t.input_shape == (40,)
    assert t.num_classes == 10
    assert set(torch.unique(t.y_train).tolist()) == set(range(10))
    assert t.x_train.dtype == torch.float32 and t.y_train.dtype == torch.int64


def test_mnist1d_is_deterministic_and_seeded():
    a = get_task("mnist1d", num_samples=300, seed=5)
    mnist1d_mod._mnist1d_arrays.cache_clear()
    b = get_task("mnist1d", num_samples=300, seed=5)
    c = get_task("mnist1d", num_samples=300, seed=6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_mnist1d_keeps_numpy_global_rng():
    mnist1d_mod._mnist1d_arrays.cache_clear()
    np.random.seed(1234)
    expected = np.random.rand(5)
    np.random.seed(1234)
    get_task("mnist1d", num_samples=200, seed=11)
    np.testing.assert_array_equal(np.random.rand(5), expected)


def test_mnist1d_keeps_python_global_rng():
    """Building the task leaves Python's ``random`` as it was: mnist1d's make_dataset seeds
    both numpy's and Python's global RNGs, and the task restores both."""
    mnist1d_mod._mnist1d_arrays.cache_clear()
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    get_task("mnist1d", num_samples=200, seed=12)
    assert [random.random() for _ in range(3)] == expected


# -- class-subset codes -------------------------------------------------------------------------
def test_all_codes():
    codes = all_codes(10)
    assert len(codes) == 1022 == len(set(codes))
    assert "0" * 10 not in codes and "1" * 10 not in codes
    assert all(len(c) == 10 and set(c) <= {"0", "1"} for c in codes)
    assert all(parse_code(c, 10) == c for c in codes[:50])
    assert len(all_codes(3)) == 6


@pytest.mark.parametrize("code", ["010010000", "01001000011", "0000000000", "1111111111", "01001000a1",
                                  "0100100002", "", "0 00100001"])
def test_parse_code_rejects(code):
    with pytest.raises(TaskCodeError):
        parse_code(code, 10)


def test_parse_code_accepts_lists_and_strips():
    assert parse_code([0, 1, 0, 0, 1, 0, 0, 0, 0, 1], 10) == "0100100001"
    assert parse_code(" 0100100001 ", 10) == "0100100001"
    assert issubclass(TaskCodeError, ValueError)


def test_code_from_classes():
    assert code_from_classes([1, 4, 9], 10) == "0100100001"
    assert code_from_classes([0], 10) == "1000000000"
    for bad in ([10], [-1], [1, 12]):
        with pytest.raises(TaskCodeError, match="out of range"):
            code_from_classes(bad, 10)
    with pytest.raises(TaskCodeError):  # every class positive: no negative class
        code_from_classes(list(range(10)), 10)
    with pytest.raises(TaskCodeError):
        code_from_classes([], 10)


def test_code_bits():
    assert code_bits("0100100001").tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 1]


def test_binary_subset_relabels():
    base = get_task("digits")
    code = "0100100001"
    t = binary_subset(base, code)
    assert t.num_classes == 2
    assert t.condition == {"code": code}
    assert code in t.name
    positive = torch.tensor([1, 4, 9])
    for s in SPLITS:
        x, y = t.split(s)
        bx, by = base.split(s)
        assert torch.equal(x, bx)
        assert torch.equal(y, torch.isin(by, positive).long())
        assert set(y.unique().tolist()) == {0, 1}
    # the base task is left as it was
    assert base.num_classes == 10 and base.condition == {}
    assert get_task("digits", code=code).condition == {"code": code}


def test_binary_subset_rejects_bad_code():
    with pytest.raises(TaskCodeError):
        binary_subset(get_task("digits"), "1111111111")


# -- registry ---------------------------------------------------------------------------------
def test_get_task_unknown_name_lists_available():
    with pytest.raises(RegistryError) as e:
        get_task("digitz")
    msg = str(e.value)
    assert "digitz" in msg and "digits" in msg and "mnist1d" in msg


def test_get_task_unknown_kwarg_names_allowed():
    with pytest.raises(RegistryError) as e:
        get_task("mnist1d", num_sample=100)
    msg = str(e.value)
    assert "num_sample" in msg and "num_samples" in msg and "seed" in msg
    with pytest.raises(RegistryError, match="foo"):
        get_task("digits", foo=1)


def test_registry_names():
    assert {"digits", "mnist1d"} <= set(TASKS.names())
    assert "digits" in TASKS
