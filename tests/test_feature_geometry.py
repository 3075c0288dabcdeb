import torch

from trl_rfm import effective_dimension, feature_covariance_penalty


def test_effective_dimension_counts_the_directions_in_use():
    torch.manual_seed(0)
    isotropic = torch.randn(20000, 8)
    assert 7.5 < effective_dimension(isotropic) <= 8.0
    collapsed = torch.randn(20000, 1) @ torch.randn(1, 8) + 1e-4 * torch.randn(20000, 8)
    assert effective_dimension(collapsed) < 1.01
    two = torch.cat([torch.randn(20000, 2), torch.zeros(20000, 6)], dim=1)
    assert 1.9 < effective_dimension(two) < 2.01


def test_covariance_penalty_is_zero_only_for_whitened_features():
    torch.manual_seed(0)
    whitened = torch.randn(50000, 4)
    assert feature_covariance_penalty(whitened) < 1e-3
    collapsed = torch.randn(50000, 1).expand(-1, 4)
    # Cov = all-ones: off-diagonal (12 entries of 1) over d = 4 -> 3.
    assert abs(feature_covariance_penalty(collapsed).item() - 3.0) < 0.05
