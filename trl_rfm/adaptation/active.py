"""
Active adaptation: choosing which comparisons to ask a new user, so that a few answers pin down their weights.

The paper leaves this as future work. With the Laplace posterior `N(mu, Sigma)` of a user's weights
([`fit_user_posterior`]), asking a comparison with feature difference `x` adds `c x x^T` to the posterior precision,
where `c = p (1 - p)` is the Bernoulli variance of the answer (`p`: its posterior predictive probability). The
expected information the answer carries about `w` (D-optimal design, the Laplace approximation of the mutual
information) is

    gain(x) = 1/2 log(1 + c x^T Sigma x)

large for comparisons the user is uncertain about (`p` near 1/2) *and* that probe directions where `w` is still
uncertain (`x^T Sigma x` large). Several questions per round are chosen greedily: the precision update does not depend
on the answer, so after picking `x` the covariance is downdated (Sherman-Morrison) and the next pick avoids
redundant directions. Everything is batched over users.
"""

import math
from dataclasses import dataclass

import torch

from .solver import UserPosterior, fit_user_posterior


def expected_information_gain(posterior: UserPosterior, candidate_differences: torch.Tensor) -> torch.Tensor:
    """
    Expected information about each user's weights of asking each candidate comparison: `[users, candidates, d]
    -> [users, candidates]`, in nats.
    """
    x = candidate_differences.to(posterior.mean.dtype)
    _check_candidates(posterior, x)
    variance = torch.einsum("ucd,ude,uce->uc", x, posterior.covariance, x)  # x^T Sigma x
    return _gain(posterior.mean, x, variance)


def _gain(mean, x, variance):
    logits = torch.einsum("ucd,ud->uc", x, mean)
    probabilities = torch.sigmoid(logits / torch.sqrt(1 + math.pi / 8 * variance))  # posterior predictive (probit)
    return 0.5 * torch.log1p(probabilities * (1 - probabilities) * variance)


def _check_candidates(posterior, x):
    if x.ndim != 3 or x.shape[0] != posterior.mean.shape[0] or x.shape[-1] != posterior.mean.shape[-1]:
        raise ValueError(
            f"`candidate_differences` must be [users, candidates, d] = [{posterior.mean.shape[0]}, *, "
            f"{posterior.mean.shape[-1]}] to match the posterior, got {tuple(x.shape)}."
        )


@torch.no_grad()
def select_questions(
    posterior: UserPosterior,
    candidate_differences: torch.Tensor,
    num_questions: int = 1,
    available: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    The next `num_questions` comparisons to ask each user, chosen greedily by expected information gain.

    Args:
        posterior ([`UserPosterior`]): current posterior of the users (from [`fit_user_posterior`] on the answers so
            far; with no answers yet, the prior).
        candidate_differences (`torch.Tensor` of shape `(users, candidates, d)`): feature differences of the
            comparisons that could be asked (see [`compute_feature_differences`]).
        num_questions (`int`): questions to ask each user before their answers come back.
        available (`torch.BoolTensor` of shape `(users, candidates)`, *optional*): False for padding and for
            comparisons already asked.

    Returns:
        `torch.LongTensor` of shape `(users, num_questions)`: indices into the candidates, best first; `-1` where a
        user has run out of available candidates.
    """
    x = candidate_differences.to(posterior.mean.dtype)
    _check_candidates(posterior, x)
    num_users, num_candidates, _ = x.shape
    available = (
        torch.ones(num_users, num_candidates, dtype=torch.bool)
        if available is None
        else available.to(torch.bool).clone()
    )
    if available.shape != (num_users, num_candidates):
        raise ValueError(f"`available` must have shape {(num_users, num_candidates)}, got {tuple(available.shape)}.")
    if num_questions < 1:
        raise ValueError(f"`num_questions` must be >= 1, got {num_questions}.")
    covariance = posterior.covariance.clone()
    picks = torch.full((num_users, num_questions), -1, dtype=torch.long)
    users = torch.arange(num_users)
    for q in range(num_questions):
        sigma_x = torch.einsum("ude,uce->ucd", covariance, x)  # [U, C, d]
        variance = (x * sigma_x).sum(-1)
        gain = _gain(posterior.mean, x, variance).masked_fill(~available, -math.inf)
        best = gain.argmax(-1)  # ties: the lowest index, so the choice is deterministic
        has_candidate = available.any(-1)
        picks[has_candidate, q] = best[has_candidate]
        available[users, best] = False
        # Sherman-Morrison downdate with the answer's expected curvature: Sigma - c Sigma x x^T Sigma / (1 + c s).
        chosen_sigma_x, chosen_variance = sigma_x[users, best], variance[users, best]
        chosen_logits = (x[users, best] * posterior.mean).sum(-1)
        p = torch.sigmoid(chosen_logits / torch.sqrt(1 + math.pi / 8 * chosen_variance))
        curvature = (p * (1 - p) * has_candidate).to(covariance.dtype)
        covariance -= (curvature / (1 + curvature * chosen_variance))[:, None, None] * torch.einsum(
            "ud,ue->ude", chosen_sigma_x, chosen_sigma_x
        )
    return picks


@dataclass
class ActiveAdaptationTrace:
    """
    Outcome of [`simulate_adaptation`].

    Attributes:
        num_answers (`list[int]`): answers given after each round (0 first).
        weights (`torch.Tensor` of shape `(rounds + 1, users, d)`): the MAP weights after each round.
        asked (`torch.LongTensor` of shape `(users, total questions)`): candidate indices asked, in order.
    """

    num_answers: list[int]
    weights: torch.Tensor
    asked: torch.Tensor


@torch.no_grad()
def simulate_adaptation(
    candidate_differences: torch.Tensor,
    answers: torch.Tensor,
    prior_mean: torch.Tensor,
    l2: float,
    num_rounds: int,
    questions_per_round: int = 1,
    strategy: str = "information",
    candidate_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> ActiveAdaptationTrace:
    """
    Replays an adaptation session for many users at once: each round, choose `questions_per_round` comparisons per
    user (by information gain, or at random), reveal their answers, refit the posterior. Used to measure how many
    answers active selection saves (see `benchmarks/bench_adaptation.py`).

    Args:
        candidate_differences (`torch.Tensor` of shape `(users, candidates, d)`): the pool of askable comparisons.
        answers (`torch.Tensor` of shape `(users, candidates)`): the answer the user would give to each, as the
            probability that the first response is preferred (1 or 0; 0.5 for a tie).
        prior_mean, l2: the prior, as in [`fit_user_weights`].
        strategy (`str`): `"information"` (expected information gain) or `"random"`.
        candidate_mask (`torch.Tensor` of shape `(users, candidates)`, *optional*): 0 for padding.
    """
    if strategy not in ("information", "random"):
        raise ValueError(f"`strategy` must be 'information' or 'random', got {strategy!r}.")
    x = candidate_differences.double()
    num_users, num_candidates, _ = x.shape
    if answers.shape != (num_users, num_candidates):
        raise ValueError(f"`answers` must have shape {(num_users, num_candidates)}, got {tuple(answers.shape)}.")
    available = torch.ones(num_users, num_candidates, dtype=torch.bool)
    if candidate_mask is not None:
        available &= candidate_mask.to(torch.bool)
    asked_mask = torch.zeros(num_users, num_candidates, dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    posterior = fit_user_posterior(x, asked_mask, prior_mean, l2, answers)
    trace_weights, num_answers, asked = [posterior.mean.float()], [0], []
    for _ in range(num_rounds):
        if strategy == "information":
            picks = select_questions(posterior, x, questions_per_round, available)
        else:
            scores = torch.rand(num_users, num_candidates, generator=generator).masked_fill(~available, -1.0)
            picks = scores.topk(questions_per_round, dim=-1).indices
            picks[torch.gather(~available, 1, picks)] = -1
        valid = picks >= 0
        rows = torch.arange(num_users)[:, None].expand_as(picks)
        available[rows[valid], picks[valid]] = False
        asked_mask[rows[valid], picks[valid]] = 1.0
        asked.append(picks)
        posterior = fit_user_posterior(x, asked_mask, prior_mean, l2, answers)
        trace_weights.append(posterior.mean.float())
        num_answers.append(num_answers[-1] + questions_per_round)
    return ActiveAdaptationTrace(
        num_answers=num_answers,
        weights=torch.stack(trace_weights),
        asked=torch.cat(asked, dim=1) if asked else torch.zeros(num_users, 0, dtype=torch.long),
    )
