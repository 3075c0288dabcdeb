"""Training: [`RFMConfig`] and [`RFMRewardTrainer`] (TRL's `RewardTrainer` for Reward Feature Models)."""

from .rfm_config import RFMConfig
from .rfm_trainer import RFMRewardTrainer, UserIndexCollator
from .sampling import LengthGroupedPairSampler, length_grouped_trainer
