"""
[`RFMRewardTrainer`]: TRL's `RewardTrainer`, learning reward features and per-user weights jointly.

What it changes in TRL's trainer, and why (public methods first, then every private override):
- `__init__`: seeds (`args.seed`, as TRL does) before building the model, so the feature head's initialisation follows
  the seed; builds the user vocabulary from the training data (sorted, so every rank builds the same one); builds or
  wraps the model as a [`RewardFeatureModel`] with one row per rater (an existing sequence-classification reward
  model, or a `PeftModel` around one, is personalised: `models/from_reward_model.py`); asks PEFT to train and save the
  feature head and the user table (`modules_to_save`), with peft's default targets of the trunk's architecture
  (`trainer/peft_defaults.py`: resolved by peft on the trunk's own sequence-classification model, built on the meta
  device, since peft does not know the RFM's `model_type`); wraps the data collator so that `user_index` survives
  collation (TRL's collator drops unknown keys).
- `compute_loss`: TRL's Bradley-Terry loss on the users' rewards (margin and `center_rewards_coefficient` included),
  plus the loss of the population weights, the Gaussian prior on the user weights and the optional feature-covariance
  penalty; logs population accuracy next to TRL's (personal) accuracy.
- `log`: adds the per-user (macro) accuracies accumulated during evaluation.
- `create_optimizer`: the user table gets its own parameter group (its own learning rate, no weight decay: it already
  has its prior), and the feature head its own learning rate when set.
- `save_model` ([`RFMCheckpointingMixin`]): returns on every rank once the main process has written the model.
- `train`: `Trainer.train`, then the new users' prior fitted on the final features and stored in the config, and the
  training users' rows refitted under it (`trainer/user_prior_fit.py`).
- `__init__` also registers the end of the distributed run at exit (`trainer/process_group.py`): the process groups
  destroyed and freed, and gloo's worker threads stopped, before interpreter shutdown.
- `create_model_card`, `push_to_hub` ([`RFMHubMixin`], `trainer/hub.py`): the RFM's card; the users' weights
  (personal data) left out of uploads unless `push_user_weights=True`.

Private overrides, each because no public hook exists:
- `_prepare_dataset`: after TRL's tokenisation (called through `super()`), maps each row's rater id to its row of the
  user table (`user_index`); TRL has no per-row hook for extra columns.
- `_set_signature_columns_if_needed`: TRL's list plus `user_index`, so that `remove_unused_columns` keeps it.
- `_save` ([`RFMCheckpointingMixin`], `trainer/checkpointing.py`): transformers' `_save` through `super()`, with the
  model's `save_pretrained` writing trl-rfm's layout for that call (user table in `user_weights.safetensors`; for
  LoRA, no table in the adapter file); PEFT's own `save_pretrained` would put the table in the adapter and lose the
  users' ids, and the trainer's card replaces the default one.
- `_load_from_checkpoint`, `_load_best_model` (same mixin): transformers' loading, then the users restored from the
  checkpoint's user file (for LoRA the whole adapter is loaded by trl-rfm, since PEFT's `load_adapter` expects the
  user table in the adapter file).
- `_push_from_checkpoint` ([`RFMHubMixin`]): the checkpoint uploads of `hub_strategy` leave the user file out.
"""

import dataclasses

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.trainer_utils import enable_full_determinism, set_seed
from trl import RewardConfig, RewardTrainer
from trl.data_utils import get_dataset_column_names
from trl.trainer.utils import create_model_from_path

from ..adaptation.features import tokenize_preferences
from ..adaptation.prior import prior_from_model
from ..io.feature_head import RFM_MODULES_TO_SAVE
from ..models.configuration_rfm import RewardFeatureConfig, architecture_options
from ..models.feature_geometry import feature_covariance_penalty
from ..models.from_reward_model import (
    check_num_labels,
    from_reward_model,
    is_foreign_peft_model,
    is_sequence_classifier,
    merge_peft_model,
)
from ..models.modeling_rfm import RewardFeatureModel
from ..models.user_table import POPULATION_INDEX, normalize_user_id
from .checkpointing import RFMCheckpointingMixin
from .hub import RFMHubMixin
from .learning_rates import split_rfm_parameter_groups
from .peft_defaults import fill_default_targets
from .process_group import release_process_groups_at_exit
from .rfm_config import RFMConfig
from .user_index import USER_INDEX, UserIndexCollator, collect_user_ids, resolve_user_column
from .user_prior_fit import fit_prior_after_training
from .validation import (
    check_preference_columns,
    clamp_max_length,
    count_by_user,
    drop_users_without_training_rows,
    position_limit,
    users_without_rows,
    warn_unknown_users,
)


class RFMRewardTrainer(RFMCheckpointingMixin, RFMHubMixin, RewardTrainer):
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
            revision = (args.model_init_kwargs or {}).get("revision")
            processing_class = AutoTokenizer.from_pretrained(
                model, revision=revision, trust_remote_code=args.trust_remote_code
            )
        if is_foreign_peft_model(model):
            # An existing reward model with an adapter: merged, then the RFM built on it gets fresh adapters of the
            # same configuration (the same function at step 0).
            if peft_config is not None:
                raise ValueError(
                    "You passed a `PeftModel` instance together with a `peft_config` to the trainer. Please first merge "
                    "and unload the existing adapter, save the resulting base model, and then pass that base model along "
                    "with the new `peft_config` to the trainer."
                )
            check_num_labels(model.get_base_model())
            model, peft_config = merge_peft_model(model)
        # Seeded before the model is built, as TRL and transformers do, so that `args.seed` sets the feature head.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        model = self._load_or_build_model(model, args, user_ids, quantization_config)
        base_model = model.get_base_model() if is_peft_model(model) else model
        self._user_vocabulary = {uid: i for i, uid in enumerate(base_model.user_ids)}
        self._position_limit = position_limit(base_model)  # `max_length` is clamped to it (trainer/validation.py)
        self._users_dropped_by_length = {}  # users whose every training row TRL's `max_length` filter dropped

        if peft_config is not None:
            peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | set(RFM_MODULES_TO_SAVE))
            fill_default_targets(peft_config, base_model)

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
        if not self.accelerator.state.fork_launched:  # a notebook's forked ranks exit without atexit handlers
            release_process_groups_at_exit(self)
        drop_users_without_training_rows(self, self._users_dropped_by_length)
        self._num_users = base_model.num_users
        self._per_user_counts = None  # [users + 1, (personal correct, population correct, pairs)] during evaluation
        self._trains_population_separately = (
            base_model.config.population_weights == "learned" and base_model.num_users > 0
        )

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, then the new users' prior fitted on the final features and stored in the model's config
        (`args.user_prior`; `trainer/user_prior_fit.py`), so that users adapted later do not move it, and the training
        users' rows refitted under it (`args.refit_user_weights`)."""
        output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        self._store_user_prior()
        return output

    @torch.no_grad()
    def _store_user_prior(self) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        base_model = model.get_base_model() if is_peft_model(model) else model
        if not isinstance(base_model, RewardFeatureModel) or base_model.num_users < 2:
            return
        base_model.config.user_prior_covariance = None  # a prior stored by an earlier training run is stale now
        if self.args.user_prior == "empirical_bayes":
            fit_prior_after_training(model, self.train_dataset, self.processing_class, self.args)
        else:
            # Every rank reads the table through its forward: under ZeRO-3 that gathers it on all ranks together.
            _, base_model.config.user_prior_precision = prior_from_model(model, use_stored=False)

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
            elif is_sequence_classifier(config):  # an existing reward model, personalised below
                model = create_model_from_path(
                    model, AutoModelForSequenceClassification, **{**init_kwargs, "num_labels": 1}
                )
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
        if is_sequence_classifier(model):
            model = from_reward_model(
                model, num_features=args.num_features, population_weights=args.population_weights
            )
        elif not isinstance(model, RewardFeatureModel):
            model = RewardFeatureModel.from_backbone(model, **architecture_options(args))
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
        check_preference_columns(dataset, dataset_name)
        clamp_max_length(args, self._position_limit)
        columns = get_dataset_column_names(dataset) or []
        if self.user_column is not None and self.user_column not in columns and USER_INDEX not in columns:
            raise ValueError(
                f"The {dataset_name} dataset has no user column {self.user_column!r} although the training data has "
                f"one; its columns are {columns}."
            )
        if getattr(processing_class, "eos_token", "") is None and not {"chosen_ids", "rejected_ids"} <= set(columns):
            # TRL appends `eos_token` to plain-text responses and fails when it is None (BERT-style tokenizers, which
            # end every sequence with their own `[SEP]`): tokenise here, as `tokenize_sequence` does, and TRL skips it.
            dataset = tokenize_preferences(dataset, processing_class)
        counts = count_by_user(dataset, self.user_column) if dataset_name == "train" and self.user_column else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if counts is not None and USER_INDEX not in columns:
            self._users_dropped_by_length = users_without_rows(counts, count_by_user(dataset, self.user_column))
        if self.user_column is None or USER_INDEX in columns:
            return dataset
        if dataset_name != "train" and args.unknown_users != "error":
            warn_unknown_users(dataset, self.user_column, self._user_vocabulary, dataset_name)

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
        super()._set_signature_columns_if_needed()
        if USER_INDEX not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, USER_INDEX]

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
        split_rfm_parameter_groups(optimizer, opt_model, self.args)
        return optimizer
