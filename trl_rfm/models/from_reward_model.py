"""
Personalising an existing reward model: an `AutoModelForSequenceClassification` with `num_labels=1` (a TRL reward
model, Skywork-Reward, ...) becomes a [`RewardFeatureModel`] on its trunk whose population reward is, before any
training, exactly the reward model's score.

    score(x, y) = s · h(x, y)                       the reward model: its `score` head on the last token's state
    phi(x, y)   = [s · h, v_1 · h, ..., v_{d-1} · h]  feature 0 is the score, the others are new random directions
    w_pop       = [1, 0, ..., 0]                    so phi · w_pop = score(x, y)

The features are left unnormalised (`feature_normalization="none"`): an RMS normalisation would divide the score by
a norm that depends on the new directions, and the population reward would no longer be the reward model's. Users
start from the population weights plus noise on the new directions, and training (or few-shot adaptation) moves them
from the reward model the user trusts.
"""

import copy
import warnings
from collections.abc import Hashable, Iterable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


SEQUENCE_CLASSIFICATION_SUFFIX = "ForSequenceClassification"
NUM_LABELS_ERROR = (
    "The model has `num_labels={}`, but reward models require `num_labels=1` to output a single scalar reward per "
    "sequence. Please instantiate your model with `num_labels=1` or pass a model name as a string to have it configured "
    "automatically."
)  # TRL's `RewardTrainer` message, word for word


def is_sequence_classifier(model_or_config: "PreTrainedModel | PretrainedConfig") -> bool:
    """Whether a model (instance) or a config (its `architectures`) is a `*ForSequenceClassification` model."""
    if isinstance(model_or_config, PretrainedConfig):
        return any(name.endswith(SEQUENCE_CLASSIFICATION_SUFFIX) for name in model_or_config.architectures or [])
    return type(model_or_config).__name__.endswith(SEQUENCE_CLASSIFICATION_SUFFIX)


def check_num_labels(model: PreTrainedModel) -> None:
    """Raises TRL's `ValueError` for a sequence classifier with more than one output."""
    num_labels = getattr(model.config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(NUM_LABELS_ERROR.format(num_labels))


def score_head(model: PreTrainedModel) -> nn.Linear:
    """The linear head of a one-label sequence-classification reward model (`score` in most decoder models,
    `classifier` in encoders)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear) and head.out_features == 1:
            return head
    raise ValueError(
        f"{type(model).__name__} has no one-output linear head named `score` or `classifier`: it is not a "
        "reward model as built by `AutoModelForSequenceClassification(num_labels=1)`."
    )


def merge_peft_model(model) -> tuple[PreTrainedModel, object]:
    """A `PeftModel` around a plain model: the model with the adapter merged in, and a copy of the adapter's config to
    wrap the Reward Feature Model built on it with (fresh adapters, so the function is unchanged at step 0)."""
    peft_config = copy.deepcopy(model.peft_config[model.active_adapter])
    peft_config.inference_mode = False
    return model.merge_and_unload(), peft_config


def is_foreign_peft_model(model) -> bool:
    """A `PeftModel` around something other than a Reward Feature Model (e.g. an existing reward model)."""
    from accelerate.utils import is_peft_model

    from .modeling_rfm import RewardFeatureModel  # here: modeling_rfm imports this module

    return (
        not isinstance(model, str)
        and is_peft_model(model)
        and not isinstance(model.get_base_model(), RewardFeatureModel)
    )


@torch.no_grad()
def from_reward_model(
    reward_model: PreTrainedModel,
    num_features: int = 32,
    population_weights: str = "learned",
    user_ids: Iterable[Hashable] | None = None,
):
    """
    A [`RewardFeatureModel`] on the trunk of `reward_model` (a `*ForSequenceClassification` with `num_labels=1`, or a
    `PeftModel` around one, whose adapter is merged) whose population reward equals the reward model's score.

    Feature 0 is the reward model's score direction; the other `num_features - 1` are new. The features are
    unnormalised (see the module docstring); with `population_weights="mean"` the equality holds until users are added.
    Scores agree where the reward model reads the same token: the last attended one (a reward model whose pad token is
    also its EOS token reads the token before a trailing EOS, the RFM the EOS itself).
    """
    from .modeling_rfm import RewardFeatureModel

    if hasattr(reward_model, "merge_and_unload") and hasattr(reward_model, "peft_config"):
        reward_model, _ = merge_peft_model(reward_model)
    check_num_labels(reward_model)
    head = score_head(reward_model)
    if head.bias is not None and head.bias.abs().max() > 0:
        warnings.warn(
            "The reward model's score head has a bias; the personalised model drops it (a constant shift of every "
            "reward, which no comparison can see).",
            stacklevel=2,
        )
    model = RewardFeatureModel.from_backbone(
        reward_model.base_model,
        num_features=num_features,
        feature_normalization="none",
        population_weights=population_weights,
    )
    model.config._name_or_path = reward_model.config._name_or_path  # where TRL looks for the tokenizer
    model.feature_head.weight[0] = head.weight[0].to(model.feature_head.weight.dtype)
    model.user_weights.population.zero_()
    model.user_weights.population[0] = 1.0
    if user_ids is not None:
        model.add_users(user_ids)
    return model
