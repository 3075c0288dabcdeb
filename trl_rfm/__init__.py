"""trl-rfm: Reward Feature Models (personalised reward models) for TRL."""

__version__ = "0.2.0.dev0"

from .adaptation import (
    ActiveAdaptationTrace,
    L2Selection,
    UserPosterior,
    UserPrior,
    adapt_users,
    compute_feature_differences,
    compute_score_head_input_differences,
    expected_information_gain,
    fit_user_posterior,
    fit_user_prior,
    fit_user_weights,
    group_by_user,
    prior_from_model,
    response_reuse_weights,
    select_l2,
    select_questions,
    simulate_adaptation,
    tokenize_preferences,
)
from .data import pairs_from_ratings, split_pairs_by_user, split_rated_items_for_evaluation
from .evaluation import AdaptationEvaluationConfig, AdaptationEvaluationResult, evaluate_adaptation
from .io import USER_WEIGHTS_NAME, UserWeightsFileError, build_model_card, load_user_weights, save_reward_feature_model
from .models import (
    RewardFeatureConfig,
    RewardFeatureModel,
    RewardFeatureModelOutput,
    UserWeights,
    effective_dimension,
    feature_covariance_penalty,
)
from .rewards import PersonalizedReward, export_user_reward_model, relabel_preferences, sample_candidates
from .trainer import RFMConfig, RFMRewardTrainer, UserIndexCollator
