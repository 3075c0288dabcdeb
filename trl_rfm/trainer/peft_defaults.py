"""PEFT targets of a Reward Feature Model, resolved as on the trunk's own sequence-classification model.

peft decides what an adapter config adapts from the model it wraps: `LoraConfig()` without targets gets its defaults
for `model.config.model_type` (q_proj/v_proj for Llama and Qwen2, c_attn for GPT-2, query/value for BERT; none for
MoE trunks such as Mixtral or Qwen3-MoE, which fail), and on transformers 5 the targets of MoE models whose experts are
fused are rewritten to the fused parameters. A [`RewardFeatureModel`]'s `model_type` is `reward_feature_model`, which
peft knows nothing about, so it would do neither. [`fill_default_targets`] lets peft wrap, on the meta device, the
`*ForSequenceClassification` model that TRL's `RewardTrainer` trains on the same trunk, and gives the RFM's config what
peft resolved there, or raises the error peft raised there. The RFM's trunk has the same module names as that model
(it is registered under the same `base_model_prefix`), so the same modules and parameters are adapted.
"""

import contextlib
import copy
import warnings

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel


# What peft may resolve or rewrite on the model it wraps (defaults, "all-linear", fused MoE experts).
RESOLVED_FIELDS = ("target_modules", "target_parameters", "rank_pattern", "alpha_pattern")


def fill_default_targets(peft_config, trunk: "str | PreTrainedConfig | PreTrainedModel"):
    """
    Completes `peft_config` in place with the targets peft resolves for the sequence-classification model of `trunk`
    (a Reward Feature Model, its trunk or the trunk's config; a bare `model_type` stands for that type's default
    config). Without targets, peft's error on that model, if any, is raised here: the one TRL users get. Explicit
    targets that model lacks (such as the RFM's own `feature_head`) are left for peft to match on the RFM. Returns
    `peft_config`.
    """
    if not hasattr(peft_config, "target_modules"):  # prompt learning: nothing to target
        return peft_config
    reference = _sequence_classifier(trunk)
    if reference is None:
        return peft_config
    from peft import get_peft_model

    try:
        from peft.utils import NoMatchingPeftModuleError
    except ImportError:  # older peft raises a plain ValueError when no module matches
        NoMatchingPeftModuleError = ValueError

    probe = copy.deepcopy(peft_config)
    probe.modules_to_save = None  # the RFM's own modules (`feature_head`, `user_weights`) are not in the reference
    if hasattr(probe, "init_lora_weights"):
        probe.init_lora_weights = False  # targets only: no initialisation from the (empty) weights
    wants_defaults = peft_config.target_modules is None and not getattr(peft_config, "target_parameters", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns about the real model when the trainer wraps it
            get_peft_model(reference, probe, low_cpu_mem_usage=True)
    except NoMatchingPeftModuleError:
        if wants_defaults:
            raise
        return peft_config  # explicit targets the reference lacks: peft matches them against the RFM itself
    except (RuntimeError, NotImplementedError, TypeError):
        return peft_config  # the meta-device stand-in failed, not the config: peft judges it on the RFM
    # Any other error (a ValueError: half of a fused MoE projection, ...) is peft's verdict on this trunk's config.
    for field in RESOLVED_FIELDS:
        if hasattr(peft_config, field):
            setattr(peft_config, field, copy.deepcopy(getattr(probe, field)))
    return peft_config


def _sequence_classifier(trunk) -> PreTrainedModel | None:
    """The one-label `*ForSequenceClassification` (else the bare trunk model) of `trunk`'s config, with its
    parameters on the meta device; `None` when transformers cannot build either."""
    from accelerate import init_empty_weights

    from ..models.modeling_rfm import RewardFeatureModel

    if isinstance(trunk, str):
        try:
            config = AutoConfig.for_model(trunk)
        except (ValueError, KeyError):  # a model type transformers does not know (remote code)
            return None
    elif isinstance(trunk, RewardFeatureModel):
        config = trunk.config.text_config
    elif isinstance(trunk, PreTrainedModel):
        config = trunk.config
    else:
        config = trunk
    config = copy.deepcopy(config)
    config.num_labels = 1
    for auto_class in (AutoModelForSequenceClassification, AutoModel):
        try:
            with _without_zero3_init(), init_empty_weights():
                return auto_class.from_config(config)
        except (ValueError, KeyError):  # no such class for this trunk
            continue
        except (RuntimeError, NotImplementedError, TypeError):  # it cannot be built empty here
            return None
    return None


@contextlib.contextmanager
def _without_zero3_init():
    """Under DeepSpeed ZeRO-3, transformers builds every model inside `deepspeed.zero.Init`, which partitions (and so
    materialises) its parameters; the reference must stay on the meta device. transformers' own flag for "zero.Init
    already done" turns that off for the block."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    from transformers import modeling_utils

    if getattr(modeling_utils, "_is_ds_init_called", True):  # already inside (or unknown to this transformers)
        yield
        return
    with modeling_utils.set_zero3_state():
        yield
