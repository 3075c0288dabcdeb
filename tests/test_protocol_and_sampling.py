"""Library pieces the benchmarks share: the accuracy-vs-k protocol, tokenisation like TRL's `RewardTrainer`, and
length-grouped sampling."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from trl_rfm import RFMRewardTrainer, tokenize_preferences
from trl_rfm.adaptation.features import tokenize_sequence
from trl_rfm.evaluation import accuracy_vs_k, draw_adaptation_sets, pairwise_accuracy
from trl_rfm.trainer.sampling import LengthGroupedPairSampler, length_grouped_trainer


def test_pairwise_accuracy_per_rater_and_pooled():
    margins = torch.tensor([[1.0, 1.0, 1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert pairwise_accuracy(margins, mask, "per_rater") == pytest.approx((0.75 + 0.0) / 2)
    assert pairwise_accuracy(margins, mask, "pooled") == pytest.approx(3 / 5)
    # Ties count one half; users without pairs are left out.
    assert pairwise_accuracy(torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="average"):
        pairwise_accuracy(margins, mask, "macro")


def test_accuracy_vs_k_recovers_planted_users():
    generator = torch.Generator().manual_seed(0)
    users, pool, tests, d = 6, 40, 30, 4
    truth = torch.randn(users, d, generator=generator) * 3
    pool_x = torch.randn(users, pool, d, generator=generator)
    test_x = torch.randn(users, tests, d, generator=generator)
    # Orient every pair as the user prefers it: then a user's own weights score 100%.
    pool_x *= torch.einsum("upd,ud->up", pool_x, truth).sign()[..., None]
    test_x *= torch.einsum("upd,ud->up", test_x, truth).sign()[..., None]
    pool_mask, test_mask = torch.ones(users, pool), torch.ones(users, tests)
    curve = accuracy_vs_k(pool_x, pool_mask, test_x, test_mask, torch.zeros(d), 1.0, [0, 5, 40], 3, seed=0)
    assert sorted(curve) == [0, 5, 40] and len(curve[0]) == 1 and len(curve[5]) == 3
    assert curve[0] == [0.5]  # the prior mean (zeros) ties every pair
    assert np.mean(curve[40]) > np.mean(curve[5]) > 0.6
    # The same draws give the same curve; fewer pool pairs than k use them all.
    draws = draw_adaptation_sets(pool_mask, [0, 5, 40], 3, seed=0)
    assert accuracy_vs_k(pool_x, pool_mask, test_x, test_mask, torch.zeros(d), 1.0, draws=draws) == curve
    assert all(mask.sum(-1).eq(40).all() for mask in draws[40])


def test_tokenize_preferences_matches_trl(tokenizer, synthetic_strong, tmp_path):
    pairs = synthetic_strong.train.select(range(32)).select_columns(["prompt", "chosen", "rejected"])
    args = RewardConfig(output_dir=str(tmp_path), bf16=False, report_to="none")
    reference = RewardTrainer._prepare_dataset(None, pairs, tokenizer, args, "train")
    for cache in (None, {}):
        ours = tokenize_preferences(pairs, tokenizer, cache=cache)
        assert ours["chosen_ids"] == reference["chosen_ids"] and ours["rejected_ids"] == reference["rejected_ids"]
    row = pairs[0]
    assert tokenize_sequence(tokenizer, row["prompt"], row["chosen"]) == reference["chosen_ids"][0]
    implicit = Dataset.from_dict({"chosen": [row["prompt"] + row["chosen"]], "rejected": [row["rejected"]]})
    assert tokenize_preferences(implicit, tokenizer)["chosen_ids"][0] == reference["chosen_ids"][0]


def test_length_grouped_sampler_is_a_permutation_with_less_padding():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000).tolist()
    sampler = LengthGroupedPairSampler(lengths, batch_size=16, chunk_batches=4, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    padded = np.mean([max(lengths[i] for i in order[s : s + 16]) for s in range(0, 1000, 16)])
    random = np.mean([max(lengths[s : s + 16]) for s in range(0, 1000, 16)])
    assert padded < random
    assert list(sampler) != order  # a new shuffle every epoch


def test_length_grouped_trainer_only_changes_the_sampler():
    assert length_grouped_trainer(RFMRewardTrainer, 0) is RFMRewardTrainer
    grouped = length_grouped_trainer(RFMRewardTrainer, 8)
    assert issubclass(grouped, RFMRewardTrainer) and grouped.__name__ == "RFMRewardTrainer"
    assert set(vars(grouped)) - {"__module__", "__qualname__", "__doc__", "__name__"} == {"_get_train_sampler"}
