"""PersonalLLM: simulated users as Dirichlet mixtures of reward models scoring eight responses per prompt.

Source: `namkoong-lab/PersonalLLM` on the Hugging Face Hub (splits `train`, `test`; CC BY 4.0),
https://huggingface.co/datasets/namkoong-lab/PersonalLLM. Zollo et al., "PersonalLLM: Tailoring LLMs to Individual
Preferences", ICLR 2025, https://arxiv.org/abs/2409.20296.

Upstream schema (one row per prompt):

- `prompt` (str), `prompt_id` (int), `subset` (str, the prompt's source dataset);
- `response_1` ... `response_8` (str) and `response_<i>_model` (the generating LLM);
- `response_<i>_<rm>` (float): the score of response `i` under reward model `<rm>`, for ten reward models:
  `gemma_2b, gemma_7b, mistral_raft, llama3_sfairx, oasst_deberta_v3, beaver_7b, oasst_pythia_7b, oasst_pythia_1b,
  mistral_ray, mistral_weqweasdas`.

There are no human raters: as in PersonalLLM, a simulated user `u` has weights `w_u ~ Dirichlet(alpha * 1)` over the
reward models and reward `r_u(x, y) = sum_k w_uk * z_k(x, y)`, where `z_k` is reward model `k`'s score standardised
over all (prompt, response) scores of the loaded split. Smaller `alpha` puts each user closer to a single reward
model (a more heterogeneous population). Users are reproducible from (`seed`, reward-model list, `alpha`), so the
same user ids get the same weights in `train` and `test`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from datasets import Dataset

from .raw import column_values, load_raw_split, require_columns
from .splits import user_rng


PERSONAL_LLM_HUB_ID = "namkoong-lab/PersonalLLM"
PERSONAL_LLM_REWARD_MODELS = (
    "gemma_2b",
    "gemma_7b",
    "mistral_raft",
    "llama3_sfairx",
    "oasst_deberta_v3",
    "beaver_7b",
    "oasst_pythia_7b",
    "oasst_pythia_1b",
    "mistral_ray",
    "mistral_weqweasdas",
)
NUM_RESPONSES = 8
PAIR_STRATEGIES = ("best_vs_worst", "random")

_SCORE_COLUMN = re.compile(r"^response_(\d+)_(.+)$")


def detect_reward_models(column_names: Sequence[str]) -> list[str]:
    """Reward models with a score column for every response (`response_<i>_<rm>` for i = 1..8), in column order."""
    seen: dict[str, set[int]] = {}
    for column in column_names:
        match = _SCORE_COLUMN.match(column)
        if match and match.group(2) != "model":
            seen.setdefault(match.group(2), set()).add(int(match.group(1)))
    return [rm for rm, indices in seen.items() if indices >= set(range(1, NUM_RESPONSES + 1))]


def sample_personal_llm_users(
    num_users: int, num_reward_models: int, alpha: float = 0.05, seed: int = 0
) -> np.ndarray:
    """Mixture weights of `num_users` simulated users, `[num_users, num_reward_models]`, rows ~ Dirichlet(alpha)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}.")
    return np.random.default_rng(seed).dirichlet(np.full(num_reward_models, alpha), size=num_users)


def load_personal_llm(
    path_or_id: str | os.PathLike = PERSONAL_LLM_HUB_ID,
    split: str = "train",
    *,
    num_users: int = 100,
    alpha: float = 0.05,
    reward_models: Sequence[str] | None = None,
    user_weights: np.ndarray | None = None,
    prompts_per_user: int | None = 50,
    pair_strategy: str = "best_vs_worst",
    with_margin: bool = False,
    seed: int = 0,
) -> Dataset:
    """PersonalLLM pairs for simulated users, in canonical form.

    Args:
        path_or_id: Hub id (default `namkoong-lab/PersonalLLM`), a local copy of the repository, or one parquet file.
        split: `"train"` or `"test"`.
        num_users: Number of simulated users (ignored when `user_weights` is given).
        alpha: Concentration of the symmetric Dirichlet over reward models.
        reward_models: Reward models mixed (default: every model with eight score columns, in column order).
        user_weights: Explicit `[num_users, len(reward_models)]` weights, e.g. from [`sample_personal_llm_users`].
        prompts_per_user: Prompts sampled per user without replacement (seeded per user); `None` uses every prompt.
        pair_strategy: `"best_vs_worst"` (the user's highest- vs lowest-reward response) or `"random"` (two distinct
            random responses, oriented by the user's reward).
        with_margin: Add `margin`, the user's reward difference (in standardised units).
        seed: Seed of the users' weights and of the per-user sampling.

    Returns:
        `Dataset` with `prompt`, `chosen`, `rejected` (strings), `user_id` (`"personal_llm_user_<k>"`), optional
        `margin`, and `prompt_index` (row in the split), `chosen_item`, `rejected_item` (response numbers 1-8).
    """
    if pair_strategy not in PAIR_STRATEGIES:
        raise ValueError(f"pair_strategy must be one of {PAIR_STRATEGIES}, got {pair_strategy!r}.")
    raw = load_raw_split(path_or_id, split)
    responses = [f"response_{i}" for i in range(1, NUM_RESPONSES + 1)]
    require_columns(raw, ["prompt", *responses], source="PersonalLLM")
    reward_models = list(reward_models) if reward_models is not None else detect_reward_models(raw.column_names)
    if not reward_models:
        raise ValueError(
            "PersonalLLM: no reward-model score columns (`response_<i>_<rm>`) found, so no simulated user (rater) "
            f"can be built; columns found: {raw.column_names}."
        )
    require_columns(
        raw, [f"{r}_{rm}" for rm in reward_models for r in responses], source="PersonalLLM reward-model scores"
    )

    if user_weights is None:
        user_weights = sample_personal_llm_users(num_users, len(reward_models), alpha, seed)
    user_weights = np.asarray(user_weights, dtype=float)
    if user_weights.ndim != 2 or user_weights.shape[1] != len(reward_models):
        raise ValueError(f"user_weights must have shape [num_users, {len(reward_models)}], got {user_weights.shape}.")

    # scores[p, i, k]: reward model k's score of response i to prompt p, standardised per reward model.
    scores = np.stack(
        [
            np.stack([np.asarray(column_values(raw, f"{r}_{rm}"), dtype=float) for rm in reward_models], -1)
            for r in responses
        ],
        axis=1,
    )
    mean, std = np.nanmean(scores, axis=(0, 1)), np.nanstd(scores, axis=(0, 1))
    scores = (scores - mean) / np.where(std > 0, std, 1.0)
    prompts = column_values(raw, "prompt")
    texts = [column_values(raw, r) for r in responses]
    valid = ~np.isnan(scores).any(axis=(1, 2)) & np.array(
        [all(isinstance(t[p], str) and t[p] for t in texts) for p in range(len(prompts))], dtype=bool
    )
    valid_prompts = np.flatnonzero(valid)

    columns = ["prompt", "chosen", "rejected", "user_id"] + (["margin"] if with_margin else [])
    columns += ["prompt_index", "chosen_item", "rejected_item"]
    rows: dict[str, list] = {c: [] for c in columns}
    for k, weights in enumerate(user_weights):
        user_id = f"personal_llm_user_{k}"
        rng = user_rng(seed, user_id)
        chosen_prompts = valid_prompts
        if prompts_per_user is not None and prompts_per_user < len(valid_prompts):
            chosen_prompts = np.sort(rng.choice(valid_prompts, size=prompts_per_user, replace=False))
        rewards = scores[chosen_prompts] @ weights  # [P, 8]
        for p, reward in zip(chosen_prompts, rewards):
            if pair_strategy == "best_vs_worst":
                best, worst = int(np.argmax(reward)), int(np.argmin(reward))
            else:
                a, b = rng.choice(NUM_RESPONSES, size=2, replace=False)
                best, worst = (int(a), int(b)) if reward[a] >= reward[b] else (int(b), int(a))
            if reward[best] == reward[worst]:
                continue
            rows["prompt"].append(prompts[p])
            rows["chosen"].append(texts[best][p])
            rows["rejected"].append(texts[worst][p])
            rows["user_id"].append(user_id)
            if with_margin:
                rows["margin"].append(float(reward[best] - reward[worst]))
            rows["prompt_index"].append(int(p))
            rows["chosen_item"].append(best + 1)
            rows["rejected_item"].append(worst + 1)
    return Dataset.from_dict(rows)


__all__ = [
    "PERSONAL_LLM_HUB_ID",
    "PERSONAL_LLM_REWARD_MODELS",
    "detect_reward_models",
    "load_personal_llm",
    "sample_personal_llm_users",
]
