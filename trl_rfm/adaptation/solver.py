"""
Few-shot adaptation: fitting the weights of new users on frozen reward features.

With `phi` frozen, a user's comparisons `(y > y')` become a logistic regression on the feature differences
`delta = phi(x, y) - phi(x, y')`:

    P(y > y' | x, u) = sigmoid(delta · w_u),      w_u ~ N(w_pop, P^-1),   P = l2 * I or a full precision matrix

Its MAP estimate is found by Newton's method, for all users at once on padded `[users, pairs, d]` tensors; the
Hessian at the MAP gives the Laplace posterior `N(w_map, H^-1)` and the Laplace estimate of the marginal likelihood
(evidence), with which [`trl_rfm.adaptation.prior.select_l2`] chooses `l2` from data.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class UserPosterior:
    """
    Laplace approximation `N(mean, covariance)` of the posterior over each user's weights.

    Attributes:
        mean (`torch.Tensor` of shape `(users, d)`): the MAP weights (what [`fit_user_weights`] returns).
        covariance (`torch.Tensor` of shape `(users, d, d)`): inverse Hessian of the negative log posterior at `mean`.
        log_evidence (`torch.Tensor` of shape `(users,)`): Laplace estimate of `log p(answers | l2)` per user (0 for a
            user without pairs); summed over users, it is the criterion [`select_l2`] maximises.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    log_evidence: torch.Tensor

    def predict_proba(self, feature_differences: torch.Tensor) -> torch.Tensor:
        """
        Posterior predictive `P(first response preferred)` of each pair `[users, pairs, d] -> [users, pairs]`,
        integrating over the weights (probit approximation, MacKay 1992): uncertain users get probabilities closer
        to 1/2 than their MAP weights alone would give.
        """
        x = feature_differences.to(self.mean.dtype)
        logits = torch.einsum("upd,ud->up", x, self.mean)
        variance = torch.einsum("upd,ude,upe->up", x, self.covariance, x)
        return torch.sigmoid(logits / torch.sqrt(1 + math.pi / 8 * variance))


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def as_tensor(value, name: str) -> torch.Tensor:
    """`value` (a tensor, a numpy array or nested lists of numbers) as a tensor; anything else is a `TypeError` naming
    the argument."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, (int, float)) else value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"`{name}` must be a tensor or an array-like of numbers, got {type(value).__name__} ({error})."
        ) from None
    return tensor


def _per_pair(value, name, num_users, num_pairs, dtype, device) -> torch.Tensor:
    """A `[users, pairs]` tensor of `value` (ones when `None`), checked for shape."""
    if value is None:
        return torch.ones(num_users, num_pairs, dtype=dtype, device=device)
    value = as_tensor(value, name).to(device=device, dtype=dtype)
    if value.shape != (num_users, num_pairs):
        raise ValueError(
            f"`{name}` must have shape {(num_users, num_pairs)} = (users, pairs), got {tuple(value.shape)}."
        )
    return value


def validate_inputs(feature_differences, mask, prior_mean, l2, targets):
    """Checks shapes and values, and returns float tensors in the compute dtype: float64 stays float64, anything
    else is computed in float32 (fast enough for 10^4 users on a laptop, and the solve is well conditioned)."""
    feature_differences = as_tensor(feature_differences, "feature_differences")
    if not (feature_differences.is_floating_point() or feature_differences.dtype in _INTEGER_DTYPES):
        raise TypeError(f"`feature_differences` must hold real numbers, got dtype {feature_differences.dtype}.")
    if feature_differences.ndim != 3:
        raise ValueError(
            "`feature_differences` must be [users, pairs, d] (use `.unsqueeze(0)` for a single user), got shape "
            f"{tuple(feature_differences.shape)}."
        )
    dtype = torch.float64 if feature_differences.dtype == torch.float64 else torch.float32
    x = feature_differences.to(dtype)
    num_users, num_pairs, d = x.shape
    if d == 0:
        raise ValueError("`feature_differences` has 0 features (d = 0).")
    if not torch.isfinite(x).all():
        raise ValueError("`feature_differences` contains NaN or infinite values.")

    mask = _per_pair(mask, "mask", num_users, num_pairs, dtype, x.device)
    if (mask < 0).any() or not torch.isfinite(mask).all():
        raise ValueError("`mask` must be finite and >= 0 (1 for a real pair, 0 for padding).")
    targets = _per_pair(targets, "targets", num_users, num_pairs, dtype, x.device)
    if not ((targets >= 0) & (targets <= 1)).all():
        raise ValueError("`targets` must be probabilities in [0, 1] (1: first preferred, 0.5: tie).")

    if prior_mean is None:
        prior = torch.zeros(num_users, d, dtype=dtype, device=x.device)
    else:
        prior = as_tensor(prior_mean, "prior_mean").to(device=x.device, dtype=dtype)
        if prior.shape[-1] != d:
            raise ValueError(
                f"`prior_mean` has {prior.shape[-1]} features but the feature differences have d = {d}: were they "
                "computed with another model?"
            )
        if prior.ndim not in (1, 2) or (prior.ndim == 2 and prior.shape[0] not in (1, num_users)):
            raise ValueError(f"`prior_mean` must be [d] or [users, d], got shape {tuple(prior.shape)}.")
        if not torch.isfinite(prior).all():
            raise ValueError("`prior_mean` contains NaN or infinite values.")
        prior = prior.expand(num_users, d).contiguous()

    return x, mask, targets, prior, _validate_precision(l2, num_users, d, dtype, x.device)


def _validate_precision(l2, num_users: int, d: int, dtype, device) -> torch.Tensor:
    """The prior precision as `[users]` (isotropic, `l2 * I`) or `[users, d, d]` (a full precision matrix)."""
    l2 = as_tensor(l2, "l2").to(device=device, dtype=dtype)
    if l2.ndim <= 1:
        if l2.ndim == 1 and l2.shape[0] != num_users:
            raise ValueError(
                f"`l2` must be a number, a [users] tensor or a [d, d] / [users, d, d] precision matrix, got shape "
                f"{tuple(l2.shape)}."
            )
        if not (torch.isfinite(l2).all() and (l2 > 0).all()):
            raise ValueError(f"`l2` must be finite and > 0 (it keeps the problem well posed), got {l2.tolist()}.")
        return l2.expand(num_users).contiguous()
    if l2.shape[-2:] != (d, d) or l2.ndim > 3 or (l2.ndim == 3 and l2.shape[0] not in (1, num_users)):
        raise ValueError(
            f"A precision matrix `l2` must be [d, d] or [users, d, d] with d = {d}, got shape {tuple(l2.shape)}."
        )
    if not torch.isfinite(l2).all():
        raise ValueError("The precision matrix `l2` contains NaN or infinite values.")
    if not torch.allclose(l2, l2.mT, rtol=1e-5, atol=1e-6 * l2.abs().max().item()):
        raise ValueError("The precision matrix `l2` must be symmetric.")
    if (torch.linalg.cholesky_ex(l2)[1] > 0).any():
        raise ValueError("The precision matrix `l2` must be positive definite (it keeps the problem well posed).")
    return l2.expand(num_users, d, d)  # a view: one shared matrix is not copied per user


def _prior_times(l2, vectors):
    """`P v` for each user's prior precision `P` (`[users]` isotropic or `[users, d, d]`) and vector `v` `[users, d]`."""
    if l2.ndim == 1:
        return l2[:, None] * vectors
    return torch.einsum("ude,ue->ud", l2, vectors)


def _prior_log_det(l2, d: int):
    """`log det P` of each user's prior precision. [users]"""
    if l2.ndim == 1:
        return d * l2.log()
    return torch.linalg.slogdet(l2)[1]


def _objective(weights, x, targets, mask, prior, l2, logits=None):
    if logits is None:
        logits = torch.einsum("upd,ud->up", x, weights)  # [U, P]
    # softplus(z) - t z is the binary cross-entropy of logit z against target t, stable for any z.
    nll = torch.nn.functional.softplus(logits) - targets * logits
    offsets = weights - prior
    return (nll * mask).sum(-1) + 0.5 * (offsets * _prior_times(l2, offsets)).sum(-1)  # [U]


def _hessian(logits, x, mask, l2):
    probabilities = torch.sigmoid(logits)
    # The square root of the curvature folded into x: X^T diag(c) X as one symmetric batched product.
    scaled = x * (probabilities * (1 - probabilities) * mask).sqrt()[..., None]  # [U, P, d]
    hessian = torch.bmm(scaled.transpose(1, 2), scaled)
    if l2.ndim == 1:
        hessian.diagonal(dim1=-2, dim2=-1).add_(l2[:, None])
    else:
        hessian = hessian + l2
    return hessian, probabilities


def _cholesky(hessian):
    """Cholesky factors of the (positive definite) Hessians; where rounding makes one fail, add jitter and retry."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    jitter = 1e-6 * hessian.diagonal(dim1=-2, dim2=-1).mean(-1)
    while (info > 0).any():
        failed = info > 0
        hessian = hessian.clone()
        hessian[failed] += jitter[failed, None, None] * torch.eye(hessian.shape[-1], dtype=hessian.dtype)
        factor[failed], info[failed] = torch.linalg.cholesky_ex(hessian[failed])
        jitter = jitter * 10
    return factor


def _newton(x, mask, targets, prior, l2, max_iter, tol):
    """
    Damped Newton on every user at once. Users leave the batch once their Newton decrement is below `tol` (after
    taking that last, tiny step), so a few slow users do not make everybody pay for extra iterations; the batch is
    only compacted when it has halved, since copying `[users, pairs, d]` costs as much as an iteration's products.
    """
    weights = prior.clone()
    loss = _objective(weights, x, targets, mask, prior, l2)
    # Objective changes below rounding are no evidence of a bad step.
    slack = 8 * torch.finfo(x.dtype).eps
    rows = torch.arange(x.shape[0], device=x.device)  # users of the compacted batch
    xa, ma, ta, pa, la = x, mask, targets, prior, l2
    for _ in range(max_iter):
        wa, loss_a = weights[rows], loss[rows]
        logits = torch.einsum("upd,ud->up", xa, wa)
        hessian, probabilities = _hessian(logits, xa, ma, la)
        gradient = torch.einsum("up,upd->ud", (probabilities - ta) * ma, xa) + _prior_times(la, wa - pa)
        factor = _cholesky(hessian)
        # Two triangular solves: 2-3x faster than `cholesky_solve` on CPU for many small systems.
        half = torch.linalg.solve_triangular(factor, gradient[..., None], upper=False)
        step = torch.linalg.solve_triangular(factor.mT, half, upper=True)[..., 0]  # [A, d]
        decrement = (gradient * step).sum(-1)  # squared Newton decrement: twice the predicted decrease
        logits_step = torch.einsum("upd,ud->up", xa, step)
        candidate, candidate_loss = wa - step, _objective(wa - step, xa, ta, ma, pa, la, logits - logits_step)
        # Backtracking, only for the users whose full step raised their objective. Regularised logistic regression
        # is self-concordant, so full steps are accepted almost always.
        worse = candidate_loss > loss_a * (1 + slack) + slack
        scale = 1.0
        for _ in range(30):
            if not worse.any():
                break
            scale /= 2
            retry = worse.nonzero()[:, 0]
            retry_weights = wa[retry] - scale * step[retry]
            retry_logits = logits[retry] - scale * logits_step[retry]
            candidate[retry] = retry_weights
            candidate_loss[retry] = _objective(
                retry_weights, xa[retry], ta[retry], ma[retry], pa[retry], la[retry], retry_logits
            )
            worse[retry] = candidate_loss[retry] > loss_a[retry] * (1 + slack) + slack
        accepted = ~worse
        weights[rows[accepted]] = candidate[accepted]
        loss[rows[accepted]] = candidate_loss[accepted]
        # Done: converged (the step just taken was already negligible), or no descent left at this precision.
        still = (decrement >= 2 * tol) & accepted
        if not still.any():
            break
        if still.sum() * 2 <= still.numel():
            keep = still.nonzero()[:, 0]
            rows, xa, ma, ta, pa, la = rows[keep], xa[keep], ma[keep], ta[keep], pa[keep], la[keep]
    return weights, loss


def _prepare_and_fit(feature_differences, mask, prior_mean, l2, targets, max_iter, tol):
    x, mask, targets, prior, l2 = validate_inputs(feature_differences, mask, prior_mean, l2, targets)
    weights, loss = _newton(x, mask, targets, prior, l2, max_iter, tol)
    return weights, loss, (x, mask, targets, prior, l2)


@torch.no_grad()
def fit_user_weights(
    feature_differences: torch.Tensor,
    mask: torch.Tensor | None = None,
    prior_mean: torch.Tensor | None = None,
    l2: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> torch.Tensor:
    r"""
    MAP user weights under a Gaussian prior centred on `prior_mean`, for many users at once.

    Minimises, for every user `u` independently,
    `sum_p mask[u,p] * BCE(delta[u,p] · w, targets[u,p]) + 1/2 (w - prior_mean[u])^T P_u (w - prior_mean[u])`,
    `P_u = l2[u] * I` or the precision matrix given.
    The problem is strictly convex for `l2 > 0`, so the answer is unique and finite whatever the data: all pairs one
    way, only ties, duplicates, zero feature differences, or no pairs at all (which gives `prior_mean`).

    Args:
        feature_differences (`torch.Tensor` of shape `(users, pairs, d)`):
            `phi(x, chosen) - phi(x, rejected)` of each user's pairs, padded to a common number of pairs (see
            [`group_by_user`]).
        mask (`torch.Tensor` of shape `(users, pairs)`, *optional*):
            1 for real pairs, 0 for padding (non-negative weights in general). A user with no pairs gets `prior_mean`.
        prior_mean (`torch.Tensor` of shape `(d,)` or `(users, d)`, *optional*):
            Centre of the prior, normally the population weights; zeros if `None`.
        l2 (`float`, `torch.Tensor` of shape `(users,)`, `(d, d)` or `(users, d, d)`):
            Prior precision: a number (`l2 * I`), one per user, or a full precision matrix (symmetric positive
            definite; shared or one per user), for a prior that lets users move freely along the directions where
            users differ and holds them along the others. Larger keeps users closer to `prior_mean`.
            [`prior_from_model`] gives the empirical-Bayes prior of a trained model; [`select_l2`] chooses a number
            from users' answers.
        targets (`torch.Tensor` of shape `(users, pairs)`, *optional*):
            Probability that the first response is preferred: 1 for a plain comparison (default), 0.5 for a tie.
        max_iter (`int`): Newton iterations at most.
        tol (`float`): stop a user once half its squared Newton decrement (the predicted decrease of its objective)
            is below `tol`.

    Returns:
        `torch.Tensor` of shape `(users, d)` and the dtype of `feature_differences`: the fitted weights.
    """
    feature_differences = as_tensor(feature_differences, "feature_differences")
    weights, _, _ = _prepare_and_fit(feature_differences, mask, prior_mean, l2, targets, max_iter, tol)
    return weights.to(feature_differences.dtype if feature_differences.is_floating_point() else weights.dtype)


@torch.no_grad()
def fit_user_posterior(
    feature_differences: torch.Tensor,
    mask: torch.Tensor | None = None,
    prior_mean: torch.Tensor | None = None,
    l2: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> UserPosterior:
    """
    [`fit_user_weights`] plus the Laplace posterior of every user: covariance `H^-1` (the inverse Hessian of the
    negative log posterior at the MAP) and the Laplace log evidence
    `-objective(w_map) + 1/2 log det P - 1/2 log det H` (`P = l2 * I` or the precision matrix). Same arguments as [`fit_user_weights`]; computed in float64
    (covariances and log-determinants need the precision). The uncertainty drives active question selection
    (`trl_rfm.adaptation.active`) and the evidence drives [`select_l2`].
    """
    feature_differences = as_tensor(feature_differences, "feature_differences")
    if feature_differences.is_floating_point():
        feature_differences = feature_differences.double()
    weights, loss, (x, mask, _, _, l2) = _prepare_and_fit(
        feature_differences, mask, prior_mean, l2, targets, max_iter, tol
    )
    hessian, _ = _hessian(torch.einsum("upd,ud->up", x, weights), x, mask, l2)
    factor = _cholesky(hessian)
    covariance = torch.cholesky_inverse(factor)
    log_det = 2 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = x.shape[-1]
    log_evidence = -loss + 0.5 * _prior_log_det(l2, d) - 0.5 * log_det
    return UserPosterior(mean=weights, covariance=covariance, log_evidence=log_evidence)
