"""
How a Reward Feature Model lives on disk and on the Hub.

A saved model is an ordinary transformers (full) or PEFT (LoRA) directory plus one file of personal data:

    config.json                  RewardFeatureConfig; `num_users` is written as 0: users live in the user file
    model.safetensors            trunk + feature head + population weights          (full models)
    adapter_config.json          PEFT config; base = the causal-LM trunk             (LoRA models)
    adapter_model.safetensors    LoRA + feature head + population weights            (LoRA models)
    user_weights.safetensors     the user table and the users' ids (see `user_weights_io`)   optional, private
    README.md                    model card

Without the user file the directory is a complete population model (it scores everyone with `w_pop` and adapts new
users), which is what `push_to_hub` uploads by default.

Saves are staged in a temporary sibling folder and moved into place: onto a missing or empty destination by one
atomic rename; into a non-empty one file by file, stale weights removed first and the user file last. A save
interrupted at any point leaves either the previous model, or a mix the loader rejects: the user file carries a
fingerprint of the feature head it belongs to, checked at every load.
"""

import contextlib
import copy
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file, logging
from transformers.utils.hub import hf_api

from . import user_weights_io
from .user_weights import UserWeights
from .user_weights_io import USER_WEIGHTS_NAME, UserWeightsFileError, feature_fingerprint, load_user_weights


logger = logging.get_logger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_SAFE_WEIGHTS_NAME = "adapter_model.safetensors"
FEATURE_HEAD_KEY = "feature_head.weight"
ADAPTER_FEATURE_HEAD_KEY = "base_model.model.feature_head.weight"
RFM_MODULES_TO_SAVE = ("feature_head", "user_weights")
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
# Files a save writes or supersedes; stale ones would shadow the new weights (transformers prefers model.safetensors
# over an index, and an adapter_config.json turns a directory into an adapter).
MODEL_FILE_PATTERNS = (
    "config.json",
    "model*.safetensors",
    "model*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    "adapter_model.bin",
    USER_WEIGHTS_NAME,
)
# The user table in a model's or a PeftModel's state dict (PEFT keeps a trained copy and the original).
_USER_TABLE_KEY = re.compile(r"(?:^|\.)user_weights\.(?:modules_to_save\.[^.]+\.|original_module\.)?weight$")
_POPULATION_KEY = re.compile(r"(?:^|\.)user_weights\.(?:modules_to_save\.[^.]+\.|original_module\.)?population$")


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def hub_kwargs_of(kwargs: dict) -> dict:
    """The download options of `from_pretrained` kwargs, to resolve our own files the way transformers resolves its."""
    return {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}


def resolve_file(path_or_repo: str | os.PathLike, filename: str, hub_kwargs: dict | None = None) -> str | None:
    """Local path of `filename` in a local directory or a Hub repo (downloaded or cached); `None` if it has none."""
    return cached_file(
        str(path_or_repo),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **(hub_kwargs or {}),
    )


# ---------------------------------------------------------------------------------------------- the feature head
@dataclass
class FeatureHead:
    """Where a saved model keeps its feature head, and what it is."""

    file: str
    shape: tuple[int, ...]
    fingerprint: str
    has_user_table: bool  # the weights file also holds a user table (saves made before user files existed)
    is_adapter: bool  # a LoRA adapter (adapter_model.safetensors) rather than a full model


def _add_variant(filename: str, variant: str | None) -> str:
    if not variant:
        return filename
    stem, extension = filename.split(".", 1)
    return f"{stem}.{variant}.{extension}"


def locate_feature_head(path_or_repo: str | os.PathLike, hub_kwargs: dict | None = None, variant: str | None = None):
    """Finds the feature head of a saved model (full, sharded or LoRA; local or on the Hub) and fingerprints it."""
    candidates = []
    single = resolve_file(path_or_repo, _add_variant(SAFE_WEIGHTS_NAME, variant), hub_kwargs)
    if single is not None:
        candidates = [(single, FEATURE_HEAD_KEY, None)]
    else:
        index = resolve_file(path_or_repo, _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant), hub_kwargs)
        if index is not None:
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map", {})
            if FEATURE_HEAD_KEY not in weight_map:
                raise ValueError(f"{index} maps no shard to {FEATURE_HEAD_KEY!r}: it is not a Reward Feature Model.")
            shard = resolve_file(path_or_repo, weight_map[FEATURE_HEAD_KEY], hub_kwargs)
            if shard is None:
                raise FileNotFoundError(f"{index} refers to {weight_map[FEATURE_HEAD_KEY]}, which is missing.")
            has_table = any(_USER_TABLE_KEY.search(key) for key in weight_map)
            candidates = [(shard, FEATURE_HEAD_KEY, has_table)]
        else:
            adapter = resolve_file(path_or_repo, ADAPTER_SAFE_WEIGHTS_NAME, hub_kwargs)
            if adapter is not None:
                candidates = [(adapter, ADAPTER_FEATURE_HEAD_KEY, None)]
    if not candidates:
        raise FileNotFoundError(
            f"No safetensors weights ({SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or {ADAPTER_SAFE_WEIGHTS_NAME}) "
            f"in {path_or_repo}."
        )
    file, key, has_table = candidates[0]
    try:
        with safe_open(file, framework="pt") as handle:
            keys = set(handle.keys())
            if key not in keys:
                hint = (
                    " (a LoRA adapter must train and save `feature_head` and `user_weights` as `modules_to_save`)"
                    if key == ADAPTER_FEATURE_HEAD_KEY
                    else ""
                )
                raise ValueError(f"{file} has no {key!r} tensor: it is not a Reward Feature Model{hint}.")
            head = handle.get_tensor(key)
    except SafetensorError as error:
        raise ValueError(f"{file} is not a readable safetensors file ({error}); it is corrupt or truncated.") from None
    if has_table is None:
        has_table = any(_USER_TABLE_KEY.search(k) for k in keys)
    return FeatureHead(
        file=file,
        shape=tuple(head.shape),
        fingerprint=feature_fingerprint(head),
        has_user_table=has_table,
        is_adapter=key == ADAPTER_FEATURE_HEAD_KEY,
    )


def check_feature_dimension(head: FeatureHead, num_features: int, config_name: str) -> None:
    if head.shape[0] != num_features:
        raise ValueError(
            f"{head.file}: the feature head has {head.shape[0]} features (shape {head.shape}) but {config_name} says "
            f"num_features={num_features}; the config and the weights come from different models."
        )


# ---------------------------------------------------------------------------------------------- atomic directories
@contextlib.contextmanager
def staged_directory(save_directory: str | os.PathLike) -> Iterator[str]:
    """Yields an empty folder beside `save_directory`; on success its files replace the destination's (see module
    docstring), on failure it is removed and the destination is untouched."""
    destination = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(destination):
        raise NotADirectoryError(f"Cannot save a model to {destination}: it is a file.")
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    # A leading underscore: the Trainer's Hub uploads skip `_*`, so a staging folder left by a crash is never pushed.
    staging = tempfile.mkdtemp(prefix=f"_tmp-{os.path.basename(destination)}-", dir=parent)
    try:
        yield staging
        _commit(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_model_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def _commit(staging: str, destination: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700 folders; a saved model gets the usual permissions
    if not os.path.exists(destination) or (os.path.isdir(destination) and not os.listdir(destination)):
        os.replace(staging, destination)  # one atomic rename
        return
    new_names = set(os.listdir(staging))
    # 1. Stale model files first: left beside the new ones they could shadow them. The old user file stays until
    #    the end; until then its fingerprint no longer matches and loading fails instead of mixing models.
    for name in os.listdir(destination):
        if name not in new_names and name != USER_WEIGHTS_NAME and _is_model_file(name):
            _remove(os.path.join(destination, name))
    # 2. The new files, the user table last.
    for name in sorted(new_names, key=lambda name: name == USER_WEIGHTS_NAME):
        target = os.path.join(destination, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    if USER_WEIGHTS_NAME not in new_names and os.path.exists(os.path.join(destination, USER_WEIGHTS_NAME)):
        os.remove(os.path.join(destination, USER_WEIGHTS_NAME))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


# ---------------------------------------------------------------------------------------------- saving
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
    table = None if table is None else table.detach()
    if not is_peft_model(model):  # PEFT needs every key of its modules: the adapter file is filtered after writing
        for key in [key for key in state_dict if _USER_TABLE_KEY.search(key)]:
            del state_dict[key]
    if base_model.config.population_weights == "mean" and table is not None and table.shape[0] > 0:
        population = table.mean(dim=0)
        for key in [key for key in state_dict if _POPULATION_KEY.search(key)]:
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
        save_kwargs: passed to `save_pretrained` of transformers (full) or PEFT (LoRA), e.g. `max_shard_size`.
    """
    from .model_card import build_model_card

    peft = is_peft_model(model)
    base = model.get_base_model() if peft else model
    save_kwargs.pop("safe_serialization", None)  # always safetensors
    if not is_main_process:
        if not peft:
            if state_dict is not None:
                state_dict = {key: value for key, value in state_dict.items() if not _USER_TABLE_KEY.search(key)}
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
    with staged_directory(save_directory) as staging:
        if peft:
            _write_adapter(model, base, staging, state_dict)
        else:
            _write_full_model(model, staging, state_dict, save_kwargs)
        if save_user_weights and user_ids:
            head = locate_feature_head(staging, variant=save_kwargs.get("variant"))
            path = os.path.join(staging, USER_WEIGHTS_NAME)
            user_weights_io.save_user_weights(path, user_ids, table, head.fingerprint)
        if model_card is not False:
            if model_card is None:
                model_card = build_model_card(base, is_adapter=peft, num_training_users=len(user_ids))
            model_card.save(os.path.join(staging, "README.md"))


def _write_full_model(model, staging: str, state_dict: dict, save_kwargs: dict) -> None:
    num_users = model.config.num_users
    model.config.num_users = 0  # config.json describes what model.safetensors holds: no user rows
    try:
        PreTrainedModel.save_pretrained(model, staging, state_dict=state_dict, **save_kwargs)
    finally:
        model.config.num_users = num_users


def _write_adapter(peft_model, base, staging: str, state_dict: dict) -> None:
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
    peft_model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
    # PEFT saves the whole user table with the other `modules_to_save`; take it out (adapters are small).
    adapter_file = os.path.join(staging, ADAPTER_SAFE_WEIGHTS_NAME)
    with safe_open(adapter_file, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if not _USER_TABLE_KEY.search(key)}
    save_file(tensors, adapter_file, metadata=metadata)
    config = copy.deepcopy(base.config)
    config.num_users = 0
    config.architectures = [type(base).__name__]
    config.save_pretrained(staging)


def push_to_hub(
    model,
    repo_id: str,
    *,
    push_user_weights: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    model_card=None,
):
    """
    Uploads a [`RewardFeatureModel`] or a `PeftModel` around one to the Hub in one commit: weights, config and model
    card. The user table is personal data and stays local unless `push_user_weights=True`; without it, the repo is a
    population model that anyone can adapt to new users. Returns `huggingface_hub.CommitInfo`.
    """
    from .model_card import build_model_card

    api = hf_api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    base = model.get_base_model() if is_peft_model(model) else model
    if model_card is None:
        model_card = build_model_card(
            base,
            hub_model_id=repo_id,
            is_adapter=is_peft_model(model),
            num_training_users=base.num_users,
            includes_user_weights=push_user_weights,
            tags=tags,
        )
    save_kwargs = {} if is_peft_model(model) or max_shard_size is None else {"max_shard_size": max_shard_size}
    if commit_message is None:
        commit_message = "Upload Reward Feature Model" + (" with user weights" if push_user_weights else "")
    with tempfile.TemporaryDirectory() as folder:
        save_reward_feature_model(
            model, folder, save_user_weights=push_user_weights, model_card=model_card, **save_kwargs
        )
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


@contextlib.contextmanager
def uploads_excluding(patterns: list[str]) -> Iterator[None]:
    """
    Adds `patterns` to the `ignore_patterns` of every folder upload that transformers makes meanwhile.

    The Trainer uploads its whole output folder (`Trainer.push_to_hub`, and the checkpoints of `hub_strategy`) through
    transformers' shared `HfApi`, with no way to pass extra ignore patterns; this is how the user weights are kept out
    of those uploads. Scoped to the `with` block.
    """
    api = hf_api()
    upload_folder = api.upload_folder

    def upload_folder_excluding(*args, ignore_patterns=None, **kwargs):
        ignore_patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        return upload_folder(*args, ignore_patterns=[*ignore_patterns, *patterns], **kwargs)

    api.upload_folder = upload_folder_excluding  # an instance attribute shadows the method, only on this instance
    try:
        yield
    finally:
        del api.upload_folder


# ---------------------------------------------------------------------------------------------- loading
def read_user_weights_for(
    path_or_repo,
    head: FeatureHead,
    num_features: int,
    user_weights: "bool | str | os.PathLike | None",
    hub_kwargs: dict | None = None,
):
    """
    The validated users of a saved model, as chosen by `user_weights` (see `RewardFeatureModel.from_pretrained`):
    `None` the model's `user_weights.safetensors` if it has one, `True` the same but required, a path that file,
    `False` none. Returns a [`UserWeightsFile`] or `None`.
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
        return None
    return load_user_weights(file, num_features, expected_fingerprint=head.fingerprint, weights_file=head.file)


def attach_user_weights(model, path_or_repo, head: FeatureHead, user_weights, hub_kwargs: dict) -> None:
    """
    After transformers has loaded the trunk, head and population weights: puts the saved users (ids and rows) into the
    model, or leaves it a population model (`user_weights=False`, or no user file).
    """
    loaded = read_user_weights_for(path_or_repo, head, model.config.num_features, user_weights, hub_kwargs)
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
    table_key = "base_model.model.user_weights.weight"
    if table_key not in state_dict:
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
    loaded = read_user_weights_for(path_or_repo, head, config.num_features, user_weights, hub_kwargs)
    if loaded is None and head.has_user_table:  # an adapter saved by PEFT itself, table inside, ids unknown
        raise ValueError(
            f"{head.file} holds a user table but {path_or_repo} has no {USER_WEIGHTS_NAME} with the users' ids; save "
            "LoRA Reward Feature Models with `trl_rfm.save_reward_feature_model` or `RFMRewardTrainer.save_model`."
        )
    model = model_class.from_backbone(
        backbone,
        num_features=config.num_features,
        feature_normalization=config.feature_normalization,
        population_weights=config.population_weights,
        **model_kwargs,
    )
    if loaded is not None:
        model.add_users(loaded.user_ids, loaded.weights)
    peft_config.inference_mode = not is_trainable
    peft_model = PeftModel(model, peft_config)
    load_adapter_weights(peft_model, head, model.get_user_weights().detach())
    return peft_model if is_trainable else peft_model.eval()


def restore_checkpoint(model, checkpoint: str, load_model_weights: bool) -> None:
    """
    Puts the users of a Trainer checkpoint back into `model` (a `RewardFeatureModel` or a `PeftModel` around one). For
    a `PeftModel` the whole adapter is loaded here (see [`load_adapter_weights`]); for a full model, the Trainer has
    loaded the other weights (`load_model_weights=False`). The checkpoint must hold exactly the model's users, in the
    same order.
    """
    peft = is_peft_model(model)
    base = model.get_base_model() if peft else model
    head = locate_feature_head(checkpoint)
    file = os.path.join(checkpoint, USER_WEIGHTS_NAME)
    if not os.path.isfile(file):
        if base.num_users:
            raise FileNotFoundError(
                f"{file} is missing: checkpoint {checkpoint} has no user weights, so resuming would restart the "
                f"weights of the {base.num_users} users from scratch."
            )
        table = base.get_user_weights().detach()
    else:
        loaded = load_user_weights(file, base.config.num_features, head.fingerprint, head.file)
        if loaded.user_ids != base.user_ids:
            saved, current = set(loaded.user_ids), set(base.user_ids)
            raise UserWeightsFileError(
                f"{file} holds {len(saved)} users but the training data has {len(current)}: only in the checkpoint "
                f"{sorted(saved - current)[:5]}, only in the training data {sorted(current - saved)[:5]}"
                + (" (the same users in another order)" if saved == current else "")
                + ". Resume with the training data of the run that wrote the checkpoint."
            )
        table = loaded.weights
    if peft and load_model_weights:
        load_adapter_weights(model, head, table)
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, UserWeights):  # PEFT keeps the trained copy and the original: both get the rows
                module.weight.copy_(table.to(module.weight))
