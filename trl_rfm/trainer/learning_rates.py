"""
The learning rates of the two parts a Reward Feature Model adds to its trunk, and the optimizer groups that give them.

The feature head trains at the trunk's rate but at least `FEATURE_HEAD_MIN_LEARNING_RATE` (a fresh head under a
pretrained trunk's 1e-5..1e-4 barely moves); the user table at a fixed rate, whatever the trunk's (the rows weigh
normalised features of a fixed scale), and without weight decay (its Gaussian prior already holds it).
"""

from torch import nn
from torch.optim import Optimizer

from .rfm_config import RFMConfig


FEATURE_HEAD_MIN_LEARNING_RATE = 1e-3
USER_WEIGHTS_DEFAULT_LEARNING_RATE = 1e-2


def feature_head_learning_rate(args: RFMConfig) -> float:
    """The feature head's learning rate: `args.feature_head_learning_rate`, or the trunk's rate with a floor."""
    if args.feature_head_learning_rate is not None:
        return args.feature_head_learning_rate
    return max(args.learning_rate, FEATURE_HEAD_MIN_LEARNING_RATE)


def user_weights_learning_rate(args: RFMConfig) -> float:
    """The user table's learning rate: `args.user_weights_learning_rate`, or a fixed default."""
    if args.user_weights_learning_rate is not None:
        return args.user_weights_learning_rate
    return USER_WEIGHTS_DEFAULT_LEARNING_RATE


def regroup(optimizer: Optimizer, parameters, **overrides) -> None:
    """Move `parameters` into groups of their own, one per group they were in, with that group's options except
    `overrides` (so transformers' split of weights with and without weight decay is kept unless overridden)."""
    selected_ids = {id(p) for p in parameters}
    for group in list(optimizer.param_groups):
        selected = [p for p in group["params"] if id(p) in selected_ids]
        if selected:
            group["params"] = [p for p in group["params"] if id(p) not in selected_ids]
            options = {key: value for key, value in group.items() if key != "params"}
            optimizer.add_param_group({**options, **overrides, "params": selected})


def split_rfm_parameter_groups(optimizer: Optimizer, model: nn.Module, args: RFMConfig) -> None:
    """Give the user table and the feature head of `model` their own learning rates in `optimizer` (transformers'
    groups, built for one rate)."""
    user_parameters = [p for n, p in model.named_parameters() if "user_weights." in n and p.requires_grad]
    if user_parameters:
        regroup(optimizer, user_parameters, lr=user_weights_learning_rate(args), weight_decay=0.0)
    head_learning_rate = feature_head_learning_rate(args)
    if head_learning_rate != args.learning_rate:
        head_parameters = [p for n, p in model.named_parameters() if "feature_head." in n and p.requires_grad]
        regroup(optimizer, head_parameters, lr=head_learning_rate)
