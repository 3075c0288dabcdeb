"""Configuration of the Reward Feature Model."""

from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .pooling import POOLINGS


FEATURE_NORMALIZATIONS = ("layernorm", "rms", "none")
MIN_NORMALIZED_FEATURES = {"rms": 2, "layernorm": 3}  # fewest features each normalisation leaves more than a sign
POPULATION_WEIGHTS = ("hierarchical", "learned", "mean")
# What `RewardFeatureModel.from_backbone` takes besides the trunk: a saved config and the trainer's `RFMConfig` both
# hold them under these names.
ARCHITECTURE_OPTIONS = ("num_features", "feature_normalization", "population_weights", "pooling")


def architecture_options(source) -> dict:
    """The options of [`ARCHITECTURE_OPTIONS`] read from `source` (a `RewardFeatureConfig` or an `RFMConfig`)."""
    return {name: getattr(source, name) for name in ARCHITECTURE_OPTIONS}


class RewardFeatureConfig(PreTrainedConfig):
    r"""
    Configuration of a [`RewardFeatureModel`]: a causal-LM trunk, a linear feature head producing `num_features`
    reward features `phi(x, y)`, and a table of per-user weights `w_u` (plus population weights `w_pop`).

    The reward of user `u` is `r_u(x, y) = phi(x, y) · w_u`.

    Args:
        text_config (`dict` or [`~transformers.PreTrainedConfig`], *optional*):
            Configuration of the causal-LM trunk (any `AutoModel`-loadable decoder, e.g. Llama, Qwen2, GPT-2).
        num_features (`int`, *optional*, defaults to 32):
            Number `d` of reward features.
        num_users (`int`, *optional*, defaults to 0):
            Number of rows of the user-weight table. The ids of the users are *not* stored in the config (they are
            personal data); they live beside the weights, see [`RewardFeatureModel.user_ids`].
        feature_normalization (`str`, *optional*, defaults to `"rms"`):
            How the scale ambiguity between features and user weights is fixed. `"rms"` rescales every feature vector
            to unit root-mean-square (`||phi|| = sqrt(d)`), so all the reward scale lives in the user weights and an
            isotropic Gaussian prior on `w_u` means the same thing for every model. `"none"` leaves the features
            unnormalised (needed for `num_features=1`, where normalising would keep only the sign).
        population_weights (`str`, *optional*, defaults to `"learned"`):
            How the weights used for unknown users are formed. `"learned"`: a separate vector trained on every
            comparison as if one rater had made them all (the best single reward on the learned features). `"mean"`:
            the mean of the user rows.
        pooling (`str`, *optional*, defaults to `"auto"`):
            Which hidden states the feature head reads: `"last"` (last attended token, for causal LMs), `"cls"` (first
            token, `[CLS]`) or `"mean"` (mean over attended tokens) for encoders; `"auto"` picks `"mean"` for
            bidirectional encoders (BERT, RoBERTa, DeBERTa, ...; sentence-transformers models are mean-pooled) and
            `"last"` otherwise. See `trl_rfm.models.pooling`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the feature head.
        user_prior_precision (`float`, *optional*):
            Precision of the prior of a new user's weights, `w_u ~ N(w_pop, I / user_prior_precision)`, read from the
            trained users' rows at the end of training ([`RFMRewardTrainer`] sets it; see
            [`trl_rfm.prior_from_model`]). Stored so that users added later (`adapt_users`, `add_users`), whose rows
            are closer to the population than trained rows, do not move the prior of the next ones. `None` (a model
            built by hand, or saved by an older version): read from the table's current rows.
        user_prior_covariance (`list[list[float]]`, *optional*):
            Covariance `[d, d]` of the prior of a new user's weights, `w_u ~ N(w_pop, user_prior_covariance)`, fitted
            to the training users' comparisons on the final features by empirical Bayes at the end of training
            ([`trl_rfm.fit_user_prior`]): it lets a new user move along the directions where users differ and holds
            them along the others. [`trl_rfm.prior_from_model`] returns its inverse; `None`: the isotropic prior of
            `user_prior_precision`.
    """

    model_type = "reward_feature_model"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}
    # Outputs that `Trainer.evaluate` must not gather as predictions.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "reward_features",
        "user_weights_penalty",
        "hidden_states",
        "past_key_values",
    ]

    text_config: dict | PreTrainedConfig | None = None
    num_features: int = 32
    num_users: int = 0
    feature_normalization: str = "rms"
    population_weights: str = "learned"
    pooling: str = "auto"
    initializer_range: float = 0.02
    user_prior_precision: float | None = None
    user_prior_covariance: list[list[float]] | None = None

    def __post_init__(self, **kwargs):
        # A reward model outputs one scalar per sequence; TRL's RewardTrainer checks for it.
        kwargs["num_labels"] = 1
        super().__post_init__(**kwargs)
        if self.feature_normalization not in FEATURE_NORMALIZATIONS:
            raise ValueError(
                f"`feature_normalization` must be one of {FEATURE_NORMALIZATIONS}, got {self.feature_normalization!r}."
            )
        if self.population_weights not in POPULATION_WEIGHTS:
            raise ValueError(
                f"`population_weights` must be one of {POPULATION_WEIGHTS}, got {self.population_weights!r}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}, got {self.pooling!r}.")
        if self.num_features < 1:
            raise ValueError(f"`num_features` must be >= 1, got {self.num_features}.")
        # Normalising fewer features than this leaves only a sign: RMS keeps the direction of 1 feature (its sign),
        # LayerNorm also removes the mean, so 2 centred features are one sign as well.
        fewest = MIN_NORMALIZED_FEATURES.get(self.feature_normalization, 1)
        if self.num_features < fewest:
            raise ValueError(
                f"`num_features={self.num_features}` with `feature_normalization='{self.feature_normalization}'` "
                f"would reduce the features to a sign (at least {fewest} are needed); use "
                "`feature_normalization='none'` for so few features (with 1, a plain Bradley-Terry reward model)."
            )
        if self.user_prior_precision is not None and not self.user_prior_precision > 0:
            raise ValueError(f"`user_prior_precision` must be > 0 or None, got {self.user_prior_precision}.")
        if self.user_prior_covariance is not None:
            self._check_user_prior_covariance()
        if self.num_users < 0:
            raise ValueError(f"`num_users` must be >= 0, got {self.num_users}.")

    def _check_user_prior_covariance(self) -> None:
        import torch  # the config module stays importable without torch's import cost when unused

        covariance = torch.as_tensor(self.user_prior_covariance, dtype=torch.float64)
        d = self.num_features
        if covariance.shape != (d, d):
            raise ValueError(
                f"`user_prior_covariance` must be a [num_features, num_features] = [{d}, {d}] matrix, got shape "
                f"{tuple(covariance.shape)}."
            )
        if not torch.isfinite(covariance).all() or not torch.allclose(covariance, covariance.T, atol=1e-6):
            raise ValueError("`user_prior_covariance` must be a finite symmetric matrix.")
        if torch.linalg.cholesky_ex(covariance)[1] > 0:
            raise ValueError("`user_prior_covariance` must be positive definite.")

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size
