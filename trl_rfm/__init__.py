"""trl-rfm: Reward Feature Models (personalised reward models) for TRL."""

__version__ = "0.1.0"

import importlib
import warnings

from .adaptation import (
    ActiveAdaptationTrace,
    L2Selection,
    UserPosterior,
    adapt_users,
    compute_feature_differences,
    compute_score_head_input_differences,
    expected_information_gain,
    fit_user_posterior,
    fit_user_weights,
    group_by_user,
    prior_from_model,
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


# Test toys, moved to `trl_rfm.testing`: still importable from here, with a DeprecationWarning.
_MOVED_TO_TESTING = (
    "SyntheticPreferences",
    "build_tiny_causal_lm",
    "build_tokenizer",
    "make_synthetic_preferences",
    "save_tiny_causal_lm",
)


def __getattr__(name: str):
    if name in _MOVED_TO_TESTING:
        warnings.warn(
            f"`trl_rfm.{name}` is deprecated; import it from `trl_rfm.testing` instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(".testing", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
