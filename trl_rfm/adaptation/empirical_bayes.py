"""
The users' prior learned from the users: `w_u ~ N(mean, covariance)` fitted to many users' comparisons on frozen
features by empirical Bayes (EM with the Laplace posterior of each user), for new users to be adapted with.

Why not read the prior off the trained rows: rows trained by sparse SGD lag the features they are read with, and MAP
rows are shrunk towards the population, so the rows' spread is a biased picture of how users differ. The EM below
treats each user's weights as unknown: the E-step fits every user's Laplace posterior `N(m_u, S_u)` under the current
prior (batched Newton, [`fit_user_posterior`]); the M-step sets

    mean       = mean_u m_u
    covariance = mean_u [(m_u - mean)(m_u - mean)^T + S_u]

which is the maximum of the Laplace marginal likelihood over the prior's mean and covariance. The covariance is shrunk
towards `tr(covariance) / d * I` (Ledoit-Wolf style) so that directions no training user moved along stay open a
little. With `k` comparisons a new user then spends them on the directions where users really differ.
"""

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .solver import UserPosterior, fit_user_posterior, validate_inputs


DEFAULT_SHRINKAGE = 0.1


@dataclass
class UserPrior:
    """
    A Gaussian prior `N(mean, covariance)` over users' weights.

    Attributes:
        mean (`torch.Tensor` of shape `(d,)`): where a user with no comparisons is (the population weights).
        covariance (`torch.Tensor` of shape `(d, d)`): how users spread around it.
    """

    mean: torch.Tensor
    covariance: torch.Tensor

    @property
    def precision(self) -> torch.Tensor:
        """`covariance^-1` `[d, d]`, what [`fit_user_weights`] takes as `l2`."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.covariance.double())).to(self.covariance.dtype)

    @property
    def isotropic_precision(self) -> float:
        """`d / tr(covariance)`: the precision of the isotropic prior with the same mean squared spread."""
        return self.covariance.shape[-1] / self.covariance.diagonal().sum().item()


def shrink_covariance(covariance: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """`(1 - shrinkage) * covariance + shrinkage * tr(covariance) / d * I`: same total variance, better conditioned."""
    d = covariance.shape[-1]
    target = covariance.diagonal().mean() * torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    return (1 - shrinkage) * covariance + shrinkage * target


def response_reuse_weights(
    user_ids: Sequence[Hashable], chosen: Sequence[Hashable], rejected: Sequence[Hashable]
) -> torch.Tensor:
    """
    A weight per pair that counts the evidence of each of a user's responses once: the mean of `1 / n` over its two
    responses, `n` the number of that user's pairs the response is in. Pairs whose responses are all distinct weigh 1;
    pairs derived from ratings (`a` liked x `b` disliked items of one user) weigh `(1/a + 1/b) / 2`, so that the
    user's `a * b` pairs count as `(a + b) / 2`. Treated as independent, such pairs make every user look `ab / (a + b)`
    times more certain than their `a + b` ratings warrant, and the fitted prior far too loose (on Polis an isotropic
    equivalent precision of 2-3 where the trained rows' spread and held-out users say 17).
    """
    counts = Counter((u, r) for u, c, j in zip(user_ids, chosen, rejected) for r in (c, j))
    return torch.tensor(
        [0.5 / counts[(u, c)] + 0.5 / counts[(u, j)] for u, c, j in zip(user_ids, chosen, rejected)],
        dtype=torch.float64,
    )


@torch.no_grad()
def fit_user_prior(
    feature_differences: torch.Tensor,
    mask: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    covariance: torch.Tensor | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
    fit_mean: bool = True,
    max_iter: int = 30,
    tol: float = 1e-3,
) -> tuple[UserPrior, UserPosterior]:
    """
    Fits the prior `N(mean, covariance)` of users' weights to their comparisons by empirical Bayes (module docstring).

    Args:
        feature_differences (`torch.Tensor` of shape `(users, pairs, d)`), mask (`(users, pairs)`, *optional*): the
            users' comparisons on frozen features, as in [`fit_user_weights`]; weigh pairs derived from ratings with
            [`response_reuse_weights`] in `mask`. Users without pairs are left out.
        mean (`torch.Tensor` of shape `(d,)`, *optional*), covariance (`(d, d)`, *optional*): the starting prior
            (e.g. the trained population weights and the rows' spread); zeros and the identity if `None`.
        shrinkage (`float`): weight in [0, 1) of the isotropic target in each M-step.
        fit_mean (`bool`): also fit the mean (else it stays at `mean`, e.g. population weights trained for unknown
            users, and only the covariance around it is fitted).
        max_iter (`int`): EM iterations at most.
        tol (`float`): stop when the mean and covariance change by less than `tol` relative to the covariance's scale.

    Returns:
        `(prior, posterior)`: the fitted [`UserPrior`] (float64) and every user's Laplace posterior under it (the MAP
        weights `posterior.mean` are the users' rows refitted on these features).
    """
    if not 0 <= shrinkage < 1:
        raise ValueError(f"`shrinkage` must be in [0, 1), got {shrinkage}.")
    x, mask, _, _, _ = validate_inputs(feature_differences, mask, mean, 1.0, None)
    x, mask = x.double(), mask.double()
    has_pairs = mask.sum(-1) > 0
    if has_pairs.sum() < 2:
        raise ValueError("Fitting the users' prior needs at least two users with comparisons.")
    x, mask = x[has_pairs], mask[has_pairs]
    d = x.shape[-1]
    mean = torch.zeros(d, dtype=torch.float64) if mean is None else torch.as_tensor(mean).double().cpu()
    if covariance is None:
        covariance = torch.eye(d, dtype=torch.float64)
    covariance = shrink_covariance(torch.as_tensor(covariance).double().cpu(), shrinkage)
    prior = UserPrior(mean=mean, covariance=covariance)
    for _ in range(max_iter):
        posterior = fit_user_posterior(x, mask, prior.mean, prior.precision)
        new_mean = posterior.mean.mean(0) if fit_mean else prior.mean  # [d]
        deviations = posterior.mean - new_mean  # [U, d]
        new_covariance = (deviations.T @ deviations + posterior.covariance.sum(0)) / deviations.shape[0]
        new_prior = UserPrior(mean=new_mean, covariance=shrink_covariance(new_covariance, shrinkage))
        scale = prior.covariance.diagonal().mean().sqrt()
        change = max(
            (new_prior.mean - prior.mean).abs().max() / scale,
            (new_prior.covariance - prior.covariance).abs().max() / scale**2,
        )
        prior = new_prior
        if change < tol:
            break
    posterior = fit_user_posterior(x, mask, prior.mean, prior.precision)
    # Users without pairs: the prior itself.
    full_mean = prior.mean.expand(has_pairs.shape[0], d).clone()
    full_mean[has_pairs] = posterior.mean
    full_covariance = prior.covariance.expand(has_pairs.shape[0], d, d).clone()
    full_covariance[has_pairs] = posterior.covariance
    full_evidence = torch.zeros(has_pairs.shape[0], dtype=torch.float64)
    full_evidence[has_pairs] = posterior.log_evidence
    return prior, UserPosterior(mean=full_mean, covariance=full_covariance, log_evidence=full_evidence)
