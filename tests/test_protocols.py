"""Data protocols: Dassl-identical few-shot sampling, base / novel subsets, transfer targets."""

from __future__ import annotations

import math
import random

import pytest

from scaleprompt.config import ConfigError
from scaleprompt.data import DatasetSplits, Datum, Protocol, apply_protocol, fewshot, harmonic_mean
from scaleprompt.data.protocols import (
    evaluation_targets,
    fewer_shots_problem,
    split_by_label,
    subsample_classes,
)


def d(name: str, label: int) -> Datum:
    return Datum(f"/img/{name}.jpg", label, f"class{label}")


# Label order of first appearance is 2, 0, 1 (not sorted): Dassl groups in that order.
TRAIN = [
    d("a0", 2),
    d("b0", 0),
    d("a1", 2),
    d("a2", 2),
    d("b1", 0),
    d("c0", 1),
    d("a3", 2),
    d("b2", 0),
    d("a4", 2),
]
VAL = [d("va0", 2), d("vb0", 0), d("va1", 2), d("vb1", 0), d("va2", 2), d("vb2", 0), d("vc0", 1)]


def names(items):
    return [it.path.split("/")[-1][:-4] for it in items]


def test_fewshot_matches_dassl_selection_pinned_by_hand():
    """Derived from Python's Mersenne Twister: Random(1).sample(['a0'..'a4'], 2) == ['a1', 'a0'], then on the
    same stream sample(['b0', 'b1', 'b2'], 2) == ['b1', 'b0']; label 1 has 1 < 2 items: taken whole, no call.
    Val (2 shots) continues the stream: ['va1', 'va2'], then ['vb1', 'vb2'], then ['vc0']."""
    ds = DatasetSplits("toy", "/img", TRAIN, VAL, [], ["class0", "class1", "class2"])
    out = apply_protocol(ds, Protocol(shots=2, seed=1))
    assert names(out.train) == ["a1", "a0", "b1", "b0", "c0"]
    assert names(out.val) == ["va1", "va2", "vb1", "vb2", "vc0"]
    out2 = apply_protocol(ds, Protocol(shots=2, seed=2))  # Random(2): ['a0', 'a4'], ['b0', 'b1']
    assert names(out2.train) == ["a0", "a4", "b0", "b1", "c0"]


def test_fewshot_is_dassl_generate_fewshot_dataset():
    """Same selection as Dassl's code path (global random seeded at start-up)."""
    random.seed(3)
    expected = []
    tracker: dict[int, list] = {}
    for item in TRAIN:
        tracker.setdefault(item.label, []).append(item)
    for items in tracker.values():
        expected.extend(random.sample(items, 3) if len(items) >= 3 else items)
    assert fewshot(TRAIN, 3, random.Random(3)) == expected


def test_split_by_label_keeps_first_appearance_order():
    assert list(split_by_label(TRAIN)) == [2, 0, 1]


def test_validation_gets_min_k_4_shots():
    train = [d(f"t{i}", y) for y in range(3) for i in range(20)]
    val = [d(f"v{i}", y) for y in range(3) for i in range(10)]
    ds = DatasetSplits("toy", "/img", train, val, [], ["class0", "class1", "class2"])
    for k, v in ((1, 1), (2, 2), (4, 4), (8, 4), (16, 4)):
        out = apply_protocol(ds, Protocol(shots=k, seed=1))
        assert len(out.train) == 3 * k and len(out.val) == 3 * v
    full = apply_protocol(ds, Protocol(shots=0, seed=1))
    assert full.train == train and full.val == val


def test_base_new_split_relabels_and_filters_every_split():
    classes = [f"c{i}" for i in range(5)]
    train = [Datum(f"/t{y}-{i}", y, classes[y]) for y in range(5) for i in range(3)]
    test = [Datum(f"/e{y}", y, classes[y]) for y in range(5)]
    ds = DatasetSplits("toy", "/", train, [], test, classes)
    base = apply_protocol(ds, Protocol(shots=2, seed=1, subset="base"))
    new = apply_protocol(ds, Protocol(shots=2, seed=1, subset="new"))
    m = math.ceil(5 / 2)
    assert base.classnames == classes[:m] and new.classnames == classes[m:]
    assert sorted({x.label for x in base.test}) == [0, 1, 2] and sorted({x.label for x in new.test}) == [0, 1]
    assert [x.path for x in new.test] == ["/e3", "/e4"] and [x.label for x in new.test] == [0, 1]
    assert all(x.classname == new.classnames[x.label] for x in new.train + new.test)
    assert {x.path for x in base.train} | {x.path for x in new.train} == {
        x.path for x in apply_protocol(ds, Protocol(2, 1)).train
    }


def test_subsample_uses_labels_of_the_first_split_only():
    a = [Datum("/a", 0, "x"), Datum("/b", 2, "z")]  # labels {0, 2}: base = [0], new = [2]
    b = [Datum("/c", 1, "y"), Datum("/d", 2, "z")]
    base_a, base_b = subsample_classes(a, b, subset="base")
    new_a, new_b = subsample_classes(a, b, subset="new")
    assert [x.path for x in base_b] == [] and [x.path for x in new_b] == ["/d"] and new_b[0].label == 0


def test_imagenet_style_val_comes_from_unused_train_images():
    train = [d(f"t{y}{i}", y) for y in range(2) for i in range(10)]
    ds = DatasetSplits("ImageNet", "/img", train, [], [d("e", 0), d("f", 1)], ["class0", "class1"], True)
    out = apply_protocol(ds, Protocol(shots=4, seed=1))
    plain = apply_protocol(
        DatasetSplits("x", "/img", train, [], [], ["class0", "class1"]), Protocol(shots=4, seed=1)
    )
    assert out.train == plain.train, "drawing val must not change the Dassl train selection"
    assert len(out.val) == 8 and not {x.path for x in out.val} & {x.path for x in out.train}


def test_eval_only_dataset_keeps_all_classes_of_its_test_split():
    test = [d("x", 0), d("y", 1), d("z", 2)]
    out = apply_protocol(
        DatasetSplits("ImageNetA", "/img", [], [], test, ["class0", "class1", "class2"]), Protocol(0)
    )
    assert out.test == test and out.classnames == ["class0", "class1", "class2"]


def test_protocol_validation_names_fields():
    with pytest.raises(ConfigError, match="subset"):
        Protocol(shots=16, seed=1, subset="novel")
    with pytest.raises(ConfigError, match="seed"):
        Protocol(shots=16, seed=-1)


def test_transfer_targets_and_hm():
    assert evaluation_targets("domain_generalization") == [
        "ImageNetV2",
        "ImageNetSketch",
        "ImageNetA",
        "ImageNetR",
    ]
    assert len(evaluation_targets("cross_dataset")) == 10 and "ImageNet" not in evaluation_targets(
        "cross_dataset"
    )
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_fewer_shots_problem_names_the_short_classes_first_few_and_count():
    names = [f"class{i}" for i in range(8)]
    assert fewer_shots_problem("pets", names, [16] * 8, 16) is None
    assert fewer_shots_problem("pets", names, [3] * 8, 0) is None  # all images: nothing to miss
    problem = fewer_shots_problem("pets", names, [16, 10, 16, 2, 9, 8, 7, 6], 16)
    assert problem == (
        "pets: 6 of 8 classes have fewer than 16 training images for 16-shot: 'class1' (10), 'class3' (2), "
        "'class4' (9), 'class5' (8), 'class6' (7) and 1 more"
    )
