"""
What a policy trained on personalised rewards learned, per user: each user's own mean reward of the policy's samples
(and, optionally, how often the samples contain a marker word), measured before and after training. The policy
examples (`examples/online_rl_personalized.py`, `examples/dpo_relabel_personalized.py`) end with this table.
"""

from collections.abc import Sequence

import torch

from .personalized_reward import PersonalizedReward
from .relabel import sample_candidates


@torch.no_grad()
def personalized_policy_summary(
    policy,
    tokenizer,
    reward: PersonalizedReward,
    prompts: Sequence,
    user_ids: Sequence,
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 16,
    seed: int = 0,
    marker_word: str | None = None,
) -> dict[str, dict[str, float]]:
    """
    Samples `samples_per_prompt` completions of each prompt from `policy` and scores each with the reward of the
    prompt's user (`user_ids[i]` for `prompts[i]`). Returns `{user: {"reward": mean, "marker": rate}}`, the marker rate
    (the fraction of samples containing `marker_word` as a word) only when `marker_word` is given.
    """
    torch.manual_seed(seed)
    candidates = sample_candidates(
        policy, tokenizer, prompts, num_candidates=samples_per_prompt, max_new_tokens=max_new_tokens, batch_size=8
    )
    flat = [(p, c, u) for p, options, u in zip(prompts, candidates, user_ids) for c in options]
    rewards = reward.score(*map(list, zip(*flat))).tolist()
    per_user: dict[str, dict[str, list]] = {}
    for (_, completion, user), value in zip(flat, rewards):
        entry = per_user.setdefault(user, {"reward": [], "marker": []})
        entry["reward"].append(value)
        if marker_word is not None:
            text = completion if isinstance(completion, str) else completion[-1]["content"]
            entry["marker"].append(marker_word in text.split())
    return {
        user: {key: sum(values) / len(values) for key, values in entry.items() if values}
        for user, entry in per_user.items()
    }


def format_policy_summary(before: dict, after: dict, marker_word: str | None = None) -> str:
    """The before/after table of two [`personalized_policy_summary`] results, one line per user."""
    header = f"{'user':<16} {'own reward before':>18} {'after':>8}"
    if marker_word is not None:
        header += f" {repr(marker_word) + ' rate before':>20} {'after':>6}"
    lines = ["Personalisation: the policy's samples scored by each user's own reward", header]
    for user in before:
        b, a = before[user], after[user]
        line = f"{user:<16} {b['reward']:>+18.3f} {a['reward']:>+8.3f}"
        if marker_word is not None:
            line += f" {b['marker']:>20.0%} {a['marker']:>6.0%}"
        lines.append(line)
    return "\n".join(lines)
