"""Few-shot adaptation of new users on frozen features: featurisation, the batched solver, the prior, active
question selection, and the glue that adds users to a model."""

from .active import ActiveAdaptationTrace, expected_information_gain, select_questions, simulate_adaptation
from .adapt_users import adapt_users
from .empirical_bayes import UserPrior, fit_user_prior, response_reuse_weights
from .features import (
    compute_feature_differences,
    compute_response_features,
    compute_score_head_input_differences,
    group_by_user,
    tokenize_preferences,
    tokenize_sequence,
)
from .prior import L2Selection, prior_from_model, select_l2
from .solver import UserPosterior, fit_user_posterior, fit_user_weights
