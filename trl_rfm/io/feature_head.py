"""
Where a saved Reward Feature Model keeps its feature head (full, sharded or LoRA; local or on the Hub), and the file
names and state-dict keys of the layout described in [`trl_rfm.io`].
"""

import json
import os
import re
from dataclasses import dataclass

from safetensors import SafetensorError, safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .user_weights_file import feature_fingerprint


ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_SAFE_WEIGHTS_NAME = "adapter_model.safetensors"
FEATURE_HEAD_KEY = "feature_head.weight"
ADAPTER_FEATURE_HEAD_KEY = "base_model.model.feature_head.weight"
RFM_MODULES_TO_SAVE = ("feature_head", "user_weights")
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
# The user table in a model's or a PeftModel's state dict (PEFT keeps a trained copy and the original).
USER_TABLE_KEY = re.compile(r"(?:^|\.)user_weights\.(?:modules_to_save\.[^.]+\.|original_module\.)?weight$")
POPULATION_KEY = re.compile(r"(?:^|\.)user_weights\.(?:modules_to_save\.[^.]+\.|original_module\.)?population$")
# Where saves made before the trunk took its `base_model_prefix` name (`model`, `transformer`, ...) keep it.
LEGACY_TRUNK_PREFIX = "backbone"


def legacy_trunk_key_mapping(prefix: str) -> dict[str, str]:
    """transformers' `key_mapping` (regex -> replacement) that loads a save with the trunk under `backbone.` into a
    model whose trunk is `prefix`."""
    return {} if prefix == LEGACY_TRUNK_PREFIX else {rf"^{LEGACY_TRUNK_PREFIX}\.": f"{prefix}."}


def rename_legacy_trunk_keys(state_dict: dict, prefix: str, root: str = "") -> dict:
    """Renames in place the keys `{root}backbone.*` of a state dict to `{root}{prefix}.*` (the trunk's current name;
    `root` is where the model sits, e.g. `base_model.model.` in a PEFT adapter). Returns `state_dict`."""
    old, new = f"{root}{LEGACY_TRUNK_PREFIX}.", f"{root}{prefix}."
    if old != new:
        for key in [key for key in state_dict if key.startswith(old)]:
            state_dict[new + key[len(old) :]] = state_dict.pop(key)
    return state_dict


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
            has_table = any(USER_TABLE_KEY.search(key) for key in weight_map)
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
        has_table = any(USER_TABLE_KEY.search(k) for k in keys)
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
