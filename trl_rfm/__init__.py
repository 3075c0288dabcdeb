"""trl-rfm: Reward Feature Models (personalised reward models) for TRL."""

__version__ = "0.1.0"

from .active_adaptation import ActiveAdaptationTrace, expected_information_gain, select_questions, simulate_adaptation
from .adaptation import (
    L2Selection,
    UserPosterior,
    adapt_users,
    fit_user_posterior,
    fit_user_weights,
    prior_from_model,
    select_l2,
)
from .configuration_rfm import RewardFeatureConfig
from .evaluation import (
    AdaptationEvaluationConfig,
    AdaptationEvaluationResult,
    evaluate_adaptation,
    pairs_from_ratings,
    split_pairs_by_user,
    split_rated_items_for_evaluation,
)
from .export import export_user_reward_model
from .feature_cache import (
    compute_feature_differences,
    compute_score_head_input_differences,
    group_by_user,
    tokenize_preferences,
)
from .feature_geometry import effective_dimension, feature_covariance_penalty
from .model_card import build_model_card
from .modeling_rfm import RewardFeatureModel, RewardFeatureModelOutput
from .personalized_reward import PersonalizedReward
from .relabel import relabel_preferences, sample_candidates
from .rfm_config import RFMConfig
from .rfm_trainer import RFMRewardTrainer, UserIndexCollator
from .serialization import save_reward_feature_model
from .synthetic import SyntheticPreferences, make_synthetic_preferences
from .tiny_models import build_tiny_causal_lm, build_tokenizer, save_tiny_causal_lm
from .user_weights import UserWeights
from .user_weights_io import USER_WEIGHTS_NAME, UserWeightsFileError, load_user_weights
