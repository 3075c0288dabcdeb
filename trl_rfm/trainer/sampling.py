"""
Length-grouped sampling of preference pairs: batches of pairs of similar length, so that the collator pads less.

`transformers`' own `group_by_length` option sorts chunks of 50 batches and reads lengths from `input_ids`, which
preference datasets do not have. [`LengthGroupedPairSampler`] does the same with a chunk of any number of batches and
a pair's length (that of its longer sequence); [`length_grouped_trainer`] makes any `Trainer` subclass
([`RFMRewardTrainer`], `trl.RewardTrainer`, ...) draw its training batches with it, through the `Trainer`'s sampler
hook (`_get_train_sampler`).
"""

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from ..adaptation.features import pair_lengths


class LengthGroupedPairSampler(torch.utils.data.Sampler):
    """
    `transformers`' length-grouped order: shuffle, cut into chunks of `chunk_batches` batches, sort each chunk by
    length (longest batch first). Every epoch draws a new order from the sampler's own seeded generator.

    Args:
        lengths: the length of each pair (see [`trl_rfm.adaptation.features.pair_lengths`]).
        batch_size: pairs per batch.
        chunk_batches: batches per sorted chunk; smaller keeps batches more random, larger pads less.
        seed: seed of the shuffles.
    """

    def __init__(self, lengths: list[int], batch_size: int, chunk_batches: int, seed: int):
        self.lengths, self.batch_size, self.chunk_batches = lengths, batch_size, chunk_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        yield from get_length_grouped_indices(self.lengths, self.batch_size, self.chunk_batches, self.generator)


def length_grouped_trainer(trainer_class: type, chunk_batches: int) -> type:
    """A subclass of `trainer_class` drawing its training batches with [`LengthGroupedPairSampler`] (chunks of
    `chunk_batches` batches, seeded by `args.seed`); `trainer_class` itself when `chunk_batches` is 0."""
    if not chunk_batches:
        return trainer_class

    class LengthGroupedTrainer(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            return LengthGroupedPairSampler(
                pair_lengths(dataset), self.args.train_batch_size, chunk_batches, self.args.seed
            )

    LengthGroupedTrainer.__name__ = trainer_class.__name__
    return LengthGroupedTrainer
