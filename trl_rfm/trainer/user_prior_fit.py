"""
The end of training: the new users' prior fitted on the final features, and the training users' rows refitted under
it ([`RFMRewardTrainer.train`] calls [`fit_prior_after_training`]).

Why at the end and on the features: during training a user's row is updated only in the steps whose batch holds one
of their comparisons, while the features move in every step, so the rows lag the features they are read with, and
part of their spread is still their random initialisation. Their spread is a biased picture of how users differ, and
their fit to the final features is loose (on Polis, refitting them raised the training participants' own-row gain
from +2.6 to +3.4 points). With the features frozen both are convex problems: a few seconds once the distinct
responses are featurised.
"""

import contextlib
import logging
import time

import torch
from accelerate.utils import is_deepspeed_available, is_peft_model
from datasets import Dataset

from ..adaptation.empirical_bayes import UserPrior, fit_user_prior, response_reuse_weights, shrink_covariance
from ..adaptation.features import compute_feature_differences, group_by_user
from ..adaptation.prior import precision_of_rows
from ..adaptation.solver import fit_user_weights
from .user_index import USER_INDEX


logger = logging.getLogger(__name__)

# EM converges linearly; past ~10 iterations from the rows' spread the held-out users' accuracy no longer moves. Each
# iteration is one batched float64 Newton solve over the users it reads (0.45 s for 1,644 users x 64 pairs, d = 32, one
# CPU thread), so it reads at most EM_MAX_USERS of them (a seeded draw): enough for a d x d covariance shrunk halfway
# to isotropic. Every user's row is then refitted in one float32 solve under the fitted prior.
EM_ITERATIONS = 10
EM_TOLERANCE = 1e-2
EM_MAX_USERS = 512


def sample_pairs_per_user(user_index: list[int], max_pairs_per_user: int, seed: int) -> list[int]:
    """Rows of the dataset: at most `max_pairs_per_user` of each user's pairs, drawn uniformly (seeded, so that every
    rank draws the same), in dataset order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(user_index), generator=generator).tolist()
    taken: dict[int, int] = {}
    rows = []
    for row in order:
        user = user_index[row]
        if user >= 0 and taken.get(user, 0) < max_pairs_per_user:
            taken[user] = taken.get(user, 0) + 1
            rows.append(row)
    return sorted(rows)


def active_user_table(base_model):
    """The `UserWeights` module that holds the trained rows: PEFT's trained copy when the table is in
    `modules_to_save`, the model's own otherwise."""
    table = base_model.user_weights
    copies = getattr(table, "modules_to_save", None)
    if copies is not None:
        adapter = table.active_adapter
        table = copies[adapter if isinstance(adapter, str) else adapter[0]]
    return table


@torch.no_grad()
def write_user_rows(base_model, rows: torch.Tensor) -> None:
    """Replaces the weights of every training user by `rows` `[U, d]`, keeping the population weights (under ZeRO-3
    the partitioned table is gathered, written by rank 0 and partitioned again; every rank computed the same rows)."""
    table = active_user_table(base_model)
    with _gathered_for_writing([table.weight, table.population]):  # `to_stored` reads the population weights
        stored = table.to_stored(rows.to(device=table.weight.device, dtype=table.weight.dtype))
        table.weight.data.copy_(stored)


def _gathered_for_writing(parameters):
    if is_deepspeed_available() and any(hasattr(p, "ds_id") for p in parameters):
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)
    return contextlib.nullcontext()


@torch.no_grad()
def fit_prior_after_training(model, dataset, processing_class, args) -> UserPrior | None:
    """
    Fits the new users' prior `N(w_pop, covariance)` to the training users' comparisons on the trained features
    ([`fit_user_prior`]; the mean stays the trained population weights, which serve unknown users; pairs weighted by
    [`response_reuse_weights`]), stores it in the model's config (`user_prior_covariance`, and its isotropic
    equivalent `user_prior_precision`), and refits every training user's row under it when
    `args.refit_user_weights`. Returns the prior, or `None` when the training data cannot be read back (an iterable
    dataset, fewer than two users), in which case the isotropic precision of the trained rows is stored.

    Every rank runs it on the same pairs (a seeded draw of at most `args.user_prior_max_pairs_per_user` per user), so
    that under ZeRO-3 every rank takes part in the same forward passes and all end with the same model.
    """
    base_model = model.get_base_model() if is_peft_model(model) else model
    table = base_model.user_weights().float().cpu()  # through forward: PEFT's trained copy, gathered under ZeRO-3
    population, rows = table[-1], table[:-1]
    base_model.config.user_prior_precision = precision_of_rows(table)
    if not isinstance(dataset, Dataset) or USER_INDEX not in dataset.column_names or rows.shape[0] < 2:
        return None
    start_time = time.perf_counter()
    # Whole columns as lists in one read each: `datasets` columns read element by element cost a query per row.
    user_index = dataset.select_columns([USER_INDEX])[:][USER_INDEX]
    selected = sample_pairs_per_user(user_index, args.user_prior_max_pairs_per_user, args.seed)
    pairs = dataset.select(selected).select_columns(["chosen_ids", "rejected_ids", USER_INDEX])
    differences = compute_feature_differences(
        model, processing_class, pairs, batch_size=args.per_device_eval_batch_size, show_progress=False
    )
    columns = pairs[:]
    users = columns[USER_INDEX]
    chosen = [tuple(ids) for ids in columns["chosen_ids"]]
    rejected = [tuple(ids) for ids in columns["rejected_ids"]]
    weights = response_reuse_weights(users, chosen, rejected).float()
    x, _, _ = group_by_user(differences, users, range(rows.shape[0]))
    mask, _, _ = group_by_user(weights[:, None], users, range(rows.shape[0]))
    mask = mask[..., 0]
    has_pairs = mask.sum(-1) > 0
    candidates = has_pairs.nonzero()[:, 0]
    if len(candidates) < 2:
        return None
    deviations = rows - population
    start = shrink_covariance(deviations.T.double() @ deviations.double() / rows.shape[0], args.user_prior_shrinkage)
    generator = torch.Generator().manual_seed(args.seed)
    readers = candidates[torch.randperm(len(candidates), generator=generator)[:EM_MAX_USERS]].sort().values
    prior, _ = fit_user_prior(
        x[readers], mask[readers], mean=population, covariance=start, shrinkage=args.user_prior_shrinkage,
        fit_mean=False, max_iter=EM_ITERATIONS, tol=EM_TOLERANCE,
    )  # fmt: skip
    base_model.config.user_prior_covariance = prior.covariance.tolist()
    base_model.config.user_prior_precision = prior.isotropic_precision
    if args.refit_user_weights:
        # Rows of users without a drawn pair (none, unless the dataset changed) are left as trained.
        fitted = fit_user_weights(x, mask, population, prior.precision.float())
        write_user_rows(base_model, torch.where(has_pairs[:, None], fitted, rows))
    logger.info(
        "New users' prior fitted on %d comparisons of %d users in %.1f s (isotropic equivalent precision %.3g).",
        len(selected), len(candidates), time.perf_counter() - start_time, prior.isotropic_precision,
    )  # fmt: skip
    return prior
