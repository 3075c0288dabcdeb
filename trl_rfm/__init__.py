"""trl-rfm: Reward Feature Models (personalised reward models) for TRL."""

from .configuration_rfm import RewardFeatureConfig
from .modeling_rfm import RewardFeatureModel, RewardFeatureModelOutput
from .user_weights import UserWeights

__version__ = "0.1.0"
