"""Personalised rewards for policy training: a TRL reward function, DPO relabelling, export of one user's reward."""

from .export import export_user_reward_model
from .personalized_reward import PersonalizedReward
from .relabel import relabel_preferences, sample_candidates
