"""Seeded splits of rater data: by user (seen vs held-out users) and, within each user, by rated item.

Why split items rather than pairs: when pairs are derived from per-item judgements (Polis votes, PRISM ratings,
simulated scores), one item appears in many pairs. Splitting the *pairs* of a user puts the same item in both the
training and the test pairs of that user, so the test answers leak through the shared item (on Polis this inflates
per-user accuracy from about 85% to about 98%). [`split_items_per_user`] therefore splits the rated items of each
user (one row per user and item) *before* any pair is formed; pairs are then built inside each part.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
from datasets import Dataset, DatasetDict

from .raw import column_values


def user_rng(seed: int, user_id: str) -> np.random.Generator:
    """A generator that depends only on `seed` and `user_id`, so a user's draws do not change when other users are
    added or removed."""
    return np.random.default_rng([seed, zlib.crc32(str(user_id).encode("utf-8"))])


def split_users(
    dataset: Dataset, heldout_fraction: float = 0.2, seed: int = 0, user_column: str = "user_id"
) -> DatasetDict:
    """Split the users of `dataset` into training users and held-out users (all rows of a user go to one side).

    Args:
        dataset: Any dataset with a user column (raw per-item rows or pairs).
        heldout_fraction: Fraction of users held out (rounded, at least one user when the fraction is positive and
            there are at least two users).
        seed: Seed of the user permutation.
        user_column: Column holding the user id.

    Returns:
        `DatasetDict` with `"train"` (rows of training users) and `"heldout"` (rows of held-out users).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    if user_column not in dataset.column_names:
        raise ValueError(f"User column {user_column!r} not found; columns found: {dataset.column_names}.")
    user_of_row = [str(u) for u in column_values(dataset, user_column)]
    users = sorted(set(user_of_row))
    num_heldout = int(round(heldout_fraction * len(users)))
    if heldout_fraction > 0 and num_heldout == 0 and len(users) > 1:
        num_heldout = 1
    order = np.random.default_rng(seed).permutation(len(users))
    heldout = {users[i] for i in order[:num_heldout]}
    is_heldout = [u in heldout for u in user_of_row]
    return DatasetDict(
        train=dataset.select([i for i, h in enumerate(is_heldout) if not h]),
        heldout=dataset.select([i for i, h in enumerate(is_heldout) if h]),
    )


def sample_users(dataset: Dataset, max_users: int, seed: int = 0, user_column: str = "user_id") -> Dataset:
    """The rows of `max_users` users of `dataset` drawn at random (a seeded permutation of the sorted user ids), for
    smaller runs of the same data."""
    users = sorted(set(column_values(dataset, user_column)))
    kept = {users[i] for i in np.random.default_rng(seed).permutation(len(users))[:max_users]}
    return dataset.filter(lambda row: row[user_column] in kept)


def split_items_per_user(
    dataset: Dataset,
    fractions: Mapping[str, float],
    seed: int = 0,
    user_column: str = "user_id",
    stratify_column: str | None = None,
) -> DatasetDict:
    """Split each user's rows (one row per rated item) into disjoint parts, before pairs are formed.

    Each user's rows are shuffled with a generator seeded by (`seed`, user id) and cut according to `fractions`;
    with `stratify_column` (e.g. the vote), each value is cut separately so that every part keeps both agreements
    and disagreements where the user has enough of them. Parts are disjoint per user by construction: an item rated
    by a user lands in exactly one part for that user.

    Args:
        dataset: One row per (user, item).
        fractions: Part name -> fraction, e.g. `{"train": 0.6, "adaptation": 0.2, "test": 0.2}` (normalised to sum 1).
        seed: Seed of the per-user shuffles.
        user_column: Column holding the user id.
        stratify_column: Optional column whose values are split separately.

    Returns:
        `DatasetDict` with one dataset per part, rows in their original order.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {dict(fractions)}.")
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], dtype=float)
    cumulative = np.cumsum(weights / weights.sum())

    groups: dict[tuple[str, object], list[int]] = defaultdict(list)
    strata = column_values(dataset, stratify_column) if stratify_column is not None else [None] * len(dataset)
    for index, (user, stratum) in enumerate(zip(column_values(dataset, user_column), strata)):
        groups[(str(user), stratum)].append(index)

    parts: dict[str, list[int]] = {name: [] for name in names}
    for (user, stratum), indices in sorted(groups.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        rng = user_rng(seed, f"{user}\x00{stratum}")
        shuffled = [indices[i] for i in rng.permutation(len(indices))]
        bounds = np.round(cumulative * len(shuffled)).astype(int)
        start = 0
        for name, end in zip(names, bounds):
            parts[name].extend(shuffled[start:end])
            start = end
    return DatasetDict({name: dataset.select(sorted(parts[name])) for name in names})
