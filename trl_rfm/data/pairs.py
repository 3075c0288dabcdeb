"""
Pairs for evaluating adaptation: comparisons formed from per-item ratings, and the per-user splits of pairs or of
rated items into an adaptation part and a test part.
"""

import json
from collections.abc import Callable

import numpy as np
from datasets import Dataset

from ..models.user_table import normalize_user_id
from .splits import split_items_per_user


def split_pairs_by_user(
    dataset: Dataset, test_pairs_per_user: int, user_column: str = "user_id", seed: int = 0
) -> tuple[Dataset, Dataset]:
    """
    Splits each user's comparisons into an adaptation pool and `test_pairs_per_user` test comparisons, at random.
    Only for comparisons collected as pairs: for pairs derived from ratings, use
    [`split_rated_items_for_evaluation`], or shared items leak the test answers.
    """
    if test_pairs_per_user < 1:
        raise ValueError(f"`test_pairs_per_user` must be >= 1, got {test_pairs_per_user}.")
    rows: dict[str, list[int]] = {}
    for index, user_id in enumerate(dataset[user_column]):
        rows.setdefault(normalize_user_id(user_id), []).append(index)
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for user_id, indices in rows.items():
        if len(indices) <= test_pairs_per_user:
            raise ValueError(
                f"User {user_id!r} has {len(indices)} comparisons: none left to adapt on after "
                f"{test_pairs_per_user} test pairs."
            )
        order = rng.permutation(indices).tolist()
        test += order[:test_pairs_per_user]
        pool += order[test_pairs_per_user:]
    return dataset.select(sorted(pool)), dataset.select(sorted(test))


def pairs_from_ratings(
    ratings: Dataset,
    user_column: str = "user_id",
    prompt_column: str = "prompt",
    response_column: str = "response",
    rating_column: str = "rating",
    item_column: str | None = None,
) -> Dataset:
    """
    Forms `{prompt, chosen, rejected, user_id}` pairs from per-item ratings: every two responses to the same prompt
    that a user rated differently (higher rating chosen; equal ratings give no pair). Adds `chosen_item` and
    `rejected_item` (the `item_column`, or the row index) so that leaks between parts can be checked.
    """
    required = (user_column, prompt_column, response_column, rating_column)
    missing = [c for c in required if c not in ratings.column_names]
    if missing:
        raise ValueError(f"Ratings lack the column(s) {missing}; their columns are {ratings.column_names}.")
    items = ratings[item_column] if item_column is not None else list(range(len(ratings)))
    groups: dict[tuple[str, str], list[int]] = {}
    for index, (user_id, prompt) in enumerate(zip(ratings[user_column], ratings[prompt_column])):
        groups.setdefault((normalize_user_id(user_id), json.dumps(prompt, sort_keys=True)), []).append(index)
    responses, scores, prompts = ratings[response_column], ratings[rating_column], ratings[prompt_column]
    columns = {"prompt": [], "chosen": [], "rejected": [], user_column: [], "chosen_item": [], "rejected_item": []}
    for (user_id, _), indices in groups.items():
        for a_position, a in enumerate(indices):
            for b in indices[a_position + 1 :]:
                if scores[a] == scores[b]:
                    continue
                chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
                columns["prompt"].append(prompts[chosen])
                columns["chosen"].append(responses[chosen])
                columns["rejected"].append(responses[rejected])
                columns[user_column].append(user_id)
                columns["chosen_item"].append(items[chosen])
                columns["rejected_item"].append(items[rejected])
    return Dataset.from_dict(columns)


def split_rated_items_for_evaluation(
    ratings: Dataset,
    test_fraction: float = 0.5,
    seed: int = 0,
    user_column: str = "user_id",
    make_pairs: Callable[[Dataset], Dataset] | None = None,
) -> tuple[Dataset, Dataset]:
    """
    The leak-free split for comparisons derived from ratings or votes: each held-out user's *rated items* are split
    into an adaptation part and a test part, and pairs are formed inside each part only, so no test pair shares an
    item with an adaptation pair of the same user (a pair-level split lets a test pair give its answer away through
    a shared item: on Polis it inflates held-out accuracy from about 85% to about 98%).

    Args:
        ratings: one row per (user, rated item).
        test_fraction: fraction of each user's rated items kept for testing.
        make_pairs: ratings -> pairs; defaults to [`pairs_from_ratings`] with its default columns (pass
            `trl_rfm.data.polis.make_polis_pairs` for Polis votes).

    Returns:
        `(adaptation_pairs, test_pairs)`.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    parts = split_items_per_user(
        ratings, {"adaptation": 1 - test_fraction, "test": test_fraction}, seed=seed, user_column=user_column
    )
    make_pairs = make_pairs or (lambda part: pairs_from_ratings(part, user_column=user_column))
    return make_pairs(parts["adaptation"]), make_pairs(parts["test"])
