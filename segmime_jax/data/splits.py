"""Patient-level train/validation/test splits: the fixed ACDC lists and seeded proportional splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Validation patients of the author's ACDC tutorial; the paper keeps 10 for validation (§3.3).
ACDC_VALIDATION: tuple[str, ...] = tuple(f"patient{n:03d}" for n in (2, 8, 9, 12, 14, 24, 49, 55, 92, 95))
#: Test patients of the same split (20).
ACDC_TEST: tuple[str, ...] = tuple(
    f"patient{n:03d}" for n in (3, 7, 11, 17, 20, 23, 25, 30, 31, 38, 42, 48, 53, 60, 64, 67, 79, 81, 84, 88)
)
#: The 100 labelled ACDC training patients.
ACDC_PATIENTS: tuple[str, ...] = tuple(f"patient{n:03d}" for n in range(1, 101))
#: Training patients of the fixed split: the other 70.
ACDC_TRAIN: tuple[str, ...] = tuple(p for p in ACDC_PATIENTS if p not in ACDC_VALIDATION + ACDC_TEST)

#: Train/validation/test proportions of both papers' splits (ACDC 70/10/20, PROMISE12 35/5/10).
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def split_sizes(count: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """Numbers of train/val/test items: rounded proportions, at least 1 in each split.

    ``split_sizes(100) == (70, 10, 20)``, ``split_sizes(50) == (35, 5, 10)``, ``split_sizes(20) == (14, 2, 4)``.
    """
    if count < 3:
        raise ValueError(f"need at least 3 patients for a train/validation/test split, got {count}")
    n_val = max(1, int(np.floor(count * fractions[1] + 0.5)))
    n_test = max(1, int(np.floor(count * fractions[2] + 0.5)))
    while count - n_val - n_test < 1:  # tiny datasets: keep one training patient
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        else:
            n_val -= 1
    return count - n_val - n_test, n_val, n_test


def seeded_split(names: Sequence[str], seed: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Shuffle the sorted ``names`` with ``numpy.random.default_rng(seed)`` and cut 70/10/20 (see :func:`split_sizes`).

    Each returned list is sorted.
    """
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("duplicate names in a split")
    n_train, n_val, _ = split_sizes(len(ordered))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    train = tuple(sorted(shuffled[:n_train]))
    val = tuple(sorted(shuffled[n_train : n_train + n_val]))
    test = tuple(sorted(shuffled[n_train + n_val :]))
    return train, val, test
