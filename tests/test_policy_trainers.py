"""Every TRL policy loop runs with the personalised reward, and each sample is scored for its own user."""

import pytest
import torch
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_rfm import (
    PersonalizedReward,
    RewardFeatureModel,
    relabel_preferences,
    sample_candidates,
)
from trl_rfm.testing import (
    build_marker_policy,
    build_marker_tokenizer,
    build_tiny_causal_lm,
    make_prompt_dataset,
    marker_users,
)


COMMON = dict(
    max_steps=2,
    learning_rate=1e-3,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    bf16=False,
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
)


class RecordingReward(PersonalizedReward):
    """Keeps what the trainer passed and what it got back, to check the per-user routing afterwards."""

    calls: list

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append(
            {"prompts": prompts, "completions": completions, "users": kwargs["user_id"], "rewards": rewards}
        )
        return rewards


@pytest.fixture(scope="module")
def tokenizer():
    return build_marker_tokenizer()


@pytest.fixture(scope="module")
def rfm(tokenizer):
    torch.manual_seed(0)
    users = list(marker_users())
    model = RewardFeatureModel.from_backbone(build_tiny_causal_lm(tokenizer, seed=1), num_features=4, user_ids=users)
    # Opposite users: every completion gets rewards of opposite signs.
    weights = torch.randn(4)
    model.add_users(users, weights=torch.stack([weights, -weights]))
    torch.nn.init.normal_(model.feature_head.weight, std=0.3)
    return model.eval()


@pytest.fixture
def reward(rfm, tokenizer):
    reward = RecordingReward(rfm, tokenizer)
    reward.calls = []
    return reward


def _assert_rewards_follow_each_rows_user(reward):
    assert reward.calls, "the trainer never called the reward"
    users = set()
    for call in reward.calls:
        users.update(call["users"])
        both = reward.score_for_users(call["prompts"], call["completions"], list(marker_users()))  # [N, 2]
        own = both[torch.arange(len(call["users"])), torch.tensor([marker_users().index(u) for u in call["users"]])]
        torch.testing.assert_close(torch.tensor(call["rewards"]), own, rtol=1e-4, atol=1e-5)
        # Same completion, different user, different reward.
        assert ((both[:, 0] - both[:, 1]).abs() > 1e-4).all()
    assert users == set(marker_users())  # one run served both users


@pytest.mark.parametrize("conversational", [False, True])
def test_grpo(tmp_path, tokenizer, reward, conversational):
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6, **COMMON
    )
    trainer = GRPOTrainer(
        model=build_marker_policy(tokenizer),
        reward_funcs=reward,
        args=args,
        train_dataset=make_prompt_dataset(num_prompts=8, conversational=conversational),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert "rewards/personalized_reward/mean" in trainer.state.log_history[0]
    _assert_rewards_follow_each_rows_user(reward)


@pytest.mark.slow  # ~30 s
def test_rloo(tmp_path, tokenizer, reward):
    # RLOO (beta > 0) rebuilds its reference model from the policy's path, so the policy goes through the disk.
    policy_path = str(tmp_path / "policy")
    build_marker_policy(tokenizer).save_pretrained(policy_path)
    args = RLOOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6, **COMMON
    )
    assert args.beta > 0
    trainer = RLOOTrainer(
        model=policy_path,
        reward_funcs=reward,
        args=args,
        train_dataset=make_prompt_dataset(num_prompts=8),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    _assert_rewards_follow_each_rows_user(reward)


def test_online_dpo(tmp_path, tokenizer, reward):
    args = OnlineDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_new_tokens=6, **COMMON)
    trainer = OnlineDPOTrainer(
        model=build_marker_policy(tokenizer),
        reward_funcs=reward,
        args=args,
        train_dataset=make_prompt_dataset(num_prompts=8),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    _assert_rewards_follow_each_rows_user(reward)


def test_relabelled_pairs_train_with_stock_dpo(tmp_path, tokenizer, rfm):
    policy = build_marker_policy(tokenizer)
    policy_path = str(tmp_path / "policy")
    policy.save_pretrained(policy_path)  # DPOTrainer builds its reference model from the policy's path
    prompts = make_prompt_dataset(num_prompts=4)["prompt"]
    torch.manual_seed(0)
    candidates = sample_candidates(policy, tokenizer, prompts, num_candidates=4, max_new_tokens=6)
    pairs = relabel_preferences(PersonalizedReward(rfm, tokenizer), prompts, candidates, user_ids=list(marker_users()))
    likes, avoids = marker_users()
    liked = {(r["prompt"], r["chosen"], r["rejected"]) for r in pairs if r["user_id"] == likes}
    avoided = {(r["prompt"], r["rejected"], r["chosen"]) for r in pairs if r["user_id"] == avoids}
    assert liked == avoided  # opposite users: the same pairs, flipped
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=32, **COMMON)
    trainer = DPOTrainer(
        model=policy_path,
        args=args,
        train_dataset=pairs.filter(lambda r: r["user_id"] == likes).select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tokenizer,
    )
    before = dict(policy.named_parameters())
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
