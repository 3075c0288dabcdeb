"""
[`RFMRewardTrainer`]: TRL's `RewardTrainer`, learning reward features and per-user weights jointly.

What it changes in TRL's trainer, and why:
- `__init__`: builds the user vocabulary from the training data (sorted, so every rank builds the same one), builds or
  wraps the model as a [`RewardFeatureModel`] with one row per rater, and asks PEFT to train and save the feature head
  and the user table (`modules_to_save`).
- `_prepare_dataset`: after TRL's tokenisation, maps each row's rater id to its row of the user table (`user_index`).
- `_set_signature_columns_if_needed`: keeps `user_index` through `remove_unused_columns`.
- the data collator is wrapped so that `user_index` survives collation (TRL's collator drops unknown keys).
- `compute_loss`: TRL's Bradley-Terry loss on the users' rewards (margin and `center_rewards_coefficient` included),
  plus the loss of the population weights, the Gaussian prior on the user weights and the optional feature-covariance
  penalty; logs population accuracy next to TRL's (personal) accuracy, and per-user (macro) accuracies in evaluation.
- `create_optimizer`: the user table gets its own parameter group (its own learning rate, no weight decay: it already
  has its prior).
"""

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer
from trl.data_utils import get_dataset_column_names
from trl.trainer.utils import create_model_from_path

from .configuration_rfm import RewardFeatureConfig
from .feature_geometry import feature_covariance_penalty
from .model_card import build_model_card, personalize_model_card
from .modeling_rfm import POPULATION_INDEX, RewardFeatureModel, normalize_user_id
from .rfm_config import RFMConfig
from .serialization import ADAPTER_SAFE_WEIGHTS_NAME, restore_checkpoint, save_reward_feature_model, uploads_excluding
from .user_weights_io import USER_WEIGHTS_NAME


DEFAULT_USER_COLUMN = "user_id"
USER_INDEX = "user_index"
RFM_MODULES_TO_SAVE = ("feature_head", "user_weights")
USER_WEIGHTS_LEARNING_RATE_RATIO = 10.0  # default user-table lr relative to `learning_rate` (see RFMConfig)


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
    return DEFAULT_USER_COLUMN if DEFAULT_USER_COLUMN in columns else None


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


def _regroup(optimizer, parameters, **overrides) -> None:
    """Move `parameters` into groups of their own, one per group they were in, with that group's options except
    `overrides` (so transformers' split of weights with and without weight decay is kept unless overridden)."""
    selected_ids = {id(p) for p in parameters}
    for group in list(optimizer.param_groups):
        selected = [p for p in group["params"] if id(p) in selected_ids]
        if selected:
            group["params"] = [p for p in group["params"] if id(p) not in selected_ids]
            options = {key: value for key, value in group.items() if key != "params"}
            optimizer.add_param_group({**options, **overrides, "params": selected})


class RFMRewardTrainer(RewardTrainer):
    """
    Trainer of [`RewardFeatureModel`]s: a drop-in replacement for [`trl.RewardTrainer`] whose datasets also carry a
    rater id per comparison (column `user_id`, or `RFMConfig.user_column`).

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            A causal LM (id, path or instance), whose trunk gets a fresh feature head and user table with
            `args.num_features` features; or a [`RewardFeatureModel`] (id, path, instance, or a `PeftModel` around
            one) to continue training, in which case users new to it are added to its table.
        args ([`RFMConfig`], *optional*): a plain [`~trl.RewardConfig`] is accepted and upgraded with the defaults.
        Every other argument is [`trl.RewardTrainer`]'s.
    """

    _tag_names = ["trl", "reward-trainer", "trl-rfm", "personalization"]
    _name = "RFM Reward"

    def __init__(
        self,
        model: "str | PreTrainedModel",
        args: RFMConfig | RewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = RFMConfig(f"{str(name).rstrip('/').split('/')[-1]}-RFM")
        elif not isinstance(args, RFMConfig):
            args = RFMConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")

        # The vocabulary is built before any sharding, from the full training set, identically on every rank.
        self.user_column = resolve_user_column(train_dataset, args)
        user_ids = collect_user_ids(train_dataset, self.user_column) if self.user_column else []

        if processing_class is None and isinstance(model, str):
            # TRL would look the tokenizer up from the model's config, which for a freshly built RFM names no path.
            processing_class = AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        model = self._load_or_build_model(model, args, user_ids, quantization_config)
        base_model = model.get_base_model() if is_peft_model(model) else model
        self._user_vocabulary = {uid: i for i, uid in enumerate(base_model.user_ids)}

        if peft_config is not None:
            peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | set(RFM_MODULES_TO_SAVE))

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=None,  # already applied when the model was loaded
            peft_config=peft_config,
        )
        self.data_collator = UserIndexCollator(self.data_collator)
        self._num_users = base_model.num_users
        self._per_user_counts = None  # [users + 1, (personal correct, population correct, pairs)] during evaluation
        self._trains_population_separately = (
            base_model.config.population_weights == "learned" and base_model.num_users > 0
        )

    # ------------------------------------------------------------------ model
    @staticmethod
    def _load_or_build_model(model, args: RFMConfig, user_ids: list[str], quantization_config) -> PreTrainedModel:
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            if quantization_config is not None:
                init_kwargs["quantization_config"] = quantization_config
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                init_kwargs["device_map"] = None  # distributed training needs every weight on the local device
            config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            if config.model_type == RewardFeatureConfig.model_type:
                model = create_model_from_path(model, RewardFeatureModel, **init_kwargs)
            else:
                model = create_model_from_path(model, AutoModel, **init_kwargs)
        if is_peft_model(model):
            base_model = model.get_base_model()
            if not isinstance(base_model, RewardFeatureModel):
                raise TypeError(
                    "A `PeftModel` passed to `RFMRewardTrainer` must wrap a `RewardFeatureModel`; pass the causal LM "
                    "itself together with `peft_config` instead."
                )
            unseen = [u for u in user_ids if not base_model.has_user(u)]
            if unseen:
                raise ValueError(
                    f"The training data has {len(unseen)} user(s) missing from the PeftModel's user table (e.g. "
                    f"{unseen[:3]}); a table wrapped by PEFT cannot grow. Add the users to the RewardFeatureModel "
                    "before wrapping it, or pass the unwrapped model with `peft_config`."
                )
            return model
        if not isinstance(model, RewardFeatureModel):
            model = RewardFeatureModel.from_backbone(
                model,
                num_features=args.num_features,
                feature_normalization=args.feature_normalization,
                population_weights=args.population_weights,
            )
        new_users = [u for u in user_ids if not model.has_user(u)]
        if new_users:
            std = args.user_weights_init_std
            std = model.config.num_features**-0.5 if std is None else std
            # Random rows, not copies of the population weights: users that start identical would give the features
            # identical gradients at first, and distinct starting points break that symmetry.
            generator = torch.Generator().manual_seed(args.seed)
            noise = torch.randn(len(new_users), model.config.num_features, generator=generator) * std
            model.add_users(new_users, weights=model.get_population_weights().detach().cpu() + noise)
        return model

    # ------------------------------------------------------------------ data
    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase,
        args: RFMConfig,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        columns = get_dataset_column_names(dataset) or []
        if self.user_column is not None and self.user_column not in columns and USER_INDEX not in columns:
            raise ValueError(
                f"The {dataset_name} dataset has no user column {self.user_column!r} although the training data has "
                f"one; its columns are {columns}."
            )
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.user_column is None or USER_INDEX in columns:
            return dataset

        vocabulary, column, strict = self._user_vocabulary, self.user_column, args.unknown_users == "error"

        def add_user_index(batch: dict[str, list]) -> dict[str, list]:
            indices = []
            for value in batch[column]:
                user_id = normalize_user_id(value)
                index = vocabulary.get(user_id, POPULATION_INDEX)
                if index == POPULATION_INDEX and strict:
                    raise ValueError(
                        f"User {user_id!r} of the {dataset_name} dataset was not in the training data "
                        "(`RFMConfig.unknown_users='error'`)."
                    )
                indices.append(index)
            return {USER_INDEX: indices}

        map_kwargs = {"batched": True}
        if isinstance(dataset, Dataset):
            map_kwargs.update(num_proc=args.dataset_num_proc, desc=f"Indexing users of {dataset_name} dataset")
        try:
            return dataset.map(add_user_index, **map_kwargs)
        except ValueError as error:  # surface the message, not the multiprocessing wrapper around it
            raise ValueError(f"Bad user column {column!r} in the {dataset_name} dataset: {error}") from None

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", USER_INDEX]

    # ------------------------------------------------------------------ loss and metrics
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # TRL's loss on the users' own rewards (`logits`), with margin, centring and TRL's metrics.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)

        population_chosen, population_rejected = torch.chunk(outputs.population_logits.squeeze(-1), chunks=2)
        population_margin = population_chosen - population_rejected
        if self._trains_population_separately and self.args.population_loss_weight > 0:
            target_margin = inputs["margin"] if "margin" in inputs else 0.0
            population_loss = -nn.functional.logsigmoid(population_margin - target_margin).mean()
            loss = loss + self.args.population_loss_weight * population_loss
        if self.args.user_weights_l2 > 0:
            loss = loss + self.args.user_weights_l2 * outputs.user_weights_penalty
        if self.args.feature_covariance_l2 > 0:
            loss = loss + self.args.feature_covariance_l2 * feature_covariance_penalty(outputs.reward_features)

        with torch.no_grad():
            population_accuracy = (population_margin > 0).float().mean()
            population_accuracy = self.accelerator.gather_for_metrics(population_accuracy).mean().item()
            self._metrics[mode]["population_accuracy"].append(population_accuracy)
            if mode == "eval" and USER_INDEX in inputs:
                self._accumulate_per_user_accuracy(inputs[USER_INDEX], outputs.logits, population_margin)
        return (loss, outputs) if return_outputs else loss

    def _accumulate_per_user_accuracy(self, user_index, logits, population_margin):
        # Macro averages over users weigh every rater equally, however many comparisons each one has.
        chosen, rejected = torch.chunk(logits.squeeze(-1), chunks=2)
        user_index = torch.chunk(user_index, chunks=2)[0]
        correct = torch.stack([(chosen > rejected).float(), (population_margin > 0).float()], dim=-1)  # [B, 2]
        user_index, correct = self.accelerator.gather_for_metrics((user_index, correct))
        num_rows = self._num_users + 1  # last row: users unknown to the model
        if self._per_user_counts is None:
            self._per_user_counts = torch.zeros(num_rows, 3, device=correct.device)
        rows = torch.where(user_index < 0, num_rows - 1, user_index)
        self._per_user_counts.index_add_(0, rows, torch.cat([correct, torch.ones_like(correct[:, :1])], dim=-1))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._per_user_counts is not None and not self.model.training:
            counts = self._per_user_counts[:-1]  # known users only
            counts = counts[counts[:, 2] > 0]
            if len(counts):
                logs["eval_user_macro_accuracy"] = (counts[:, 0] / counts[:, 2]).mean().item()
                logs["eval_population_user_macro_accuracy"] = (counts[:, 1] / counts[:, 2]).mean().item()
            self._per_user_counts = None
        super().log(logs, start_time)

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            return optimizer
        user_parameters = [p for n, p in opt_model.named_parameters() if "user_weights." in n and p.requires_grad]
        if user_parameters:
            # The user table in a group of its own: its prior replaces weight decay, and it needs another lr.
            learning_rate = self.args.user_weights_learning_rate
            if learning_rate is None:
                learning_rate = USER_WEIGHTS_LEARNING_RATE_RATIO * self.args.learning_rate
            _regroup(optimizer, user_parameters, lr=learning_rate, weight_decay=0.0)
        if self.args.feature_head_learning_rate is not None:
            head_parameters = [p for n, p in opt_model.named_parameters() if "feature_head." in n and p.requires_grad]
            _regroup(optimizer, head_parameters, lr=self.args.feature_head_learning_rate)
        return optimizer

    # ------------------------------------------------------------------ checkpoints, model card, Hub
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Full and LoRA models are saved in trl-rfm's layout (see `trl_rfm.serialization`): atomically, with the users'
        # ids and rows in `user_weights.safetensors` (so that every checkpoint can be resumed with the same users),
        # and for LoRA without the user table in the adapter file and with the model's config.json.
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        base_model = model.get_base_model() if is_peft_model(model) else model
        if not isinstance(base_model, RewardFeatureModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save and not getattr(self, "is_distributed_loading_by_transformers", False):
            return
        save_reward_feature_model(
            model,
            output_dir,
            state_dict=state_dict,
            is_main_process=self.args.should_save,
            model_card=self._build_model_card() if self.args.should_save else False,
        )
        if self.args.should_save:  # what `Trainer._save` adds beside the model
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if is_peft_model(model) and os.path.isfile(os.path.join(resume_from_checkpoint, ADAPTER_SAFE_WEIGHTS_NAME)):
            # PEFT's `load_adapter` needs the user table in the adapter file, where trl-rfm does not keep it.
            restore_checkpoint(model, resume_from_checkpoint, load_model_weights=True)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        restore_checkpoint(model, resume_from_checkpoint, load_model_weights=False)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # their own checkpoints hold the whole model
            return super()._load_best_model()
        if is_peft_model(self.model) and os.path.isfile(os.path.join(checkpoint, ADAPTER_SAFE_WEIGHTS_NAME)):
            restore_checkpoint(self.model, checkpoint, load_model_weights=True)
            return
        super()._load_best_model()
        restore_checkpoint(self.model, checkpoint, load_model_weights=False)

    def _latest_eval_metrics(self) -> dict[str, float] | None:
        for entry in reversed(self.state.log_history):
            if "eval_accuracy" in entry:
                return entry
        return None

    def _build_model_card(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        base_model = model.get_base_model() if is_peft_model(model) else model
        hub_model_id = self.args.hub_model_id
        return build_model_card(
            base_model,
            model_name=(hub_model_id or self.args.output_dir).rstrip("/").split("/")[-1],
            hub_model_id=hub_model_id,
            tags=list(self._tag_names),
            is_adapter=is_peft_model(model),
            num_training_users=len(self._user_vocabulary),
            includes_user_weights=getattr(self, "_pushing_user_weights", None),
            eval_results=self._latest_eval_metrics(),
        )

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, with the Reward Feature Model's metadata and sections (see `trl_rfm.model_card`)."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        from huggingface_hub import ModelCard

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        card = personalize_model_card(
            ModelCard.load(path),
            model.get_base_model() if is_peft_model(model) else model,
            hub_model_id=self.hub_model_id,
            is_adapter=is_peft_model(model),
            num_training_users=len(self._user_vocabulary),
            includes_user_weights=getattr(self, "_pushing_user_weights", None),
            eval_results=self._latest_eval_metrics(),
        )
        card.save(path)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        push_user_weights: bool = False,
        **kwargs,
    ):
        """
        `Trainer.push_to_hub`, except that the users' weights (`user_weights.safetensors`, personal data) are left out
        of the upload unless `push_user_weights=True`. Without them the repo is a population model that adapts to new
        users; the local `output_dir` keeps them.
        """
        exclusion = contextlib.nullcontext() if push_user_weights else uploads_excluding([f"*{USER_WEIGHTS_NAME}"])
        self._pushing_user_weights = push_user_weights
        try:
            with exclusion:
                return super().push_to_hub(
                    commit_message=commit_message,
                    blocking=blocking,
                    token=token,
                    revision=revision,
                    private=private,
                    **kwargs,
                )
        finally:
            del self._pushing_user_weights

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Checkpoint uploads (`push_to_hub=True`, `hub_strategy`) never include user weights; publishing them is an
        # explicit `push_to_hub(push_user_weights=True)`.
        with uploads_excluding([f"*{USER_WEIGHTS_NAME}"]):
            super()._push_from_checkpoint(checkpoint_folder)
