"""The longest sequence a Reward Feature Model's trunk takes, and truncation to it as TRL does (keeping the end)."""

import warnings


def position_limit(model) -> int | None:
    """The longest sequence the trunk's position embeddings take (`max_position_embeddings`), or `None`."""
    config = getattr(model, "config", model)
    text_config = getattr(config, "text_config", None) or config
    limit = getattr(text_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def truncate_to_limit(sequences: list[list[int]], max_length: int | None, model, what: str) -> list[list[int]]:
    """Sequences longer than `max_length` (or, when it is `None`, than the trunk's positions, which would otherwise
    fail deep inside torch with `index out of range`) keep their last tokens: the reward is read at the last token, so
    the end of the completion is what must survive. Truncation by the trunk's limit is announced once per call."""
    limit = max_length if max_length is not None else position_limit(model)
    if limit is None:
        return sequences
    long = sum(len(ids) > limit for ids in sequences)
    if long and max_length is None:
        warnings.warn(
            f"{long} {what} longer than the model's {limit} positions (`max_position_embeddings`) keep their last "
            f"{limit} tokens (the end of the completion); pass `max_length` to choose the truncation.",
            stacklevel=3,
        )
    return [ids[-limit:] if len(ids) > limit else ids for ids in sequences] if long else sequences
