"""Adding users to a trained model from a dataset of their comparisons (features once, then the solver)."""

import torch

from .features import compute_feature_differences, group_by_user
from .prior import prior_from_model, select_l2
from .solver import fit_user_weights


@torch.no_grad()
def adapt_users(
    model,
    processing_class,
    dataset,
    user_column: str = "user_id",
    l2: float | torch.Tensor | str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = True,
) -> tuple[list[str], torch.Tensor]:
    """
    Fits the weights of the users in `dataset` (a preference dataset with a user column) on the model's frozen
    features and adds them to the model (replacing the weights of users it already has), so that they score like
    training users and are saved with it.

    Args:
        model ([`RewardFeatureModel`]): a trained model.
        processing_class: its tokenizer.
        dataset (`datasets.Dataset`): comparisons in any TRL preference format, with a `user_column`.
        user_column (`str`): column holding the user id of each comparison.
        l2 (`float`, `torch.Tensor` of shape `(d, d)`, `"evidence"` or `None`): prior precision. `None` (default)
            takes the empirical-Bayes prior of the model ([`prior_from_model`]: a precision matrix for a model trained
            by [`RFMRewardTrainer`]); `"evidence"` chooses it from these users' answers with [`select_l2`] (needs
            several users).

    Returns:
        `(user_ids, weights [users, d])` in first-seen order.
    """
    if len(dataset) == 0:
        raise ValueError("The dataset of comparisons is empty: nothing to adapt.")
    if user_column not in dataset.column_names:
        raise ValueError(
            f"The comparisons have no user column {user_column!r}; their columns are {dataset.column_names}."
        )
    differences = compute_feature_differences(
        model, processing_class, dataset, batch_size=batch_size, max_length=max_length, show_progress=show_progress
    )
    grouped, mask, user_ids = group_by_user(differences, dataset[user_column])
    prior_mean, model_l2 = prior_from_model(model)
    if l2 is None:
        l2 = model_l2
    elif isinstance(l2, str) and l2 == "evidence":
        l2 = select_l2(grouped, mask, prior_mean).l2
    elif isinstance(l2, str):
        raise ValueError(f"`l2` must be a number, 'evidence' or None, got {l2!r}.")
    weights = fit_user_weights(grouped, mask, prior_mean, l2 if isinstance(l2, torch.Tensor) else float(l2))
    model.add_users(user_ids, weights.to(model.user_weights.weight.dtype))
    return user_ids, weights
