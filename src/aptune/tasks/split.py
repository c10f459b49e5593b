"""Deterministic train/eval splits (stratified by label, or at random by group).

Both functions use :class:`random.Random`, whose ``shuffle`` has produced the same order for a given
seed since Python 3.2, so a split is reproducible across machines and library versions (NumPy's
generators make no such promise for ``permutation``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

__all__ = ["eval_size", "random_split", "stratified_split"]


def eval_size(total: int, eval_fraction: float) -> int:
    """Number of rows held out for evaluation: ``ceil(eval_fraction * total)``.

    The product is rounded to 6 decimals first so that float noise (``0.1 * 30 = 3.0000000000000004``)
    does not add a row. The same rule as scikit-learn's ``train_test_split``, so splits have the sizes
    users know from there.

    Args:
        total: Number of rows.
        eval_fraction: Fraction to hold out, in [0, 1).

    Returns:
        The eval size, at most ``total - 1`` so that training keeps a row.
    """
    if total <= 1 or eval_fraction <= 0:
        return 0
    return min(total - 1, math.ceil(round(eval_fraction * total, 6)))


def stratified_split(
    labels: Sequence[Hashable], eval_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split row indices into train and eval so that each label keeps its share in both.

    The eval set has :func:`eval_size` rows. Each label gets the floor of its exact share; the rows
    left over go, one each, to the labels with the largest remainders (ties: larger label first, then
    label order). A label keeps at least one row in train, so a class seen once is never eval-only.
    Inside each label, rows are shuffled with ``seed`` and the first ones go to eval.

    Args:
        labels: One label per row (any hashable, e.g. int ids or names).
        eval_fraction: Fraction of rows to hold out, in [0, 1).
        seed: Seed of the shuffle.

    Returns:
        ``(train_indices, eval_indices)``, each sorted ascending (file order is kept).

    Example:
        >>> train, dev = stratified_split(["a"] * 8 + ["b"] * 2, eval_fraction=0.2)
        >>> len(train), len(dev)
        (8, 2)
    """
    total = len(labels)
    wanted = eval_size(total, eval_fraction)
    by_label: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    # Sort the labels by their string form so the order (and so the shuffles) does not depend on the
    # order in which labels first appear in the file.
    order = sorted(by_label, key=str)
    quota = {label: len(by_label[label]) * wanted / total for label in order} if total else {}
    room = {label: len(by_label[label]) - 1 for label in order}
    take = {label: min(math.floor(quota[label]), room[label]) for label in order}
    while sum(take.values()) < wanted:
        candidates = [label for label in order if take[label] < room[label]]
        if not candidates:
            break
        best = max(
            candidates, key=lambda lab: (quota[lab] - take[lab], len(by_label[lab]), -order.index(lab))
        )
        take[best] += 1

    rng = random.Random(seed)
    train: list[int] = []
    held: list[int] = []
    for label in order:
        rows = list(by_label[label])
        rng.shuffle(rows)
        held.extend(rows[: take[label]])
        train.extend(rows[take[label] :])
    return sorted(train), sorted(held)


def random_split(
    num_rows: int, eval_fraction: float, seed: int = 0, *, groups: Sequence[Hashable] | None = None
) -> tuple[list[int], list[int]]:
    """Split row indices into train and eval at random, keeping groups together.

    With ``groups`` (e.g. the context paragraph of each QA question), whole groups are held out, so no
    eval question shares its paragraph with a training question; the eval share is then counted in
    groups, not rows.

    Args:
        num_rows: Number of rows.
        eval_fraction: Fraction to hold out, in [0, 1).
        seed: Seed of the shuffle.
        groups: Optional group key per row.

    Returns:
        ``(train_indices, eval_indices)``, each sorted ascending.
    """
    keys: list[Hashable] = list(groups) if groups is not None else list(range(num_rows))
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    group_order = list(members)  # first-seen order: deterministic for a given file
    random.Random(seed).shuffle(group_order)
    held_groups = group_order[: eval_size(len(group_order), eval_fraction)]
    held = sorted(index for key in held_groups for index in members[key])
    held_set = set(held)
    train = [index for index in range(num_rows) if index not in held_set]
    return train, held
