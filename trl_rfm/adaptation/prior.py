"""
The prior of a new user's weights, `w_u ~ N(prior_mean, P^-1)`: the empirical-Bayes prior of a trained model
([`prior_from_model`]) and the choice of an isotropic precision `P = l2 * I` from users' answers ([`select_l2`]).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .empirical_bayes import UserPrior
from .solver import fit_user_posterior, fit_user_weights, validate_inputs


@dataclass
class L2Selection:
    """
    Outcome of [`select_l2`].

    Attributes:
        l2 (`float`): the chosen prior precision.
        candidates (`list[float]`): the values tried, increasing.
        scores (`list[float]`): their criterion (total log evidence, or held-out log-likelihood per pair); higher is
            better.
        method (`str`): `"evidence"`, `"cross_validation"` or `"held_out"`.
    """

    l2: float
    candidates: list[float]
    scores: list[float]
    method: str


DEFAULT_L2_CANDIDATES = tuple(10.0 ** (k / 4) for k in range(-12, 13))  # 1e-3 ... 1e3, 4 per decade


@torch.no_grad()
def select_l2(
    feature_differences: torch.Tensor,
    mask: torch.Tensor | None = None,
    prior_mean: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    candidates: Sequence[float] | None = None,
    method: str = "evidence",
    num_folds: int = 5,
    seed: int = 0,
    held_out_differences: torch.Tensor | None = None,
    held_out_mask: torch.Tensor | None = None,
) -> L2Selection:
    """
    Chooses the prior precision `l2` from the answers of many users (typically the training users, on pairs the
    model was not trained on), so that new users are shrunk towards the population exactly as much as users differ.

    Args:
        feature_differences, mask, prior_mean, targets: as in [`fit_user_weights`].
        candidates (`Sequence[float]`, *optional*): values to try; defaults to 1e-3 ... 1e3, four per decade.
        method (`str`): `"evidence"` (default) maximises the Laplace marginal likelihood summed over users — the
            empirical-Bayes choice, which does not depend on how many pairs a new user will give; `"cross_validation"`
            maximises the log-likelihood of held-out pairs, each user's pairs split into `num_folds` folds;
            `"held_out"` fits on `feature_differences` and maximises the log-likelihood of the same users'
            `held_out_differences`. **Pairs derived from ratings or votes** (one rated item in many pairs) are not
            independent: the evidence counts them as if they were, and folds of pairs share items, so both favour a
            prior far too loose (on Polis they pick precisions 0.03-2 where 18-32 is best). For such data use
            `"held_out"` with the two sets formed from disjoint *items* of each user.
        num_folds (`int`): folds of `"cross_validation"`.
        seed (`int`): seed of the fold assignment.
        held_out_differences (`torch.Tensor` of shape `(users, pairs', d)`, *optional*): for `"held_out"`, the pairs
            the fits are scored on, users in the same order as `feature_differences`.
        held_out_mask (`torch.Tensor` of shape `(users, pairs')`, *optional*): their mask.
    """
    if method not in ("evidence", "cross_validation", "held_out"):
        raise ValueError(f"`method` must be 'evidence', 'cross_validation' or 'held_out', got {method!r}.")
    candidates = sorted(float(c) for c in (candidates or DEFAULT_L2_CANDIDATES))
    if not candidates or min(candidates) <= 0:
        raise ValueError("`candidates` must be a non-empty list of values > 0.")
    x, mask, targets, prior, _ = validate_inputs(feature_differences, mask, prior_mean, 1.0, targets)
    if mask.sum() == 0:
        raise ValueError("`select_l2` needs at least one pair to learn from.")
    scores = []
    if method == "evidence":
        x = x.double()
        for l2 in candidates:
            posterior = fit_user_posterior(x, mask, prior, l2, targets)
            scores.append(posterior.log_evidence.sum().item())
    elif method == "held_out":
        if held_out_differences is None:
            raise ValueError("`method='held_out'` needs `held_out_differences` (and usually `held_out_mask`).")
        held_out_users = torch.as_tensor(held_out_differences).shape[0]
        if held_out_users != x.shape[0]:
            raise ValueError(
                f"`held_out_differences` has {held_out_users} users but `feature_differences` has {x.shape[0]}: "
                "both must hold the same users in the same order."
            )
        check_x, check_mask, check_targets, _, _ = validate_inputs(
            held_out_differences, held_out_mask, prior, 1.0, None
        )
        if check_mask.sum() == 0:
            raise ValueError("`held_out_differences` holds no pair to score the fits on.")
        for l2 in candidates:
            weights = fit_user_weights(x, mask, prior, l2, targets)
            logits = torch.einsum("upd,ud->up", check_x, weights.to(check_x.dtype))
            nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, check_targets, reduction="none")
            scores.append(-(nll * check_mask).sum().item() / check_mask.sum().item())
    else:
        if num_folds < 2:
            raise ValueError(f"`num_folds` must be >= 2, got {num_folds}.")
        generator = torch.Generator().manual_seed(seed)
        ranks = torch.rand(mask.shape, generator=generator).argsort(-1).argsort(-1)
        folds = ranks % num_folds  # every user's pairs spread evenly over the folds
        for l2 in candidates:
            log_likelihood = 0.0
            for fold in range(num_folds):
                held_out = (folds == fold).to(mask.dtype) * mask
                weights = fit_user_weights(x, mask - held_out, prior, l2, targets)
                logits = torch.einsum("upd,ud->up", x, weights)
                nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
                log_likelihood -= (nll * held_out).sum().item()
            scores.append(log_likelihood / mask.sum().item())
    best = max(range(len(candidates)), key=lambda i: scores[i])
    return L2Selection(l2=candidates[best], candidates=candidates, scores=scores, method=method)


@torch.no_grad()
def prior_from_model(
    model, use_stored: bool = True, isotropic: bool = False
) -> tuple[torch.Tensor, float | torch.Tensor]:
    """
    The empirical-Bayes prior of a new user's weights in a trained model: `(mean, precision)`, centred on its
    population weights. Pass both to [`fit_user_weights`] (as `prior_mean` and `l2`).

    - A model trained by [`RFMRewardTrainer`] stores the prior fitted at the end of training
      (`config.user_prior_covariance`, [`fit_user_prior`]: the covariance of the training users' weights on the final
      features): `precision` is its inverse, a `[d, d]` tensor, so that a new user moves freely along the directions
      where users differ and is held along the others.
    - `isotropic=True`, or a model that stores only `config.user_prior_precision`: that number (`d / tr(covariance)`,
      the isotropic prior with the same total spread).
    - Otherwise (`use_stored=False`, or a model built by hand): `1 / s^2`, `s^2` the mean squared deviation per
      coordinate of the table's rows from the population; with fewer than two users, 1.

    The stored prior does not move when users are added later: rows added by [`adapt_users`] are MAP estimates shrunk
    towards the population, and reading them would tighten the prior with every call.
    """
    table = model.user_weights().float()  # [U + 1, d], last row: population; through forward (PEFT / ZeRO-3 safe)
    population = table[-1].cpu()
    if use_stored:
        covariance = getattr(model.config, "user_prior_covariance", None)
        if covariance is not None and not isotropic:
            stored_prior = UserPrior(mean=population, covariance=torch.tensor(covariance, dtype=torch.float64))
            return population, stored_prior.precision.float()
        stored = getattr(model.config, "user_prior_precision", None)
        if stored is not None:
            return population, float(stored)
    return population, precision_of_rows(table)


def isotropic_equivalent(precision: float | torch.Tensor) -> float:
    """The number `l2` whose isotropic prior `I / l2` has the total variance of the prior with precision `precision`
    (a number, returned as it is, or a `[d, d]` matrix: `d / tr(precision^-1)`); for reports and JSON."""
    if not isinstance(precision, torch.Tensor) or precision.ndim == 0:
        return float(precision)
    return precision.shape[-1] / torch.linalg.inv(precision.double()).diagonal().sum().item()


def precision_of_rows(table: torch.Tensor) -> float:
    """`1 / s^2`, `s^2` the mean squared deviation per coordinate of the user rows of `table` `[U + 1, d]` from its
    last row (the population); 1 with fewer than two users."""
    population, users = table[-1], table[:-1]
    if users.shape[0] < 2:
        return 1.0
    spread = (users - population).pow(2).mean().item()
    return 1.0 / max(spread, 1e-6)
