"""The Reward Feature Model: its config, the model (features `phi` and user weights `w_u`), the user table."""

from .configuration_rfm import RewardFeatureConfig
from .feature_geometry import effective_dimension, feature_covariance_penalty
from .modeling_rfm import RewardFeatureModel, RewardFeatureModelOutput
from .user_table import UserWeights, normalize_user_id
