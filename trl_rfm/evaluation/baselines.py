"""
The baselines of the adaptation evaluation, trained with stock `trl.RewardTrainer` on the same backbone and data:
the non-adaptive Bradley-Terry model (`bt`), whose score-head inputs make the `linear` baseline, and the reward model
with the user id written in the prompt (`id_rm`), adapted by fine-tuning.
"""

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from ..adaptation.features import compute_score_head_input_differences, group_by_user
from ..models.from_reward_model import score_head
from ..models.user_table import normalize_user_id
from ..trainer.quiet_args import quiet_training_args
from .protocol import pairwise_accuracy, summarize_draws


def add_user_id_to_prompt(dataset: Dataset, user_column: str = "user_id") -> Dataset:
    """The `id_rm` input: the user id written at the start of the prompt (a string prompt gets `"user <id> : "`
    before it; a conversational prompt gets a system message `"user <id>"`)."""
    if "prompt" not in dataset.column_names:
        raise ValueError("The id_rm baseline needs an explicit `prompt` column to write the user id into.")

    def add(example):
        user_id, prompt = normalize_user_id(example[user_column]), example["prompt"]
        if isinstance(prompt, str):
            return {"prompt": f"user {user_id} : {prompt}"}
        return {"prompt": [{"role": "system", "content": f"user {user_id}"}, *prompt]}

    return dataset.map(add)


@torch.no_grad()
def reward_margins(model, processing_class: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int = 64):
    """`r(chosen) - r(rejected)` of a one-label sequence-classification reward model on every pair: `[pairs]`."""
    differences = compute_score_head_input_differences(
        model, processing_class, dataset, batch_size, show_progress=False
    )
    return differences @ score_head(model).weight[0].detach().float().cpu()  # the head's bias cancels


def training_args(config_class, output_dir, config, **overrides):
    args = dict(
        output_dir=output_dir,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=64,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        use_cpu=not torch.cuda.is_available(),
        seed=config.seed,
    )
    return quiet_training_args(config_class, **{**args, **overrides})


def train(trainer_class, config_class, model, processing_class, dataset, output_dir, config, **overrides):
    """`trainer_class` (an `RFMRewardTrainer` or `trl.RewardTrainer`) trained on `dataset` with the evaluation's
    options (see [`training_args`]); returns the trained model."""
    args = training_args(config_class, output_dir, config, **overrides)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=processing_class)
    trainer.train()
    return trainer.model


def without_columns(dataset: Dataset, columns: Sequence[str]) -> Dataset:
    return dataset.remove_columns([c for c in columns if c in dataset.column_names])


def evaluate_id_rm(
    backbone, processing_class, datasets, heldout_users, draws, config, *, user_column, extra_columns, work_dir, log
):
    """Trains the id-in-prompt reward model, then for each k and draw fine-tunes a copy on the drawn pairs of all
    held-out users at once (their ids tell them apart) and scores their test pairs."""
    train_dataset, adaptation_dataset, test_dataset = datasets
    shots = config.shot_list
    log("Training the user-id-in-prompt reward model (trl.RewardTrainer)")

    def with_ids(dataset):
        return without_columns(add_user_id_to_prompt(dataset, user_column), [user_column, *extra_columns])

    base_model = train(
        RewardTrainer,
        RewardConfig,
        backbone,
        processing_class,
        with_ids(train_dataset),
        os.path.join(work_dir, "id_rm"),
        config,
    )
    test = with_ids(test_dataset)
    _, test_mask = group_by_user(torch.zeros(len(test_dataset), 1), test_dataset[user_column], heldout_users)[:2]

    def score(model):
        margins = reward_margins(model, processing_class, test)
        grouped, _ = group_by_user(margins[:, None], test_dataset[user_column], heldout_users)[:2]
        return pairwise_accuracy(grouped[..., 0], test_mask)

    # Rows of the adaptation pool in the [users, pool] layout of the draws.
    pool_users = [normalize_user_id(u) for u in adaptation_dataset[user_column]]
    rows_of_user: dict[str, list[int]] = {}
    for row, user_id in enumerate(pool_users):
        rows_of_user.setdefault(user_id, []).append(row)
    pool = with_ids(adaptation_dataset)
    results = {}
    for k in shots:
        if k == 0:
            results[str(k)] = summarize_draws([score(base_model)])
            continue
        if draws is None:
            raise ValueError("id_rm alone cannot draw adaptation sets; evaluate it with rfm, bt or linear.")
        per_draw = []
        for mask in draws[k]:
            selected = [
                rows_of_user[user_id][p]
                for u, user_id in enumerate(heldout_users)
                for p in mask[u].nonzero()[:, 0].tolist()
            ]
            log(f"  id_rm: fine-tuning on k = {k} pairs per held-out user")
            model = copy.deepcopy(base_model)
            steps_per_epoch = max(1, -(-len(selected) // config.per_device_train_batch_size))
            fine_tuned = train(
                RewardTrainer,
                RewardConfig,
                model,
                processing_class,
                pool.select(selected),
                os.path.join(work_dir, "id_rm_adapt"),
                config,
                num_train_epochs=config.id_rm_adaptation_epochs,
                warmup_steps=0,
                lr_scheduler_type="constant",
                max_steps=int(np.ceil(steps_per_epoch * config.id_rm_adaptation_epochs)),
            )
            per_draw.append(score(fine_tuned))
        results[str(k)] = summarize_draws(per_draw)
    return results
