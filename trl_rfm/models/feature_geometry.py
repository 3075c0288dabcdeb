"""How the reward features spread over their `d` dimensions: a penalty that keeps them spread, and a measure of it."""

import torch


def feature_covariance(reward_features: torch.Tensor) -> torch.Tensor:
    """Covariance of the features over the rows of `reward_features`: `[N, d] -> [d, d]`."""
    centered = reward_features - reward_features.mean(dim=0, keepdim=True)
    return centered.T @ centered / max(reward_features.shape[0] - 1, 1)


def feature_covariance_penalty(reward_features: torch.Tensor) -> torch.Tensor:
    """`||Cov(phi) - I||_F^2 / d`: zero for decorrelated, unit-variance features; large when they collapse onto a
    few directions."""
    covariance = feature_covariance(reward_features)
    identity = torch.eye(covariance.shape[0], device=covariance.device, dtype=covariance.dtype)
    return (covariance - identity).pow(2).sum() / covariance.shape[0]


def effective_dimension(reward_features: torch.Tensor) -> float:
    """Participation ratio `(sum λ)^2 / sum λ^2` of the eigenvalues of the feature covariance: `d` when every
    direction carries the same variance, 1 when the features have collapsed onto one direction."""
    eigenvalues = torch.linalg.eigvalsh(feature_covariance(reward_features.double())).clamp_min(0)
    return (eigenvalues.sum().pow(2) / eigenvalues.pow(2).sum().clamp_min(1e-30)).item()
