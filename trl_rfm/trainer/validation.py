"""
Checks of [`RFMRewardTrainer`]'s inputs that turn silent mistakes into errors or warnings naming the problem (issue
15): datasets without preference columns, a rater column under another name, sequences longer than the trunk's
positions, users whose every training row was dropped by `max_length`, evaluation rows of unknown users.
"""

import dataclasses
import warnings
from collections import Counter

import torch
from datasets import Dataset
from trl import RewardConfig
from trl.data_utils import get_dataset_column_names

from ..models.limits import position_limit  # noqa: F401  (re-exported for the trainer)
from ..models.user_table import POPULATION_INDEX, normalize_user_id


_DEFAULT_MAX_LENGTH = next(f.default for f in dataclasses.fields(RewardConfig) if f.name == "max_length")
# Column names that usually hold the id of the person who made the comparison.
RATER_LIKE_COLUMNS = ("rater_id", "rater", "worker_id", "worker", "annotator_id", "annotator", "user", "labeler_id")


def warn_rater_like_column(columns: list[str]) -> None:
    """Without `user_column` and without `user_id`, a column that looks like a rater id is probably one."""
    lowered = {column.lower(): column for column in columns}
    found = [lowered[name] for name in RATER_LIKE_COLUMNS if name in lowered]
    if found:
        warnings.warn(
            f"The training dataset has a column {found[0]!r} that looks like a rater id, but `user_column` is unset "
            "and there is no `user_id` column, so a plain (single-rater) reward model is trained. To learn a reward "
            f"per rater, set `RFMConfig(user_column={found[0]!r})` (`--user_column {found[0]}` on the command line).",
            stacklevel=3,
        )


def check_preference_columns(dataset, dataset_name: str) -> None:
    """A dataset TRL's `RewardTrainer` can read: `chosen` and `rejected` (text or conversations, with an optional
    `prompt`), or their token ids `chosen_ids` and `rejected_ids`; and at least one row."""
    columns = get_dataset_column_names(dataset)
    if columns is None:  # an IterableDataset of unknown features
        return
    has_text = "chosen" in columns and "rejected" in columns
    has_ids = "chosen_ids" in columns and "rejected_ids" in columns
    legacy = "chosen_input_ids" in columns and "rejected_input_ids" in columns
    if not (has_text or has_ids or legacy):
        raise ValueError(
            f"The {dataset_name} dataset is not a preference dataset: it needs the columns 'chosen' and 'rejected' "
            "(text or conversations, with an optional 'prompt'), or their token ids 'chosen_ids' and "
            f"'rejected_ids'; its columns are {list(columns)}."
        )
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"The {dataset_name} dataset is empty: no comparisons to train or evaluate on.")


def clamp_max_length(args, limit: int | None) -> None:
    """TRL drops training pairs longer than `args.max_length`; a longer one than the trunk's positions would crash
    deep inside torch (`index out of range`), so `max_length` is lowered to the limit, with a warning."""
    if limit is None or (args.max_length is not None and args.max_length <= limit):
        return
    if args.max_length == _DEFAULT_MAX_LENGTH:  # TRL's default, not the user's choice: lowered quietly
        args.max_length = limit
        return
    warnings.warn(
        f"`max_length` is {args.max_length}, but the trunk has {limit} positions (`max_position_embeddings`): pairs "
        f"longer than {limit} tokens are dropped instead, as TRL drops those longer than `max_length`.",
        stacklevel=3,
    )
    args.max_length = limit


def count_by_user(dataset, column: str) -> Counter | None:
    if not isinstance(dataset, Dataset) or column not in dataset.column_names:
        return None
    return Counter(normalize_user_id(value) for value in dataset[column])


def users_without_rows(before: Counter | None, after: Counter | None) -> dict[str, int]:
    """Users whose every row was dropped (by TRL's `max_length` filter), with the number of rows they had."""
    if before is None or after is None:
        return {}
    return {user: count for user, count in sorted(before.items()) if after.get(user, 0) == 0}


def warn_unknown_users(dataset, column: str, vocabulary: dict, dataset_name: str) -> None:
    counts = count_by_user(dataset, column)
    if not counts:
        return
    unknown = sorted(user for user in counts if user not in vocabulary)
    if unknown:
        rows = sum(counts[user] for user in unknown)
        warnings.warn(
            f"The {dataset_name} dataset has {len(unknown)} user(s) not in the training data ({rows} comparison(s); "
            f"e.g. {unknown[:5]}): they are scored with the population weights. Set `unknown_users='error'` to refuse "
            "them.",
            stacklevel=3,
        )


def drop_users_without_training_rows(trainer, dropped: dict[str, int]) -> None:
    """Users whose every training row was dropped would keep an untrained random row and be scored with it: they are
    removed from the model (then scored with the population weights like any unknown user), with a warning counting
    their dropped rows. A table wrapped by PEFT cannot shrink: its rows are set to the population weights instead."""
    if not dropped:
        return
    shown = ", ".join(f"{user!r} ({count} row(s))" for user, count in list(dropped.items())[:10])
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    warnings.warn(
        f"Every training comparison of {len(dropped)} user(s) is longer than `max_length` ({trainer.args.max_length} "
        f"tokens) and was dropped: {shown}{' ...' if len(dropped) > 10 else ''}. They are not trained and fall back "
        "to the population weights; raise `max_length` to keep them.",
        stacklevel=3,
    )
    if base is model:
        old_index = dict(trainer._user_vocabulary)
        base.remove_users(list(dropped))
        trainer._user_vocabulary = {uid: i for i, uid in enumerate(base.user_ids)}
        trainer._num_users = base.num_users
        remap = {index: trainer._user_vocabulary.get(uid, POPULATION_INDEX) for uid, index in old_index.items()}
        remap[POPULATION_INDEX] = POPULATION_INDEX

        def reindex(batch):
            return {"user_index": [remap[i] for i in batch["user_index"]]}

        for attribute in ("train_dataset", "eval_dataset"):
            datasets = getattr(trainer, attribute)
            if isinstance(datasets, dict):
                setattr(
                    trainer,
                    attribute,
                    {k: d.map(reindex, batched=True) if _has_index(d) else d for k, d in datasets.items()},
                )
            elif datasets is not None and _has_index(datasets):
                setattr(trainer, attribute, datasets.map(reindex, batched=True))
        return
    with torch.no_grad():
        rows = [trainer._user_vocabulary[user] for user in dropped]
        population = base.get_population_weights().detach()
        for module in model.modules():
            if type(module).__name__ == "UserWeights":
                # Hierarchical tables store offsets from the population: the population itself is offset 0.
                hierarchical = getattr(module, "population_mode", None) == "hierarchical"
                module.weight[rows] = 0.0 if hierarchical else population.to(module.weight)


def _has_index(dataset) -> bool:
    return "user_index" in (get_dataset_column_names(dataset) or [])
