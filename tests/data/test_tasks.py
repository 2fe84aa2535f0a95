"""Task sequences: class splits, rotations, and bad class groups."""

from __future__ import annotations

import pytest
import torch

from tacitbayes.data import load_dataset, rotate, rotated_tasks, split_tasks
from tacitbayes.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ood=False)


def test_split_tasks_partition_every_split(digits) -> None:
    groups = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    tasks = split_tasks(digits, groups)
    assert [t.name for t in tasks] == ["0-1", "2-3", "4-5", "6-7", "8-9"]
    for split in ("train", "val", "test"):
        whole = getattr(digits, split)
        assert sum(len(getattr(t, split)) for t in tasks) == len(whole)
        for t in tasks:
            x, y = getattr(t, split).tensors
            assert set(y.tolist()) == set(t.classes)
            # the examples are those of the bundle, unchanged
            bx, by = whole.tensors
            mask = torch.isin(by, torch.tensor(t.classes))
            assert torch.equal(x, bx[mask]) and torch.equal(y, by[mask])
    assert tasks[0].sizes() == {
        "n_train": len(tasks[0].train),
        "n_val": len(tasks[0].val),
        "n_test": len(tasks[0].test),
    }


def test_uneven_groups_keep_their_order(digits) -> None:
    tasks = split_tasks(digits, [[9], [3, 1, 2]])
    assert [t.classes for t in tasks] == [(9,), (3, 1, 2)]
    assert set(tasks[1].train.tensors[1].tolist()) == {1, 2, 3}


@pytest.mark.parametrize(
    "groups, match",
    [
        ((), "empty"),
        ("01", "sequence of class groups"),
        (((0, 1), ()), "group 1 must be a non-empty"),
        (((0, 1), (1, 2)), "class 1 of group 1 appears also in group 0"),
        (((0, 0),), "appears twice"),
        (((0, 10),), r"outside \[0, 9\]"),
        (((-1,),), "outside"),
        (((0.5,),), "integer labels"),
    ],
)
def test_bad_class_groups(digits, groups, match: str) -> None:
    with pytest.raises(InputError, match=match):
        split_tasks(digits, groups)


def test_rotated_tasks_rotate_every_split(digits) -> None:
    tasks = rotated_tasks(digits, (0, 45.0))
    assert [t.name for t in tasks] == ["rot0", "rot45"]
    assert all(t.classes == tuple(range(10)) for t in tasks)
    for split in ("train", "val", "test"):
        x0, y0 = getattr(tasks[0], split).tensors
        x1, y1 = getattr(tasks[1], split).tensors
        bx, by = getattr(digits, split).tensors
        assert torch.equal(y0, by) and torch.equal(y1, by)
        torch.testing.assert_close(x0, bx, atol=1e-5, rtol=0)  # 0°: the images themselves
        expected = digits.normalize(rotate(bx * digits.std + digits.mean, 45.0))
        torch.testing.assert_close(x1, expected)
    torch.testing.assert_close(tasks[1].test.tensors[0], digits.rotated_test(45.0).tensors[0])


@pytest.mark.parametrize("angles", [(), (0, float("nan")), (0, 0), "30", (True,)])
def test_bad_angles(digits, angles) -> None:
    with pytest.raises(InputError):
        rotated_tasks(digits, angles)
