"""Training: [`RFMConfig`] and [`RFMRewardTrainer`] (TRL's `RewardTrainer` for Reward Feature Models)."""

from .rfm_config import RFMConfig
from .rfm_trainer import RFMRewardTrainer
from .sampling import LengthGroupedPairSampler, length_grouped_trainer
from .user_index import UserIndexCollator
