import math

import pytest
import torch

from trl_rfm import (
    RewardFeatureModel,
    adapt_users,
    fit_user_posterior,
    fit_user_weights,
    group_by_user,
    prior_from_model,
    select_l2,
)


def _synthetic_users(num_users, num_pairs, d, scale=3.0, seed=0, noisy=False):
    """Users with known weights `w`; pairs oriented so that the first response is the one they prefer."""
    generator = torch.Generator().manual_seed(seed)
    true_weights = torch.randn(num_users, d, generator=generator) * scale / math.sqrt(d)
    x = torch.randn(num_users, num_pairs, d, generator=generator, dtype=torch.float64)
    logits = torch.einsum("upd,ud->up", x, true_weights.double())
    if noisy:
        first_preferred = torch.rand(logits.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(logits)
    else:
        first_preferred = logits > 0
    return x * (2 * first_preferred.double() - 1)[..., None], true_weights


def test_recovers_true_direction():
    x, true_weights = _synthetic_users(num_users=32, num_pairs=64, d=16)
    weights = fit_user_weights(x, l2=1.0)
    cosine = torch.nn.functional.cosine_similarity(weights.float(), true_weights, dim=-1)
    assert cosine.min() > 0.8
    assert cosine.mean() > 0.9


def test_batched_equals_per_user_with_padding():
    x, _ = _synthetic_users(num_users=6, num_pairs=20, d=8, noisy=True)
    counts = [20, 3, 0, 11, 1, 7]
    mask = torch.zeros(6, 20, dtype=torch.float64)
    for u, n in enumerate(counts):
        mask[u, :n] = 1
    prior = torch.linspace(-1, 1, 8, dtype=torch.float64)
    batched = fit_user_weights(x, mask, prior, l2=0.5)
    for u, n in enumerate(counts):
        alone = fit_user_weights(x[u : u + 1, :n], prior_mean=prior, l2=0.5)[0]
        torch.testing.assert_close(batched[u], alone, atol=1e-8, rtol=0)
    # float32 inputs take the float32 path and agree to float32 precision.
    torch.testing.assert_close(
        fit_user_weights(x.float(), mask.float(), prior.float(), 0.5), batched.float(), atol=1e-4, rtol=0
    )


def test_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, _ = _synthetic_users(num_users=3, num_pairs=40, d=6, noisy=True)
    weights = fit_user_weights(x, l2=2.0)
    for u in range(3):
        # sklearn needs two classes: flip every other pair, with label 0.
        signs = torch.ones(40, dtype=torch.float64)
        signs[::2] = -1
        features, labels = (x[u] * signs[:, None]).numpy(), (signs > 0).long().numpy()
        reference = sklearn.LogisticRegression(C=1 / 2.0, fit_intercept=False, tol=1e-10, max_iter=1000)
        reference.fit(features, labels)
        torch.testing.assert_close(weights[u], torch.from_numpy(reference.coef_[0]), atol=1e-5, rtol=0)


def test_no_pairs_returns_prior_mean():
    prior = torch.randn(8)
    weights = fit_user_weights(torch.zeros(3, 0, 8), prior_mean=prior, l2=1.0)
    torch.testing.assert_close(weights, prior.expand(3, 8))
    x, _ = _synthetic_users(num_users=2, num_pairs=5, d=8)
    masked = fit_user_weights(x.float(), mask=torch.zeros(2, 5), prior_mean=prior)
    torch.testing.assert_close(masked, prior.expand(2, 8))


def test_degenerate_data_stays_finite():
    d = 4
    one_way = torch.ones(1, 30, d)  # the same pair, always answered the same way: separable, MAP finite by the prior
    ties = torch.randn(1, 30, d)
    zeros = torch.zeros(1, 30, d)  # identical responses
    for x, targets in ((one_way, None), (ties, torch.full((1, 30), 0.5)), (zeros, None)):
        for l2 in (1e-6, 1.0):
            weights = fit_user_weights(x, l2=l2, targets=targets)
            assert torch.isfinite(weights).all()
    # Ties only: no evidence either way, the prior mean (here 0) is the answer.
    torch.testing.assert_close(
        fit_user_weights(ties, targets=torch.full((1, 30), 0.5)), torch.zeros(1, d), atol=1e-5, rtol=0
    )
    # Duplicates count as repeated evidence: 10 copies of a pair act like a 10x weight.
    x = torch.randn(1, 3, d, dtype=torch.float64)
    duplicated = fit_user_weights(x.repeat(1, 10, 1))
    weighted = fit_user_weights(x, mask=torch.full((1, 3), 10.0, dtype=torch.float64))
    torch.testing.assert_close(duplicated, weighted)
    posterior = fit_user_posterior(one_way, l2=1e-6)
    assert torch.isfinite(posterior.covariance).all() and torch.isfinite(posterior.log_evidence).all()


def test_clear_errors():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="prior_mean` has 4 features but the feature differences have d = 8"):
        fit_user_weights(x, prior_mean=torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[users, pairs, d\]"):
        fit_user_weights(torch.randn(5, 8))
    with pytest.raises(ValueError, match="`mask` must have shape"):
        fit_user_weights(x, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="`targets` must be probabilities"):
        fit_user_weights(x, targets=torch.full((2, 5), 2.0))
    with pytest.raises(ValueError, match="`l2` must be finite and > 0"):
        fit_user_weights(x, l2=0.0)
    with pytest.raises(ValueError, match="NaN"):
        fit_user_weights(torch.full((1, 2, 3), float("nan")))
    with pytest.raises(ValueError, match="empty string"):
        group_by_user(torch.randn(2, 8), ["alice", ""])
    with pytest.raises(ValueError, match="None or NaN"):
        group_by_user(torch.randn(2, 8), ["alice", None])


def test_posterior_shrinks_with_more_pairs_and_predicts_calibrated():
    x, _ = _synthetic_users(num_users=4, num_pairs=200, d=8, noisy=True)
    few = fit_user_posterior(x[:, :5])
    many = fit_user_posterior(x)
    assert (
        many.covariance.diagonal(dim1=-2, dim2=-1).sum(-1) < few.covariance.diagonal(dim1=-2, dim2=-1).sum(-1)
    ).all()
    torch.testing.assert_close(many.mean, fit_user_weights(x))
    # The predictive probability integrates over the uncertainty: never more confident than the MAP weights alone.
    map_probability = torch.sigmoid(torch.einsum("upd,ud->up", x, few.mean))
    assert ((few.predict_proba(x) - 0.5).abs() <= (map_probability - 0.5).abs() + 1e-12).all()


@pytest.mark.parametrize("method", ["evidence", "cross_validation"])
def test_select_l2_finds_the_true_prior_precision(method):
    # Users drawn from N(0, I / 4): the right precision is 4, far from the default 1 and from the grid ends.
    generator = torch.Generator().manual_seed(0)
    true_weights = torch.randn(300, 8, generator=generator, dtype=torch.float64) * 0.5
    x = torch.randn(300, 20, 8, generator=generator, dtype=torch.float64)
    p = torch.sigmoid(torch.einsum("upd,ud->up", x, true_weights))
    targets = (torch.rand(p.shape, generator=generator, dtype=torch.float64) < p).double()
    candidates = [2.0**k for k in range(-4, 7)]
    selection = select_l2(x, targets=targets, candidates=candidates, method=method, num_folds=3)
    assert selection.method == method and len(selection.scores) == len(selection.candidates)
    assert 1.0 < selection.l2 < 16.0


def test_select_l2_held_out_finds_the_true_prior_precision_and_checks_its_input():
    generator = torch.Generator().manual_seed(0)
    true_weights = torch.randn(300, 8, generator=generator, dtype=torch.float64) * 0.5  # precision 4

    def answers(num_pairs):
        x = torch.randn(300, num_pairs, 8, generator=generator, dtype=torch.float64)
        p = torch.sigmoid(torch.einsum("upd,ud->up", x, true_weights))
        preferred = torch.rand(p.shape, generator=generator, dtype=torch.float64) < p
        return torch.where(preferred[..., None], x, -x)  # chosen - rejected

    fit, check = answers(20), answers(20)
    candidates = [2.0**k for k in range(-4, 7)]
    selection = select_l2(fit, candidates=candidates, method="held_out", held_out_differences=check)
    assert selection.method == "held_out" and 1.0 < selection.l2 < 16.0
    with pytest.raises(ValueError, match="needs `held_out_differences`"):
        select_l2(fit, method="held_out")
    with pytest.raises(ValueError, match="same users in the same order"):
        select_l2(fit, method="held_out", held_out_differences=check[:10])
    with pytest.raises(ValueError, match="no pair"):
        select_l2(fit, method="held_out", held_out_differences=check, held_out_mask=torch.zeros(300, 20))


def test_adapt_users_adds_them_to_the_model(synthetic_strong, tokenizer, tiny_lm):
    model = RewardFeatureModel.from_backbone(tiny_lm, num_features=8, user_ids=["user_0", "user_1"])
    heldout = synthetic_strong.heldout
    user_ids, weights = adapt_users(model, tokenizer, heldout, show_progress=False)
    assert user_ids == list(dict.fromkeys(heldout["user_id"]))
    assert model.user_ids == ["user_0", "user_1", *user_ids]
    torch.testing.assert_close(model.get_user_weights(user_ids), weights)
    prior_mean, l2 = prior_from_model(model)
    assert l2 > 0 and prior_mean.shape == (8,)
    # Adapting again replaces, never duplicates.
    adapt_users(model, tokenizer, heldout.select(range(10)), show_progress=False)
    assert model.num_users == 2 + len(user_ids)
    with pytest.raises(ValueError, match="no user column 'rater'"):
        adapt_users(model, tokenizer, heldout, user_column="rater")
    with pytest.raises(ValueError, match="empty"):
        adapt_users(model, tokenizer, heldout.select([]))


def test_feature_differences_featurise_each_distinct_response_once(synthetic_strong, tokenizer, tiny_lm):
    """Pairs derived from ratings reuse every rated response: the backbone sees each distinct sequence once, and the
    differences equal those of each pair featurised on its own."""
    from datasets import Dataset

    from trl_rfm import compute_feature_differences

    model = RewardFeatureModel.from_backbone(tiny_lm, num_features=8, feature_normalization="none")
    responses = list(dict.fromkeys(synthetic_strong.train["chosen"]))[:4]
    assert len({tuple(tokenizer(text)["input_ids"]) for text in responses}) == 4
    pairs = [(c, r) for c in responses for r in responses if c != r] * 3  # 36 pairs of 4 distinct responses
    dataset = Dataset.from_dict({"chosen": [c for c, _ in pairs], "rejected": [r for _, r in pairs]})
    sequences_seen = []
    hook = model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: sequences_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        differences = compute_feature_differences(model, tokenizer, dataset, batch_size=2, show_progress=False)
    finally:
        hook.remove()
    assert sum(sequences_seen) == len(responses)
    assert max(sequences_seen) <= 4  # batches of 2 * batch_size sequences
    one_by_one = torch.cat(
        [compute_feature_differences(model, tokenizer, dataset.select([i]), show_progress=False) for i in range(36)]
    )
    torch.testing.assert_close(differences, one_by_one, atol=1e-6, rtol=1e-5)
    assert differences.abs().sum() > 0


def _random_precision(d, seed=0):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return basis @ basis.T / d + 0.3 * torch.eye(d, dtype=torch.float64)  # well conditioned, far from isotropic


def test_precision_matrix_matches_scikit_learn_after_whitening():
    """With `P = L L^T`, `w = L^-T v` turns the prior into `||v||^2 / 2` and the features into `x L^-T`: an ordinary
    ridge logistic regression, which scikit-learn solves."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, _ = _synthetic_users(num_users=3, num_pairs=40, d=6, noisy=True)
    precision = _random_precision(6)
    weights = fit_user_weights(x, l2=precision)
    factor = torch.linalg.cholesky(precision)
    for u in range(3):
        signs = torch.ones(40, dtype=torch.float64)
        signs[::2] = -1
        whitened = torch.linalg.solve_triangular(factor, (x[u] * signs[:, None]).T, upper=False).T  # x L^-T
        reference = sklearn.LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=1000)
        reference.fit(whitened.numpy(), (signs > 0).long().numpy())
        expected = torch.linalg.solve_triangular(factor.T, torch.from_numpy(reference.coef_[0])[:, None], upper=True)
        torch.testing.assert_close(weights[u], expected[:, 0], atol=1e-5, rtol=0)


def test_precision_matrix_generalises_the_scalar_and_stays_batched():
    x, _ = _synthetic_users(num_users=5, num_pairs=12, d=4, noisy=True)
    mask = torch.ones(5, 12, dtype=torch.float64)
    mask[1, 3:] = 0
    mask[2] = 0
    prior = torch.linspace(-1, 1, 4, dtype=torch.float64)
    scalar = fit_user_posterior(x, mask, prior, 0.7)
    matrix = fit_user_posterior(x, mask, prior, 0.7 * torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(matrix.mean, scalar.mean, atol=1e-7, rtol=0)  # the Newton tolerance
    torch.testing.assert_close(matrix.log_evidence, scalar.log_evidence, atol=1e-7, rtol=0)
    # One matrix per user: each user alone gives the same answer as in the batch; no pairs gives the prior mean.
    precisions = torch.stack([_random_precision(4, seed=s) for s in range(5)])
    batched = fit_user_weights(x, mask, prior, precisions)
    for u in range(5):
        alone = fit_user_weights(x[u : u + 1], mask[u : u + 1], prior, precisions[u])[0]
        torch.testing.assert_close(batched[u], alone, atol=1e-8, rtol=0)
    torch.testing.assert_close(batched[2], prior)


def test_precision_matrix_errors_name_the_problem():
    x, _ = _synthetic_users(num_users=2, num_pairs=5, d=3)
    with pytest.raises(ValueError, match="symmetric"):
        fit_user_weights(x, l2=torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="positive definite"):
        fit_user_weights(x, l2=torch.diag(torch.tensor([1.0, -1.0, 1.0])))
    with pytest.raises(ValueError, match=r"\[d, d\]"):
        fit_user_weights(x, l2=torch.eye(4))
