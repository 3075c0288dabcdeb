"""Training configuration of the [`RFMRewardTrainer`]."""

from dataclasses import dataclass, field

from trl import RewardConfig

from ..models.configuration_rfm import FEATURE_NORMALIZATIONS, POPULATION_WEIGHTS
from ..models.pooling import POOLINGS


@dataclass
class RFMConfig(RewardConfig):
    r"""
    Configuration of the [`RFMRewardTrainer`]: TRL's [`~trl.RewardConfig`] plus the options of a Reward Feature Model.

    Parameters:
        > Parameters that control the model (used when the trainer builds the model from a causal LM)

        num_features (`int`, *optional*, defaults to `32`):
            Number `d` of reward features.
        feature_normalization (`str`, *optional*, defaults to `"layernorm"`):
            `"layernorm"` centres each feature vector and scales it to unit variance (the component shared by all
            features, which one direction of the weights could read as the consensus, is removed); `"rms"` only
            rescales to unit root-mean-square; `"none"` leaves them free (needed for `num_features <= 2`).
        population_weights (`str`, *optional*, defaults to `"hierarchical"`):
            `"hierarchical"`: `w_u = w_pop + delta_u`, the prior on the offsets `delta_u`, and `w_pop` learned through
            every user's comparisons (no loss of its own); `"learned"`: a separate vector with its own Bradley-Terry
            loss on every comparison; `"mean"`: the mean user row. The defaults (`layernorm`, `hierarchical`) are the
            ones that personalise on vote-derived Polis pairs without flags (docs/results.md, section 1.1).
        pooling (`str`, *optional*, defaults to `"auto"`):
            Hidden states read by the feature head: `"last"` (last attended token; causal LMs), `"cls"` (first token)
            or `"mean"` (mean over attended tokens) for encoders such as BERT/RoBERTa/DeBERTa; `"auto"`: `"mean"` for
            encoders, `"last"` otherwise. Tokenizers without an EOS token (BERT's adds `[CLS] ... [SEP]` itself) get no
            EOS appended.

        > Parameters that control the users

        user_column (`str`, *optional*):
            Dataset column with the rater id of each comparison. If `None`, the column `user_id` is used when present,
            and a dataset without it trains a plain (single-rater) reward model. If set, the column is required.
        unknown_users (`str`, *optional*, defaults to `"population"`):
            Evaluation rows whose user was not in the training data are scored with the population weights
            (`"population"`) or rejected (`"error"`).
        user_weights_init_std (`float`, *optional*):
            Standard deviation of the random initial rows of new training users (centred on the population weights).
            `None` means `1 / sqrt(num_features)`, which gives rewards of unit scale with RMS-normalised features.

        > Parameters that control the training

        user_weights_l2 (`float`, *optional*, defaults to `0.01`):
            Coefficient of the Gaussian prior on the user weights, `l2 * mean_u ||w_u - w_pop||^2`, added to the loss.
        population_loss_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the Bradley-Terry loss of the population weights on every comparison (with
            `population_weights="learned"` and at least one user).
        user_weights_learning_rate (`float`, *optional*):
            Learning rate of the user table and the population weights; `None` means `1e-2`, whatever
            `learning_rate` is. A user's row is updated only in the steps whose batch holds one of their comparisons,
            while the features are updated in every step: at the backbone's learning rate the rows lag behind the
            features they are read with (on synthetic raters this costs up to 10 points, see `docs/results.md`). A
            fixed rate: the rows weigh normalised features of a fixed scale, so their step size need not follow the
            backbone's; 10 x a 3e-3 backbone rate (3e-2) collapsed the features on Polis and 1e-2 did not
            (`docs/results.md` section 1.1), and 10 x a pretrained trunk's 5e-5 left the rows untrained (section 3).
        feature_head_learning_rate (`float`, *optional*):
            Learning rate of the feature head `Linear(H, d)`; `None` means `learning_rate`, at least `1e-3`. The
            floor is for pretrained trunks fine-tuned at 1e-5..1e-4: the head is new, and at such rates it barely
            trains, which left a fully fine-tuned MiniLM RFM 10 points below its own reward model after adaptation
            (`docs/results.md` section 3). Above the floor the head follows the trunk: 10 x `learning_rate` doubled
            the gain from adapting new Polis participants once, but lowered the demo's accuracy on its training
            raters (0.92 -> 0.84) and collapsed the features at 200 pairs per participant (section 1.1).
        user_prior (`str`, *optional*, defaults to `"empirical_bayes"`):
            The prior of new users' weights, stored in the model at the end of `train()` and returned by
            [`prior_from_model`]. `"empirical_bayes"`: `N(w_pop, covariance)` with the covariance fitted to the training
            users' comparisons on the final features ([`fit_user_prior`], pairs weighted by
            [`response_reuse_weights`]), so that a new user's few comparisons move them along the directions where
            users differ; `"rows"`: `N(w_pop, I / p)`, `p` read off the trained rows' spread.
        user_prior_shrinkage (`float`, *optional*, defaults to `0.5`):
            Weight of the isotropic target `tr(covariance) / d * I` in the fitted covariance.
        user_prior_max_pairs_per_user (`int`, *optional*, defaults to `64`):
            Comparisons of each training user (a seeded uniform draw) read by the end-of-training fit; its cost is one
            forward pass over their distinct responses plus a few seconds of batched Newton steps.
        refit_user_weights (`bool`, *optional*, defaults to `True`):
            With `user_prior="empirical_bayes"`, replace each training user's row by its fit on the final features
            under the fitted prior: rows trained by sparse SGD lag the features they are read with.
        feature_covariance_l2 (`float`, *optional*, defaults to `0.0`):
            Coefficient of `||Cov(phi) - I||_F^2 / d` over the responses of each batch: pushes the features towards
            decorrelated, unit-variance directions, which fixes their scale without a non-linear normalisation and
            keeps them from collapsing onto a few directions.
    """

    num_features: int = field(default=32, metadata={"help": "Number `d` of reward features."})
    feature_normalization: str = field(
        default="layernorm",
        metadata={
            "help": "`layernorm` centres and scales each feature vector (fixes the feature/weight scale ambiguity and "
            "removes the component shared by all features); `rms` only rescales; `none` leaves them free.",
            "choices": list(FEATURE_NORMALIZATIONS),
        },
    )
    population_weights: str = field(
        default="hierarchical",
        metadata={
            "help": "`hierarchical`: w_u = w_pop + delta_u, w_pop learned through every user's comparisons; `learned`: "
            "a vector with a loss of its own on every comparison; `mean`: the mean user row.",
            "choices": list(POPULATION_WEIGHTS),
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": "Hidden states read by the feature head: `last` token (causal LMs), `cls` or `mean` (encoders); "
            "`auto`: mean for encoders (BERT, RoBERTa, DeBERTa, ...), last otherwise.",
            "choices": list(POOLINGS),
        },
    )
    user_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column holding the rater id. If unset, `user_id` is used when present and a dataset "
            "without it trains a plain reward model; if set, the column is required."
        },
    )
    unknown_users: str = field(
        default="population",
        metadata={
            "help": "Evaluation rows of users unseen in training: score them with the population weights "
            "(`population`) or raise (`error`).",
            "choices": ["population", "error"],
        },
    )
    user_weights_init_std: float | None = field(
        default=None,
        metadata={"help": "Std of the random initial rows of new users; `None` means 1/sqrt(num_features)."},
    )
    user_weights_l2: float = field(
        default=0.01,
        metadata={"help": "Coefficient of the Gaussian prior `l2 * mean_u ||w_u - w_pop||^2` on the user weights."},
    )
    population_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the Bradley-Terry loss of the learned population weights on every comparison."},
    )
    user_weights_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the user table and population weights; `None` means 1e-2 whatever "
            "`learning_rate` is (rows are updated only when their user is in the batch)."
        },
    )
    feature_head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the feature head `Linear(H, d)`; `None` means `learning_rate`, at least 1e-3 "
            "(a new head under a pretrained trunk fine-tuned at 1e-5..1e-4 would barely train)."
        },
    )

    feature_covariance_l2: float = field(
        default=0.0,
        metadata={
            "help": "Coefficient of `||Cov(phi) - I||_F^2 / d` over each batch's responses (decorrelated, unit-variance "
            "features: fixes their scale linearly and prevents collapse)."
        },
    )

    user_prior: str = field(
        default="empirical_bayes",
        metadata={
            "help": "New users' prior, stored at the end of training: `empirical_bayes` fits its covariance to the "
            "training users' comparisons on the final features; `rows` reads an isotropic precision off the rows.",
            "choices": ["empirical_bayes", "rows"],
        },
    )
    user_prior_shrinkage: float = field(
        default=0.5,
        metadata={"help": "Weight in [0, 1) of the isotropic target in the fitted prior covariance."},
    )
    user_prior_max_pairs_per_user: int = field(
        default=64,
        metadata={"help": "Comparisons per training user (a seeded uniform draw) the end-of-training fit reads."},
    )
    refit_user_weights: bool = field(
        default=True,
        metadata={
            "help": "With `user_prior='empirical_bayes'`, replace each training user's row by its fit on the final "
            "features under the fitted prior (rows trained by sparse SGD lag the features)."
        },
    )

    def __post_init__(self):
        # Checked before TRL's own checks, so that a bad model option is reported whatever the machine.
        if not isinstance(self.num_features, int) or isinstance(self.num_features, bool) or self.num_features < 1:
            raise ValueError(f"`num_features` must be an integer >= 1, got {self.num_features!r}.")
        super().__post_init__()
        if self.feature_normalization not in FEATURE_NORMALIZATIONS:
            raise ValueError(f"`feature_normalization` must be one of {FEATURE_NORMALIZATIONS}.")
        if self.population_weights not in POPULATION_WEIGHTS:
            raise ValueError(f"`population_weights` must be one of {POPULATION_WEIGHTS}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}, got {self.pooling!r}.")
        if self.unknown_users not in ("population", "error"):
            raise ValueError(f"`unknown_users` must be 'population' or 'error', got {self.unknown_users!r}.")
        if self.feature_covariance_l2 < 0:
            raise ValueError(f"`feature_covariance_l2` must be >= 0, got {self.feature_covariance_l2}.")
        for name in ("user_weights_learning_rate", "feature_head_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0 or None, got {getattr(self, name)}.")
        if self.user_prior not in ("empirical_bayes", "rows"):
            raise ValueError(f"`user_prior` must be 'empirical_bayes' or 'rows', got {self.user_prior!r}.")
        if not 0 <= self.user_prior_shrinkage < 1:
            raise ValueError(f"`user_prior_shrinkage` must be in [0, 1), got {self.user_prior_shrinkage}.")
        if self.user_prior_max_pairs_per_user < 1:
            raise ValueError(
                f"`user_prior_max_pairs_per_user` must be >= 1, got {self.user_prior_max_pairs_per_user}."
            )
        if self.user_weights_l2 < 0:
            raise ValueError(f"`user_weights_l2` must be >= 0, got {self.user_weights_l2}.")
