"""
Few-shot adaptation: fitting the weights of new users on frozen reward features.

With `phi` frozen, a user's comparisons `(y > y')` become a logistic regression on the feature differences
`delta = phi(x, y) - phi(x, y')`:

    P(y > y' | x, u) = sigmoid(delta · w_u),      w_u ~ N(w_pop, I / l2)

Its MAP estimate is found by Newton's method, for all users at once on padded `[users, pairs, d]` tensors.
"""

import torch


def _objective(weights, feature_differences, targets, mask, prior_mean, l2):
    logits = torch.einsum("upd,ud->up", feature_differences, weights)  # [U, P]
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (nll * mask).sum(-1) + 0.5 * l2 * (weights - prior_mean).pow(2).sum(-1)  # [U]


@torch.no_grad()
def fit_user_weights(
    feature_differences: torch.Tensor,
    mask: torch.Tensor | None = None,
    prior_mean: torch.Tensor | None = None,
    l2: float = 1.0,
    targets: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
) -> torch.Tensor:
    r"""
    MAP user weights under a Gaussian prior centred on `prior_mean`, for many users at once.

    Args:
        feature_differences (`torch.Tensor` of shape `(users, pairs, d)`):
            `phi(x, chosen) - phi(x, rejected)` of each user's pairs, padded to a common number of pairs.
        mask (`torch.Tensor` of shape `(users, pairs)`, *optional*):
            1 for real pairs, 0 for padding. A user with no pairs gets `prior_mean`.
        prior_mean (`torch.Tensor` of shape `(d,)` or `(users, d)`, *optional*):
            Centre of the prior, normally the population weights; zeros if `None`.
        l2 (`float`): prior precision; larger keeps users closer to `prior_mean`. Must be > 0.
        targets (`torch.Tensor` of shape `(users, pairs)`, *optional*):
            Probability that the first response is preferred: 1 for a plain comparison (default), 0.5 for a tie.

    Returns:
        `torch.Tensor` of shape `(users, d)`: the fitted weights.
    """
    if feature_differences.ndim != 3:
        raise ValueError(f"`feature_differences` must be [users, pairs, d], got shape {tuple(feature_differences.shape)}.")
    if l2 <= 0:
        raise ValueError(f"`l2` must be > 0 (it keeps the problem well posed), got {l2}.")
    x = feature_differences.double()
    num_users, num_pairs, d = x.shape
    mask = torch.ones(num_users, num_pairs, dtype=x.dtype) if mask is None else mask.to(x.dtype)
    targets = torch.ones_like(mask) if targets is None else targets.to(x.dtype)
    prior = torch.zeros(d, dtype=x.dtype) if prior_mean is None else prior_mean.to(x.dtype)
    if prior.shape[-1] != d:
        raise ValueError(f"`prior_mean` has {prior.shape[-1]} features but the feature differences have {d}.")
    prior = prior.expand(num_users, d)
    if not torch.isfinite(x).all():
        raise ValueError("`feature_differences` contains NaN or infinite values.")

    weights = prior.clone()
    identity = torch.eye(d, dtype=x.dtype)
    loss = _objective(weights, x, targets, mask, prior, l2)
    for _ in range(max_iter):
        probabilities = torch.sigmoid(torch.einsum("upd,ud->up", x, weights))  # [U, P]
        gradient = torch.einsum("up,upd->ud", (probabilities - targets) * mask, x) + l2 * (weights - prior)
        curvature = probabilities * (1 - probabilities) * mask  # [U, P]
        hessian = torch.einsum("up,upd,upe->ude", curvature, x, x) + l2 * identity  # [U, d, d]
        step = torch.linalg.solve(hessian, gradient[..., None])[..., 0]  # [U, d]
        # Backtracking per user: halve the step where it does not lower that user's objective.
        scale = torch.ones(num_users, 1, dtype=x.dtype)
        for _ in range(20):
            candidate = weights - scale * step
            candidate_loss = _objective(candidate, x, targets, mask, prior, l2)
            worse = candidate_loss > loss + 1e-12
            if not worse.any():
                break
            scale = torch.where(worse[:, None], scale / 2, scale)
        improved = candidate_loss <= loss + 1e-12
        weights = torch.where(improved[:, None], candidate, weights)
        loss = torch.where(improved, candidate_loss, loss)
        if (scale * step).abs().max() < tol:
            break
    return weights.to(feature_differences.dtype)


@torch.no_grad()
def prior_from_model(model) -> tuple[torch.Tensor, float]:
    """
    The empirical-Bayes prior of a trained model: centred on its population weights, with precision `1 / s^2` where
    `s^2` is the mean squared deviation of the training users' weights from it (per coordinate). A new user is then
    shrunk exactly as much as training users differ from each other. With fewer than two users, precision 1.
    """
    table = model.user_weights().float()  # [U + 1, d], last row: population
    population, users = table[-1], table[:-1]
    if users.shape[0] < 2:
        return population.cpu(), 1.0
    spread = (users - population).pow(2).mean().item()
    return population.cpu(), 1.0 / max(spread, 1e-6)
