"""The trunk of a [`RewardFeatureModel`]: which class `AutoModel` builds for it, and how saves made with the trunk
under `backbone.` are renamed on load."""

from transformers import PreTrainedConfig
from transformers.core_model_loading import WeightRenaming
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..io.feature_head import rename_legacy_trunk_keys


def trunk_class(text_config: PreTrainedConfig) -> type | None:
    """The class `AutoModel.from_config(text_config)` builds, without building it (`None` for remote-code trunks)."""
    try:
        found = MODEL_MAPPING[type(text_config)]
    except KeyError:
        return None
    return found[0] if isinstance(found, (list, tuple)) else found


def rename_legacy_trunk_keys_hook(module, state_dict, prefix, *args) -> None:
    """`load_state_dict` pre-hook: a state dict saved with the trunk under `backbone.` loads under the current prefix."""
    rename_legacy_trunk_keys(state_dict, module.base_model_prefix, root=prefix)


def is_legacy_renaming(conversion, legacy: dict[str, str]) -> bool:
    """Whether a transformers weight conversion is the `backbone.` renaming, which a later save must not undo."""
    sources = getattr(conversion, "source_patterns", None)
    return isinstance(conversion, WeightRenaming) and list(sources or []) == list(legacy)


def config_kwargs(model_init_kwargs: dict) -> dict:
    """The options of `from_pretrained` that `AutoConfig.from_pretrained` also takes."""
    return {k: model_init_kwargs[k] for k in ("revision", "trust_remote_code", "token") if k in model_init_kwargs}
