"""PEFT's default target modules for the trunk of a Reward Feature Model.

peft fills a config's missing `target_modules` (q_proj/v_proj for Llama, Qwen2, Mixtral, ...) by looking up
`model.config.model_type`; a [`RewardFeatureModel`]'s is `reward_feature_model`, unknown to peft, so
`LoraConfig()` without targets would fail where TRL's `RewardTrainer` succeeds. [`fill_default_targets`] applies
peft's own defaults for the trunk's `model_type` before the model is wrapped.
"""

import inspect


def fill_default_targets(peft_config, model_type: str):
    """Completes `peft_config` in place with peft's defaults for a trunk of type `model_type`, exactly as peft would
    for that trunk on its own (same mapping, same code). Configs that name their targets, prompt-learning configs and
    trunks peft has no defaults for are left as they are: peft then raises its own error, the one TRL users see."""
    if getattr(peft_config, "target_modules", "n/a") is not None or getattr(peft_config, "target_parameters", None):
        return peft_config
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_config.peft_type)
    if tuner_cls is None:
        return peft_config
    prepare = inspect.getattr_static(tuner_cls, "_prepare_adapter_config", None)
    try:
        if isinstance(prepare, staticmethod):
            tuner_cls._prepare_adapter_config(peft_config, {"model_type": model_type})
        elif prepare is not None:  # an instance method reading only class attributes (`target_module_mapping`)
            prepare(tuner_cls, peft_config, {"model_type": model_type})
    except (ValueError, KeyError, AttributeError, TypeError):
        pass  # no defaults for this trunk: peft says so when the model is wrapped
    return peft_config
