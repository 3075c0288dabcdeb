"""
From rater ids to rows of the user table: the dataset's user column, the training vocabulary, and the collator that
carries each pair's `user_index` through TRL's preference collator.
"""

from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from trl.data_utils import get_dataset_column_names

from ..models.user_table import normalize_user_id
from .rfm_config import RFMConfig
from .validation import warn_rater_like_column


DEFAULT_USER_COLUMN = "user_id"
USER_INDEX = "user_index"


def resolve_user_column(dataset: Dataset | IterableDataset, args: RFMConfig) -> str | None:
    """The rater column of `dataset`: `args.user_column` (required when set), else `user_id` when present."""
    columns = get_dataset_column_names(dataset) or []
    if args.user_column is not None:
        if args.user_column not in columns:
            raise ValueError(
                f"The dataset has no user column {args.user_column!r} (set by `RFMConfig.user_column`); its columns "
                f"are {columns}. Add the rater id of each comparison, or unset `user_column` to train a plain reward "
                "model."
            )
        return args.user_column
    if DEFAULT_USER_COLUMN in columns:
        return DEFAULT_USER_COLUMN
    warn_rater_like_column(columns)  # e.g. `rater_id`: probably meant as the user column
    return None


def collect_user_ids(dataset: Dataset | IterableDataset, user_column: str) -> list[str]:
    """The distinct rater ids of `dataset`, normalised and sorted, so that every process builds the same vocabulary."""
    values = dataset[user_column] if isinstance(dataset, Dataset) else (row[user_column] for row in dataset)
    user_ids = set()
    for row, value in enumerate(values):
        try:
            user_ids.add(normalize_user_id(value))
        except ValueError as error:
            raise ValueError(f"Malformed value in user column {user_column!r} at row {row}: {error}") from None
    if not user_ids:
        raise ValueError(f"The user column {user_column!r} is empty.")
    return sorted(user_ids)


class UserIndexCollator:
    """Wraps a preference collator so that each pair's `user_index` reaches the model. The wrapped collator puts all
    chosen sequences first, then all rejected ones, so the index is repeated in the same order: [B] -> [2B]."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if USER_INDEX not in examples[0]:
            return self.collator(examples)
        user_index = torch.tensor([example[USER_INDEX] for example in examples], dtype=torch.long)
        batch = self.collator([{k: v for k, v in example.items() if k != USER_INDEX} for example in examples])
        batch[USER_INDEX] = torch.cat([user_index, user_index])
        return batch
