"""
The few-shot protocol (Barreto et al., 2025, Sec. 5): fit each held-out user's weights on `k` of their comparisons
(several random draws of the k pairs, the same draws for every method) and score accuracy on their test comparisons.

Everything works on grouped feature differences (`[users, pairs, d]` with a `[users, pairs]` mask, see
[`trl_rfm.group_by_user`]), so the backbone runs once per dataset and each point of the curve is a batched logistic
regression. Accuracy is averaged either **per rater** (`average="per_rater"`: every user weighs the same, however many
test pairs they have) or **pooled** over all test pairs (`average="pooled"`); the two agree when every user has the
same number of test pairs.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..adaptation.prior import select_l2
from ..adaptation.solver import fit_user_weights


AVERAGES = ("per_rater", "pooled")


def draw_adaptation_sets(
    pool_mask: torch.Tensor, shots: Sequence[int], num_draws: int, seed: int = 0
) -> dict[int, list[torch.Tensor]]:
    """
    For each k, `num_draws` masks `[users, pool]` selecting k random pairs of each user's pool (all of them if the
    user has fewer); one draw for k = 0. Every method is fitted on the same draws.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = {}
    for k in shots:
        masks = []
        for _ in range(num_draws if k > 0 else 1):
            scores = torch.rand(pool_mask.shape, generator=generator).masked_fill(pool_mask == 0, -1.0)
            ranks = scores.argsort(-1, descending=True).argsort(-1)
            masks.append(((ranks < k) & (pool_mask > 0)).float())
        draws[k] = masks
    return draws


def per_rater_accuracy(margins: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each user's fraction of pairs with a positive margin (ties count 1/2): `[users, pairs] -> [users]` (NaN for a
    user without pairs). Paired comparisons of two methods subtract these per user."""
    correct = ((margins > 0).float() + 0.5 * (margins == 0).float()) * mask
    counts = mask.sum(-1)
    return torch.where(counts > 0, correct.sum(-1) / counts.clamp_min(1), torch.nan)


def pairwise_accuracy(margins: torch.Tensor, mask: torch.Tensor, average: str = "per_rater") -> float:
    """
    Fraction of pairs with a positive margin (ties count 1/2), from `[users, pairs]` margins and mask: the mean over
    users of each user's fraction (`"per_rater"`, users without pairs left out), or over all pairs (`"pooled"`).
    """
    if average not in AVERAGES:
        raise ValueError(f"`average` must be one of {AVERAGES}, got {average!r}.")
    if average == "pooled":
        correct = ((margins > 0).float() + 0.5 * (margins == 0).float()) * mask
        return (correct.sum() / mask.sum()).item()
    return per_rater_accuracy(margins, mask).nanmean().item()


@torch.no_grad()
def accuracy_vs_k(
    adaptation_differences: torch.Tensor,
    adaptation_mask: torch.Tensor,
    test_differences: torch.Tensor,
    test_mask: torch.Tensor,
    prior_mean: torch.Tensor,
    l2: float,
    shots: Sequence[int] = (0, 5, 10, 20, 50, 100),
    num_draws: int = 5,
    seed: int = 0,
    average: str = "per_rater",
    draws: Mapping[int, list[torch.Tensor]] | None = None,
) -> dict[int, list[float]]:
    """
    Test accuracy of held-out users after fitting their weights (prior `N(prior_mean, I / l2)`) on `k` pairs of their
    adaptation pool, for every k of `shots`: `{k: [accuracy of each draw]}`; k = 0 is the prior mean itself.

    Args:
        adaptation_differences, adaptation_mask: the users' adaptation pools, `[users, pool, d]` and `[users, pool]`.
        test_differences, test_mask: their test pairs, same users in the same order.
        average: `"per_rater"` or `"pooled"` (see [`pairwise_accuracy`]).
        draws: the masks of the k adaptation pairs (from [`draw_adaptation_sets`]), to fit several methods on the
            same draws; drawn from `shots`, `num_draws` and `seed` when `None`.
    """
    if draws is None:
        draws = draw_adaptation_sets(adaptation_mask, shots, num_draws, seed)
    accuracy = {}
    for k, masks in draws.items():
        accuracy[k] = []
        for mask in masks:
            weights = fit_user_weights(adaptation_differences, mask, prior_mean, l2)
            margins = torch.einsum("upd,ud->up", test_differences, weights.to(test_differences.dtype))
            accuracy[k].append(pairwise_accuracy(margins, test_mask, average))
    return accuracy


def summarize_draws(per_draw: Sequence[float]) -> dict:
    """`{"mean", "std", "draws"}` of the accuracies of the draws of one k."""
    return {"mean": float(np.mean(per_draw)), "std": float(np.std(per_draw)), "draws": [float(a) for a in per_draw]}


@torch.no_grad()
def accuracy_vs_k_with_evidence_prior(
    calibration_differences: torch.Tensor,
    calibration_mask: torch.Tensor,
    adaptation_differences: torch.Tensor,
    adaptation_mask: torch.Tensor,
    test_differences: torch.Tensor,
    test_mask: torch.Tensor,
    prior_mean: torch.Tensor,
    **curve_kwargs,
) -> tuple[dict[int, list[float]], float]:
    """[`accuracy_vs_k`] with the prior precision chosen by the evidence of other users' pairs (`calibration_*`,
    e.g. training users' pairs that were not trained on; never the held-out answers): `(curve, l2)`."""
    l2 = select_l2(calibration_differences, calibration_mask, prior_mean).l2
    curve = accuracy_vs_k(
        adaptation_differences, adaptation_mask, test_differences, test_mask, prior_mean, l2, **curve_kwargs
    )
    return curve, l2
