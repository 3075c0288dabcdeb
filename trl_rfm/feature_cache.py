"""
Cached feature differences `phi(x, chosen) - phi(x, rejected)`: one batched backbone pass over a user's comparisons,
after which adaptation never touches the backbone again.
"""

from collections.abc import Hashable

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import pad

from .modeling_rfm import RewardFeatureModel, normalize_user_id


def tokenize_preferences(dataset: Dataset, processing_class: PreTrainedTokenizerBase, max_length: int | None = None):
    """Tokenises preference pairs exactly as TRL's `RewardTrainer` does for training (EOS, chat template, explicit or
    implicit prompt), so cached features match the ones the model was trained on."""
    args = RewardConfig(output_dir="unused", max_length=max_length, bf16=False, report_to="none")
    # `_prepare_dataset` reads only its arguments, never the trainer's state; reusing it keeps tokenisation identical.
    return RewardTrainer._prepare_dataset(None, dataset, processing_class, args, "adaptation")


@torch.no_grad()
def compute_feature_differences(
    model: RewardFeatureModel,
    processing_class: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """
    `phi(x, chosen) - phi(x, rejected)` for every pair of `dataset` (any TRL preference format), on the model's
    device, in batches. Returns a float32 CPU tensor `[pairs, d]` in dataset order.
    """
    tokenized = tokenize_preferences(dataset, processing_class, max_length)
    if len(tokenized) != len(dataset):
        raise ValueError("Some pairs were dropped by `max_length`; raise it so that every pair keeps its features.")
    pad_token_id = processing_class.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    differences = []
    for start in tqdm(range(0, len(tokenized), batch_size), desc="Reward features", disable=not show_progress):
        rows = tokenized[start : start + batch_size]
        sequences = [torch.tensor(ids) for ids in rows["chosen_ids"] + rows["rejected_ids"]]
        input_ids = pad(sequences, padding_value=pad_token_id, padding_side="right").to(device)
        attention_mask = pad([torch.ones_like(s) for s in sequences], padding_value=0, padding_side="right").to(device)
        phi = model.reward_features(input_ids=input_ids, attention_mask=attention_mask)  # [2b, d]
        chosen, rejected = phi.chunk(2)
        differences.append((chosen - rejected).float().cpu())
    model.train(was_training)
    return torch.cat(differences) if differences else torch.zeros(0, model.config.num_features)


def group_by_user(
    feature_differences: torch.Tensor, user_ids: list[Hashable]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pads per-pair features `[N, d]` into per-user blocks: returns `([users, max_pairs, d], mask [users, max_pairs],
    user ids in first-seen order)`."""
    if len(user_ids) != feature_differences.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids for {feature_differences.shape[0]} feature rows.")
    order: dict[str, list[int]] = {}
    for row, user_id in enumerate(user_ids):
        order.setdefault(normalize_user_id(user_id), []).append(row)
    max_pairs = max((len(rows) for rows in order.values()), default=0)
    d = feature_differences.shape[-1]
    grouped = torch.zeros(len(order), max_pairs, d, dtype=feature_differences.dtype)
    mask = torch.zeros(len(order), max_pairs)
    for i, rows in enumerate(order.values()):
        grouped[i, : len(rows)] = feature_differences[rows]
        mask[i, : len(rows)] = 1
    return grouped, mask, list(order)
