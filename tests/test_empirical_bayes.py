"""The users' prior learned by empirical Bayes: planted priors are recovered, and new users adapted with the learned
shape beat the isotropic prior of the same total spread."""

import pytest
import torch

from trl_rfm import fit_user_prior, fit_user_weights
from trl_rfm.adaptation.empirical_bayes import shrink_covariance


def _planted_users(num_users, num_pairs, seed=0):
    """Users `w_u ~ N(mean, covariance)` that differ along two of eight directions only (the same prior whatever
    `seed`, which draws the users and their noisy comparisons)."""
    generator = torch.Generator().manual_seed(1234)
    d = 8
    mean = torch.zeros(d, dtype=torch.float64)
    mean[0] = 2.0
    basis = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))[0]
    spread = torch.tensor([4.0, 2.0] + [0.01] * (d - 2), dtype=torch.float64)
    covariance = basis @ torch.diag(spread) @ basis.T
    generator = torch.Generator().manual_seed(seed)
    weights = mean + torch.randn(num_users, d, generator=generator, dtype=torch.float64) @ (basis * spread.sqrt()).T
    x = torch.randn(num_users, num_pairs, d, generator=generator, dtype=torch.float64)
    first = torch.rand(num_users, num_pairs, generator=generator, dtype=torch.float64) < torch.sigmoid(
        torch.einsum("upd,ud->up", x, weights)
    )
    return x * (2 * first.double() - 1)[..., None], weights, mean, covariance


def test_recovers_a_planted_prior():
    x, _, mean, covariance = _planted_users(num_users=400, num_pairs=40)
    prior, posterior = fit_user_prior(x, shrinkage=0.0)
    assert (prior.mean - mean).norm() < 0.25
    # The two directions users move along carry the spread, the others almost none.
    top = torch.linalg.eigh(covariance)[1][:, -2:]
    captured = (top.T @ prior.covariance @ top).trace() / prior.covariance.trace()
    assert captured > 0.9
    assert prior.covariance.trace() == pytest.approx(covariance.trace().item(), rel=0.25)
    assert posterior.mean.shape == (400, 8)


def test_new_users_learn_faster_with_the_learned_shape():
    x, _, _, _ = _planted_users(num_users=300, num_pairs=40, seed=0)
    prior, _ = fit_user_prior(x)
    new_x, _, _, _ = _planted_users(num_users=300, num_pairs=60, seed=1)
    adapt, check = new_x[:, :5], new_x[:, 5:]

    def accuracy(precision):
        weights = fit_user_weights(adapt, prior_mean=prior.mean, l2=precision)
        return (torch.einsum("upd,ud->up", check, weights) > 0).double().mean().item()

    shaped, isotropic = accuracy(prior.precision), accuracy(prior.isotropic_precision)
    assert shaped > isotropic + 0.02, (shaped, isotropic)


def test_users_without_pairs_get_the_prior_and_bad_input_is_named():
    x, _, _, _ = _planted_users(num_users=50, num_pairs=20)
    mask = torch.ones(50, 20, dtype=torch.float64)
    mask[3] = 0
    prior, posterior = fit_user_prior(x, mask)
    torch.testing.assert_close(posterior.mean[3], prior.mean)
    with pytest.raises(ValueError, match="at least two users"):
        fit_user_prior(x[:1])
    with pytest.raises(ValueError, match="shrinkage"):
        fit_user_prior(x, shrinkage=1.0)


def test_shrinkage_keeps_the_total_spread():
    covariance = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    shrunk = shrink_covariance(covariance, 0.5)
    assert shrunk.trace() == pytest.approx(4.0)
    assert torch.linalg.eigvalsh(shrunk).min() > 0
