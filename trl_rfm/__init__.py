"""trl-rfm: Reward Feature Models (personalised reward models) for TRL."""

from .configuration_rfm import RewardFeatureConfig
from .modeling_rfm import RewardFeatureModel, RewardFeatureModelOutput
from .user_weights import UserWeights

__version__ = "0.1.0"
from .rfm_config import RFMConfig
from .rfm_trainer import RFMRewardTrainer, UserIndexCollator
from .synthetic import SyntheticPreferences, make_synthetic_preferences
from .tiny_models import build_tiny_causal_lm, build_tokenizer, save_tiny_causal_lm
