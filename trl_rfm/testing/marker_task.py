"""
A tiny, offline task for personalised policy training: two (or more) users with opposite tastes about a marker word.

User `likes_<marker>` prefers responses containing the marker word, user `avoids_<marker>` prefers responses without
it. [`train_marker_reward_model`] trains a tiny Reward Feature Model on their comparisons in seconds on a CPU;
[`make_prompt_dataset`] gives prompts with a `user_id` column for GRPO / RLOO / Online DPO. The examples, tests and the
steering benchmark use it so that every policy loop runs end to end without the Hub.
"""

import os

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..models.modeling_rfm import RewardFeatureModel
from ..trainer.rfm_config import RFMConfig
from ..trainer.rfm_trainer import RFMRewardTrainer
from .synthetic import FILLER_WORDS, TOPICS
from .tiny_models import build_tiny_causal_lm, build_tokenizer, quiet_cpu_args


MARKER_WORD = "funny"


def marker_users(marker: str = MARKER_WORD) -> tuple[str, str]:
    """The ids of the two users: the one who rewards the marker word and the one who penalises it."""
    return f"likes_{marker}", f"avoids_{marker}"


def marker_vocabulary(marker: str = MARKER_WORD) -> list[str]:
    """Every word the task uses (the user ids too, for user-conditioned prompts), for building a tokenizer."""
    words = (marker, *FILLER_WORDS, *marker_users(marker), "for", ":")
    return [" ".join(words), *(f"question about {topic} ?" for topic in TOPICS)]


def make_marker_preferences(num_pairs_per_user: int = 256, marker: str = MARKER_WORD, seed: int = 0) -> Dataset:
    """
    Comparisons `{prompt, chosen, rejected, user_id}`: in every pair exactly one response contains the marker word
    (anywhere, once or more); `likes_<marker>` chose it, `avoids_<marker>` rejected it.
    """
    rng = np.random.default_rng(seed)
    likes, avoids = marker_users(marker)

    def response(with_marker: bool) -> str:
        words = list(rng.choice(FILLER_WORDS, size=rng.integers(2, 7)))
        if with_marker:
            for _ in range(rng.integers(1, 3)):
                words.insert(rng.integers(0, len(words) + 1), marker)
        return " ".join(words)

    rows = []
    for user in (likes, avoids):
        for _ in range(num_pairs_per_user):
            marked, unmarked = response(True), response(False)
            chosen, rejected = (marked, unmarked) if user == likes else (unmarked, marked)
            topic = TOPICS[rng.integers(len(TOPICS))]
            rows.append(
                {"prompt": f"question about {topic} ?", "chosen": chosen, "rejected": rejected, "user_id": user}
            )
    return Dataset.from_list(rows).shuffle(seed=seed)


def make_prompt_dataset(
    user_ids: list[str] | None = None,
    num_prompts: int = 64,
    conversational: bool = False,
    condition_on_user: bool = False,
) -> Dataset:
    """
    Prompts for the policy, each with a `user_id` column; prompts cycle over the users, so one run serves them all.
    With `condition_on_user` the prompt names its user ("for likes_funny : question about ...") so that a single
    policy can learn a different behaviour per user. Conversational prompts are single user turns.
    """
    user_ids = list(user_ids) if user_ids is not None else list(marker_users())
    rows = []
    for i in range(num_prompts):
        prompt = f"question about {TOPICS[i % len(TOPICS)]} ?"
        if condition_on_user:
            prompt = f"for {user_ids[i % len(user_ids)]} : {prompt}"
        if conversational:
            prompt = [{"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "user_id": user_ids[i % len(user_ids)]})
    return Dataset.from_list(rows)


def build_marker_tokenizer(marker: str = MARKER_WORD) -> PreTrainedTokenizerBase:
    return build_tokenizer(marker_vocabulary(marker))


def build_marker_policy(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **model_kwargs) -> PreTrainedModel:
    """A randomly initialised tiny causal LM: its samples are near-uniform over the vocabulary, so the marker word
    shows up in a fair share of them and a reward for or against it has something to steer."""
    return build_tiny_causal_lm(tokenizer, seed=seed, **model_kwargs)


def train_marker_reward_model(
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str,
    num_pairs_per_user: int = 256,
    num_features: int = 4,
    feature_normalization: str = "rms",
    num_train_epochs: float = 4,
    marker: str = MARKER_WORD,
    seed: int = 0,
) -> RewardFeatureModel:
    """Trains a tiny Reward Feature Model on [`make_marker_preferences`] (about 20 s on two CPU cores)."""
    args = quiet_cpu_args(
        RFMConfig,
        output_dir=output_dir,
        num_features=num_features,
        feature_normalization=feature_normalization,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        user_weights_learning_rate=3e-2,
        num_train_epochs=num_train_epochs,
        lr_scheduler_type="cosine",
        warmup_steps=5,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
    )
    trainer = RFMRewardTrainer(
        model=build_tiny_causal_lm(tokenizer, seed=seed),
        args=args,
        train_dataset=make_marker_preferences(num_pairs_per_user, marker, seed),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer.model.eval()


def prepare_marker_models(
    output_dir: str,
    reward_model_path: str | None = None,
    policy_path: str | None = None,
    feature_normalization: str = "rms",
    seed: int = 0,
) -> tuple[RewardFeatureModel, PreTrainedTokenizerBase, str]:
    """
    What the examples start from: the Reward Feature Model and its tokenizer (loaded from `reward_model_path`, or
    trained on the marker task and saved under `output_dir/reward_model`), and the path of the policy to fine-tune
    (`policy_path`, or a tiny random policy saved under `output_dir/initial_policy`).
    """
    if reward_model_path is not None:
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_model_path)
        reward_model = AutoModel.from_pretrained(reward_model_path)
    else:
        reward_tokenizer = build_marker_tokenizer()
        reward_model = train_marker_reward_model(
            reward_tokenizer,
            os.path.join(output_dir, "reward_model"),
            feature_normalization=feature_normalization,
            seed=seed,
        )
        reward_model.save_pretrained(os.path.join(output_dir, "reward_model"))
        reward_tokenizer.save_pretrained(os.path.join(output_dir, "reward_model"))
    if policy_path is None:
        policy_path = os.path.join(output_dir, "initial_policy")
        build_marker_policy(reward_tokenizer, seed=seed).save_pretrained(policy_path)
        reward_tokenizer.save_pretrained(policy_path)
    return reward_model, reward_tokenizer, policy_path
