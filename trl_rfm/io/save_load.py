"""Saving a Reward Feature Model (full or LoRA) in the layout of [`trl_rfm.io`], and loading one back."""

import copy
import os

import torch
from accelerate.utils import is_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.utils import logging

from ..models.configuration_rfm import architecture_options
from . import user_weights_file
from .directory import staged_directory
from .feature_head import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    POPULATION_KEY,
    RFM_MODULES_TO_SAVE,
    USER_TABLE_KEY,
    FeatureHead,
    locate_feature_head,
    rename_legacy_trunk_keys,
    resolve_file,
)
from .model_card import build_model_card
from .user_weights_file import USER_WEIGHTS_NAME, USERS_WITHHELD_ATTRIBUTE, load_user_weights


logger = logging.get_logger(__name__)

# config.json attribute: the number of users in the user file saved beside it (0 or absent: a population model).
SAVED_USERS_ATTRIBUTE = "num_saved_users"


def check_is_reward_feature_model(path_or_repo, hub_kwargs: dict | None = None) -> None:
    """Refuses, naming what it is, a directory or repo whose config.json is not a Reward Feature Model's (a plain
    causal LM or reward model), before transformers would fail on the foreign config."""
    from transformers import PreTrainedConfig

    from ..models.configuration_rfm import RewardFeatureConfig

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(str(path_or_repo), **(hub_kwargs or {}))
    except (OSError, ValueError):
        return  # no readable config.json: transformers' own error names the problem
    model_type = config_dict.get("model_type")
    if model_type in (None, RewardFeatureConfig.model_type):
        return
    architectures = config_dict.get("architectures") or []
    kind = (
        "a causal LM"
        if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
        else "a reward model"
        if any(name.endswith("ForSequenceClassification") for name in architectures)
        else f"a {model_type!r} model"
    )
    raise ValueError(
        f"{path_or_repo} is {kind} ({', '.join(architectures) or model_type}), not an RFM (Reward Feature Model): train "
        "one with RFMRewardTrainer (`RFMRewardTrainer(model=...)` takes this causal LM), or wrap it with "
        "`RewardFeatureModel.from_backbone`."
    )


def saved_users(config) -> int:
    """The number of users saved beside a loaded config (0 for population models and older saves)."""
    try:
        return max(int(getattr(config, SAVED_USERS_ATTRIBUTE, 0) or 0), 0)
    except (TypeError, ValueError):
        return 0


def users_withheld(config) -> bool:
    """Whether a loaded config is that of an upload that left its users' weights out (see `hub`)."""
    return getattr(config, USERS_WITHHELD_ATTRIBUTE, False) is True


def _split_user_table(model, state_dict: dict | None, base_model) -> tuple[dict, torch.Tensor | None]:
    """
    The state dict to write without the user table, and the table `[U, d]` itself (`None` if a given state dict lacks
    it). The population weights are written as they are used (in `"mean"` mode, the mean of the rows), so that the
    directory scores the population correctly without the user file.
    """
    if state_dict is None:
        state_dict, table = dict(model.state_dict()), base_model.user_weights()[:-1]
    else:
        # Never read the table through the module here: under ZeRO-3 that would start a gather on this rank alone.
        state_dict = dict(state_dict)
        key = (
            f"base_model.model.user_weights.modules_to_save.{model.active_adapter}.weight"
            if is_peft_model(model)
            else "user_weights.weight"
        )
        table = state_dict.get(key)
        population = state_dict.get(key[: -len("weight")] + "population")
        if base_model.config.population_weights == "hierarchical" and table is not None and population is not None:
            table = table + population  # the table stores offsets from the population weights
    table = None if table is None else table.detach()
    if not is_peft_model(model):  # PEFT needs every key of its modules: the adapter file is filtered after writing
        for key in [key for key in state_dict if USER_TABLE_KEY.search(key)]:
            del state_dict[key]
    if base_model.config.population_weights == "mean" and table is not None and table.shape[0] > 0:
        population = table.mean(dim=0)
        for key in [key for key in state_dict if POPULATION_KEY.search(key)]:
            state_dict[key] = population.to(state_dict[key].dtype)
    return state_dict, table


def save_reward_feature_model(
    model,
    save_directory: str | os.PathLike,
    *,
    save_user_weights: bool = True,
    state_dict: dict | None = None,
    is_main_process: bool = True,
    model_card=None,
    processing_class=None,
    **save_kwargs,
) -> None:
    """
    Saves a [`RewardFeatureModel`] (full) or a `PeftModel` around one (LoRA) in the layout of this module, atomically.

    Args:
        model: the model to save.
        save_directory: destination folder (created if missing).
        save_user_weights: write `user_weights.safetensors` (the users' rows and ids). `False` saves the population
            model only.
        state_dict: the state dict to write (the Trainer passes a gathered one under DeepSpeed/FSDP).
        is_main_process: only the main process writes; the others only take part in transformers' collective gathers.
        model_card: a `huggingface_hub.ModelCard` to write as README.md; `None` generates one; `False` writes none.
        processing_class: a tokenizer to save in the same atomic commit (e.g. `trl-rfm adapt --output_dir`).
        save_kwargs: passed to `save_pretrained` of transformers (full) or PEFT (LoRA), e.g. `max_shard_size`.
    """
    peft = is_peft_model(model)
    base = model.get_base_model() if peft else model
    save_kwargs.pop("safe_serialization", None)  # always safetensors
    if not is_main_process:
        if not peft:
            if state_dict is not None:
                state_dict = {key: value for key, value in state_dict.items() if not USER_TABLE_KEY.search(key)}
            PreTrainedModel.save_pretrained(
                model, save_directory, is_main_process=False, state_dict=state_dict, **save_kwargs
            )
        return
    state_dict, table = _split_user_table(model, state_dict, base)
    if table is None and save_user_weights and base.num_users:
        logger.warning(
            "The state dict to save holds no user table (DeepSpeed ZeRO-3 without "
            "`stage3_gather_16bit_weights_on_model_save`?): %s is not written; the users are in DeepSpeed's "
            "checkpoint files.",
            USER_WEIGHTS_NAME,
        )
        save_user_weights = False
    user_ids = base.user_ids
    if table is not None and table.shape[0] != len(user_ids):
        raise ValueError(f"The user table has {table.shape[0]} rows for {len(user_ids)} user ids.")
    num_saved_users = len(user_ids) if save_user_weights else 0
    with staged_directory(save_directory) as staging:
        if peft:
            _write_adapter(model, base, staging, state_dict, num_saved_users)
        else:
            _write_full_model(model, staging, state_dict, save_kwargs, num_saved_users)
        if num_saved_users:
            head = locate_feature_head(staging, variant=save_kwargs.get("variant"))
            path = os.path.join(staging, USER_WEIGHTS_NAME)
            user_weights_file.save_user_weights(path, user_ids, table, head.fingerprint)
        if model_card is not False:
            if model_card is None:
                model_card = build_model_card(base, is_adapter=peft, num_training_users=len(user_ids))
            model_card.save(os.path.join(staging, "README.md"))
        if processing_class is not None:
            processing_class.save_pretrained(staging)


def _write_full_model(model, staging: str, state_dict: dict, save_kwargs: dict, num_saved_users: int) -> None:
    num_users, saved = model.config.num_users, getattr(model.config, SAVED_USERS_ATTRIBUTE, None)
    model.config.num_users = 0  # config.json describes what model.safetensors holds: no user rows
    # ... and how many users the user file beside it holds, so that a missing user file is noticed on load.
    setattr(model.config, SAVED_USERS_ATTRIBUTE, num_saved_users)
    try:
        PreTrainedModel.save_pretrained(model, staging, state_dict=state_dict, **save_kwargs)
    finally:
        model.config.num_users = num_users
        if saved is None:
            delattr(model.config, SAVED_USERS_ATTRIBUTE)
        else:
            setattr(model.config, SAVED_USERS_ATTRIBUTE, saved)


def _write_adapter(peft_model, base, staging: str, state_dict: dict, num_saved_users: int) -> None:
    adapter = peft_model.active_adapter
    peft_config = peft_model.peft_config[adapter]
    missing = sorted(set(RFM_MODULES_TO_SAVE) - set(peft_config.modules_to_save or []))
    if missing:
        raise ValueError(
            f"The LoRA adapter does not train {missing} (`modules_to_save`), so saving it would lose the feature head "
            "or the population weights. Wrap the model with `modules_to_save=['feature_head', 'user_weights']`, as "
            "`RFMRewardTrainer` does."
        )
    if not peft_config.base_model_name_or_path:
        # The trunk this adapter applies to, so that the directory loads on its own.
        peft_config.base_model_name_or_path = getattr(base.config.text_config, "_name_or_path", None) or None
    # Through the class: `RFMRewardTrainer._save` routes the instance's `save_pretrained` here.
    type(peft_model).save_pretrained(peft_model, staging, state_dict=state_dict, safe_serialization=True)
    # PEFT saves the whole user table with the other `modules_to_save`; take it out (adapters are small).
    adapter_file = os.path.join(staging, ADAPTER_SAFE_WEIGHTS_NAME)
    with safe_open(adapter_file, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if not USER_TABLE_KEY.search(key)}
    save_file(tensors, adapter_file, metadata=metadata)
    config = copy.deepcopy(base.config)
    config.num_users = 0
    setattr(config, SAVED_USERS_ATTRIBUTE, num_saved_users)
    config.architectures = [type(base).__name__]
    config.save_pretrained(staging)


def read_user_weights_for(
    path_or_repo,
    head: FeatureHead,
    num_features: int,
    user_weights: "bool | str | os.PathLike | None",
    hub_kwargs: dict | None = None,
    num_saved_users: int = 0,
    withheld: bool = False,
):
    """
    The validated users of a saved model, as chosen by `user_weights` (see `RewardFeatureModel.from_pretrained`):
    `None` the model's `user_weights.safetensors` if it has one, `True` the same but required, a path that file,
    `False` none. Returns a [`UserWeightsFile`] or `None`. A model whose config records saved users (`num_saved_users`)
    without its user file is an error, in a local folder and on the Hub alike.
    """
    if user_weights is False:
        return None
    if user_weights is None or user_weights is True:
        file = resolve_file(path_or_repo, USER_WEIGHTS_NAME, hub_kwargs)
    else:
        file = os.fspath(user_weights)
    if file is None:
        if user_weights is True:
            raise FileNotFoundError(
                f"{path_or_repo} has no {USER_WEIGHTS_NAME} (required by `user_weights=True`). User weights are not "
                "pushed to the Hub unless `push_user_weights=True`; pass the path of a local copy as `user_weights=`."
            )
        if num_saved_users:
            # Scoring the model's users with the population weights would be silently wrong: say what is missing and
            # how to go on, for a local folder and a Hub repo alike.
            why = (
                "their weights were withheld from the upload (personal data, `push_user_weights=False`)"
                if withheld
                else "the file was deleted or not copied"
            )
            raise FileNotFoundError(
                f"{os.path.join(os.fspath(path_or_repo), USER_WEIGHTS_NAME)} is missing, but its config.json records "
                f"{num_saved_users} user(s) saved with the model: {why}. Load the population model with "
                "`user_weights=False`, or bring the users' weights: push them (`push_to_hub(..., "
                "push_user_weights=True)`), restore the file, or pass `user_weights=<path>` to a copy."
            )
        return None
    return load_user_weights(file, num_features, expected_fingerprint=head.fingerprint, weights_file=head.file)


def attach_user_weights(model, path_or_repo, head: FeatureHead, user_weights, hub_kwargs: dict) -> None:
    """
    After transformers has loaded the trunk, head and population weights: puts the saved users (ids and rows) into the
    model, or leaves it a population model (`user_weights=False`, or no user file).
    """
    loaded = read_user_weights_for(
        path_or_repo,
        head,
        model.config.num_features,
        user_weights,
        hub_kwargs,
        saved_users(model.config),
        users_withheld(model.config),
    )
    if model.num_users and (loaded is not None or user_weights is False or not head.has_user_table):
        # Rows that the weights file does not hold were only initialised: drop them.
        model.remove_users(model.user_ids)
    if loaded is not None:
        model.add_users(loaded.user_ids, loaded.weights)


def load_adapter_weights(peft_model, head: FeatureHead, user_table: torch.Tensor) -> None:
    """
    Loads a saved LoRA adapter (LoRA, feature head, population weights) into `peft_model`, with `user_table` as the
    user rows. PEFT requires every weight of its `modules_to_save` in the adapter file, and ours leaves the user table
    out, so it is put back here, from the user file, instead of going through `PeftModel.load_adapter`.
    """
    from peft.utils import set_peft_model_state_dict

    with safe_open(head.file, framework="pt") as handle:
        state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    # Adapters saved before the trunk took its `base_model_prefix` name hold it under `backbone.`.
    rename_legacy_trunk_keys(state_dict, peft_model.get_base_model().base_model_prefix, root="base_model.model.")
    table_key = "base_model.model.user_weights.weight"
    if table_key not in state_dict:
        population = [value for key, value in state_dict.items() if key.endswith("user_weights.population")]
        if peft_model.get_base_model().config.population_weights == "hierarchical" and population:
            user_table = user_table - population[0].to(user_table)  # stored as offsets from the population
        state_dict[table_key] = user_table
    result = set_peft_model_state_dict(peft_model, state_dict, adapter_name=peft_model.active_adapter)
    missing = [key for key in result.missing_keys if peft_model.active_adapter in key and "lora_" in key]
    if missing:
        raise ValueError(f"{head.file} lacks adapter weights of this model, e.g. {missing[:3]}.")


def load_peft_reward_feature_model(
    model_class,
    path_or_repo,
    config,
    head: FeatureHead,
    *,
    user_weights,
    backbone,
    is_trainable: bool,
    hub_kwargs: dict,
    **model_kwargs,
):
    """Loads a LoRA Reward Feature Model: the trunk, the users, then the adapter (LoRA, feature head, population
    weights). Returns a `peft.PeftModel`."""
    from peft import PeftConfig, PeftModel

    peft_config = PeftConfig.from_pretrained(str(path_or_repo), **hub_kwargs)
    backbone = backbone or peft_config.base_model_name_or_path or getattr(config.text_config, "_name_or_path", "")
    if not backbone:
        raise ValueError(
            f"{path_or_repo} is a LoRA adapter whose trunk is unknown (no `base_model_name_or_path` in "
            f"{ADAPTER_CONFIG_NAME}); pass it as `backbone=` (a model id, path or instance)."
        )
    loaded = read_user_weights_for(
        path_or_repo, head, config.num_features, user_weights, hub_kwargs, saved_users(config), users_withheld(config)
    )
    if loaded is None and head.has_user_table:  # an adapter saved by PEFT itself, table inside, ids unknown
        raise ValueError(
            f"{head.file} holds a user table but {path_or_repo} has no {USER_WEIGHTS_NAME} with the users' ids; save "
            "LoRA Reward Feature Models with `trl_rfm.save_reward_feature_model` or `RFMRewardTrainer.save_model`."
        )
    model = model_class.from_backbone(backbone, **architecture_options(config), **model_kwargs)
    for stored_prior in ("user_prior_precision", "user_prior_covariance"):  # the new users' prior, fitted in training
        setattr(model.config, stored_prior, getattr(config, stored_prior, None))
    if loaded is not None:
        model.add_users(loaded.user_ids, loaded.weights)
    peft_config.inference_mode = not is_trainable
    peft_model = PeftModel(model, peft_config)
    load_adapter_weights(peft_model, head, model.get_user_weights().detach())
    return peft_model if is_trainable else peft_model.eval()
