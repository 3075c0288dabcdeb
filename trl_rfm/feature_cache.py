"""
Cached feature differences `phi(x, chosen) - phi(x, rejected)`: one batched backbone pass over a user's comparisons,
after which adaptation never touches the backbone again.
"""

from collections.abc import Hashable

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import pad

from .modeling_rfm import RewardFeatureModel, last_token_index, normalize_user_id


def tokenize_preferences(dataset: Dataset, processing_class: PreTrainedTokenizerBase, max_length: int | None = None):
    """Tokenises preference pairs exactly as TRL's `RewardTrainer` does for training (EOS, chat template, explicit or
    implicit prompt), so cached features match the ones the model was trained on."""
    args = RewardConfig(output_dir="unused", max_length=max_length, bf16=False, report_to="none")
    # `_prepare_dataset` reads only its arguments, never the trainer's state; reusing it keeps tokenisation identical.
    return RewardTrainer._prepare_dataset(None, dataset, processing_class, args, "adaptation")


@torch.no_grad()
def _pair_differences(
    featurize, model, processing_class, dataset, batch_size, max_length, show_progress, description
) -> torch.Tensor:
    """`featurize(chosen) - featurize(rejected)` of every pair, batched; `featurize(input_ids, attention_mask)` maps
    a right-padded batch of sequences to one row of outputs each."""
    tokenized = tokenize_preferences(dataset, processing_class, max_length)
    if len(tokenized) != len(dataset):
        raise ValueError("Some pairs were dropped by `max_length`; raise it so that every pair keeps its features.")
    pad_token_id = processing_class.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    differences = []
    try:
        for start in tqdm(range(0, len(tokenized), batch_size), desc=description, disable=not show_progress):
            rows = tokenized[start : start + batch_size]
            sequences = [torch.tensor(ids) for ids in rows["chosen_ids"] + rows["rejected_ids"]]
            input_ids = pad(sequences, padding_value=pad_token_id, padding_side="right").to(device)
            attention_mask = pad([torch.ones_like(s) for s in sequences], padding_value=0, padding_side="right")
            outputs = featurize(input_ids, attention_mask.to(device))  # [2b, ...]
            chosen, rejected = outputs.chunk(2)
            differences.append((chosen - rejected).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(differences) if differences else None


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

    def featurize(input_ids, attention_mask):
        return model.reward_features(input_ids=input_ids, attention_mask=attention_mask)

    differences = _pair_differences(
        featurize, model, processing_class, dataset, batch_size, max_length, show_progress, "Reward features"
    )
    return differences if differences is not None else torch.zeros(0, model.config.num_features)


def score_head(model: PreTrainedModel) -> nn.Linear:
    """The linear head of a one-label sequence-classification reward model (`score` in most decoder models,
    `classifier` in encoders)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear) and head.out_features == 1:
            return head
    raise ValueError(
        f"{type(model).__name__} has no one-output linear head named `score` or `classifier`: it is not a "
        "reward model as built by `AutoModelForSequenceClassification(num_labels=1)`."
    )


@torch.no_grad()
def compute_score_head_input_differences(
    model: PreTrainedModel,
    processing_class: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """
    For an ordinary reward model (`AutoModelForSequenceClassification`, one label, e.g. trained by
    `trl.RewardTrainer`): the difference, chosen minus rejected, of the hidden state its score head reads (the last
    real token's). These fixed features make the "linear" adaptive baseline: a per-user logistic regression on them,
    with the prior centred on the score head's weights, is the reward model itself at 0 pairs. `[pairs, hidden]`.
    """
    head = score_head(model)
    captured = {}
    hook = head.register_forward_hook(lambda module, inputs, output: captured.update(hidden=inputs[0]))

    def featurize(input_ids, attention_mask):
        model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = captured.pop("hidden")  # [B, T, H]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]

    try:
        differences = _pair_differences(
            featurize, model, processing_class, dataset, batch_size, max_length, show_progress, "Score-head inputs"
        )
    finally:
        hook.remove()
    return differences if differences is not None else torch.zeros(0, head.in_features)


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
