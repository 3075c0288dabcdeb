"""
Matched from-scratch training for benchmarks and tests: a tiny word-level transformer trained twice on the same
initialisation and pairs, as a Reward Feature Model ([`RFMRewardTrainer`]) and as a non-adaptive reward model (stock
`trl.RewardTrainer`), with the options of [`ModelArguments`] (CPU-sized defaults).
"""

import copy
import tempfile
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from ..trainer.rfm_config import RFMConfig
from ..trainer.rfm_trainer import RFMRewardTrainer
from ..trainer.sampling import length_grouped_trainer
from .tiny_models import build_tiny_causal_lm


@dataclass
class ModelArguments:
    """Backbone, training and RFM options shared by the Polis benchmark and the synthetic sweep."""

    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the from-scratch transformer."})
    num_layers: int = field(default=2, metadata={"help": "Transformer layers."})
    num_features: int = field(default=32, metadata={"help": "RFM feature dimension d."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (both trainers)."})
    batch_size: int = field(default=64, metadata={"help": "Pairs per training step."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the backbone (both trainers)."})
    user_weights_learning_rate: float | None = field(
        default=None, metadata={"help": "RFM user-table learning rate; unset: the RFMConfig default."}
    )
    feature_head_learning_rate: float | None = field(default=None, metadata={"help": "Unset: RFMConfig default."})
    user_weights_l2: float | None = field(default=None, metadata={"help": "RFM prior; unset: RFMConfig default."})
    feature_normalization: str | None = field(
        default=None, metadata={"help": "`layernorm`/`rms`/`none`; unset: default."}
    )
    feature_covariance_l2: float | None = field(default=None, metadata={"help": "Unset: RFMConfig default."})
    population_loss_weight: float | None = field(default=None, metadata={"help": "Unset: RFMConfig default."})
    user_weights_init_std: float | None = field(default=None, metadata={"help": "Unset: RFMConfig default."})
    population_weights: str | None = field(default=None, metadata={"help": "Unset: RFMConfig default."})
    num_threads: int = field(
        default=1, metadata={"help": "Torch CPU threads (1 is fastest for this tiny model on a busy machine)."}
    )
    length_grouping: int = field(
        default=0,
        metadata={
            "help": "0: batches drawn uniformly at random (TRL's default). m > 0: shuffle, cut into chunks of m "
            "batches, sort each chunk by pair length, cut it into batches (transformers' length-grouped "
            "sampling, with a chunk of m instead of 50 batches), so that batches are padded less."
        },
    )


def _overrides(args: ModelArguments) -> dict:
    names = (
        "user_weights_learning_rate",
        "feature_head_learning_rate",
        "user_weights_l2",
        "feature_normalization",
        "feature_covariance_l2",
        "population_loss_weight",
        "user_weights_init_std",
        "population_weights",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _trainer_kwargs(args: ModelArguments, output_dir: str, seed: int, num_pairs: int) -> dict:
    steps = int(np.ceil(num_pairs / args.batch_size) * args.num_train_epochs)
    return dict(
        output_dir=output_dir,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataset_num_proc=None,
        # TRL turns gradient (activation) checkpointing on by default; at this size it only recomputes the forward.
        activation_checkpointing=False,
    )


def build_backbone(tokenizer, args: ModelArguments, seed: int):
    return build_tiny_causal_lm(
        tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 16),
        intermediate_size=2 * args.hidden_size,
        seed=seed,
    )


def train_rfm(train: Dataset, tokenizer, args: ModelArguments, seed: int):
    """An RFM trained from scratch on `train` (rows with `user_id`) through `RFMRewardTrainer`."""
    backbone = build_backbone(tokenizer, args, seed)
    with tempfile.TemporaryDirectory() as output_dir:
        config = RFMConfig(
            num_features=args.num_features, **_overrides(args), **_trainer_kwargs(args, output_dir, seed, len(train))
        )
        trainer_class = length_grouped_trainer(RFMRewardTrainer, args.length_grouping)
        trainer = trainer_class(model=backbone, args=config, train_dataset=train, processing_class=tokenizer)
        trainer.train()
    model = trainer.model.eval()
    return model, config


def pair_columns(dataset: Dataset) -> list[str]:
    """The columns TRL's `RewardTrainer` reads: token ids when the pairs are pre-tokenised, else the texts."""
    if {"chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        return ["chosen_ids", "rejected_ids"]
    return ["prompt", "chosen", "rejected"]


def train_reward_model(train: Dataset, tokenizer, args: ModelArguments, seed: int):
    """The non-adaptive baseline: stock `trl.RewardTrainer` on the same backbone initialisation and pairs."""
    backbone = build_backbone(tokenizer, args, seed)
    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config)
    model.model.load_state_dict(backbone.model.state_dict())  # same trunk initialisation as the RFM's
    model.config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(**_trainer_kwargs(args, output_dir, seed, len(train)))
        trainer = length_grouped_trainer(RewardTrainer, args.length_grouping)(
            model=model,
            args=config,
            train_dataset=train.select_columns(pair_columns(train)),
            processing_class=tokenizer,
        )
        trainer.train()
    return trainer.model.eval()
