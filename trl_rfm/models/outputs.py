"""What a [`RewardFeatureModel`]'s forward returns."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class RewardFeatureModelOutput(ModelOutput):
    """
    Args:
        loss (`torch.Tensor`, *optional*): not computed by the model; the trainer computes the Bradley-Terry loss.
        logits (`torch.Tensor` of shape `(batch_size, 1)`): reward of each row's user (population when unknown).
        population_logits (`torch.Tensor` of shape `(batch_size, 1)`): reward under the population weights.
        reward_features (`torch.Tensor` of shape `(batch_size, num_features)`): the features `phi(x, y)`.
        user_weights_penalty (`torch.Tensor`, scalar): mean over users of `||w_u - w_pop||^2` (the Gaussian prior
            on the user weights, up to its coefficient).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    population_logits: torch.Tensor | None = None
    reward_features: torch.Tensor | None = None
    user_weights_penalty: torch.Tensor | None = None
