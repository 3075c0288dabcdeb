"""
DPO with a personalised reward, by relabelling: score candidate completions with each user's reward `r_u` and turn
them into that user's `prompt/chosen/rejected` pairs, ready for the stock `trl.DPOTrainer`.

    candidates = sample_candidates(policy, tokenizer, prompts, num_candidates=4)      # or bring your own
    pairs = relabel_preferences(reward, prompts, candidates, user_ids=["alice", "bob"])
    DPOTrainer(model=policy, train_dataset=pairs.filter(lambda r: r["user_id"] == "alice"), ...)

The features of every (prompt, candidate) are computed once; scoring them for any number of users is a matrix product.
"""

from collections.abc import Hashable, Sequence

import torch
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational

from ..models.user_table import normalize_user_id
from .personalized_reward import PersonalizedReward


PAIRINGS = ("best_vs_worst", "all_pairs")


@torch.no_grad()
def sample_candidates(
    policy: PreTrainedModel,
    processing_class: PreTrainedTokenizerBase,
    prompts: Sequence,
    *,
    num_candidates: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
) -> list[list]:
    """
    Samples `num_candidates` completions of every prompt from `policy`. Plain prompts give text completions;
    conversational prompts (lists of messages) are rendered with the chat template and give assistant messages.

    Returns:
        `list[list]`: for each prompt, its candidates (strings, or `[{"role": "assistant", "content": ...}]`).
    """
    if num_candidates < 2:
        raise ValueError(f"`num_candidates` must be >= 2 to form pairs, got {num_candidates}.")
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    padding_side = processing_class.padding_side
    processing_class.padding_side = "left"  # generation continues from the last position of every row
    generation_config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_candidates,
        pad_token_id=processing_class.pad_token_id,
        eos_token_id=processing_class.eos_token_id,
    )
    candidates = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            conversational = is_conversational({"prompt": chunk[0]})
            if conversational:
                texts = [
                    processing_class.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk
                ]
            else:
                texts = chunk
            inputs = processing_class(text=texts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            output = policy.generate(**inputs, generation_config=generation_config)
            completions = processing_class.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            if conversational:
                completions = [[{"role": "assistant", "content": c.strip()}] for c in completions]
            for i in range(len(chunk)):
                candidates.append(completions[i * num_candidates : (i + 1) * num_candidates])
    finally:
        processing_class.padding_side = padding_side
        policy.train(was_training)
    return candidates


def relabel_preferences(
    reward: PersonalizedReward,
    prompts: Sequence,
    candidates: Sequence[Sequence],
    user_ids: Sequence[Hashable] | None = None,
    prompt_user_ids: Sequence[Hashable] | None = None,
    pairing: str = "best_vs_worst",
    margin: float = 0.0,
) -> Dataset:
    """
    Builds per-user preference pairs from candidate completions scored by each user's reward.

    Args:
        reward ([`PersonalizedReward`]):
            The personalised reward (its `strict` setting decides what happens to unknown users).
        prompts (sequence of `str` or of message lists):
            The prompts.
        candidates (sequence of sequences):
            For each prompt, two or more candidate completions (text, or assistant messages for conversational
            prompts), e.g. from [`sample_candidates`].
        user_ids (sequence of hashable, *optional*):
            Relabel every prompt for each of these users (several policies, or one user-conditioned policy).
        prompt_user_ids (sequence of hashable, *optional*):
            Alternatively, the one user of each prompt (a dataset with a user column). Exactly one of `user_ids` and
            `prompt_user_ids` must be given.
        pairing (`str`, *optional*, defaults to `"best_vs_worst"`):
            `"best_vs_worst"`: one pair per prompt and user, the highest- against the lowest-reward candidate.
            `"all_pairs"`: every pair of candidates whose rewards differ by more than `margin`.
        margin (`float`, *optional*, defaults to `0.0`):
            Pairs whose reward difference is not larger than this are dropped (ties carry no preference).

    Returns:
        [`~datasets.Dataset`] with columns `prompt`, `chosen`, `rejected`, `user_id` (string form), `chosen_reward`,
        `rejected_reward`: the standard DPO format (conversational when the prompts are), plus the user and scores.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"`pairing` must be one of {PAIRINGS}, got {pairing!r}.")
    if margin < 0:
        raise ValueError(f"`margin` must be >= 0, got {margin}.")
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts for {len(candidates)} candidate lists.")
    if (user_ids is None) == (prompt_user_ids is None):
        raise ValueError("Pass exactly one of `user_ids` (every prompt for every user) and `prompt_user_ids`.")
    if prompt_user_ids is not None and len(prompt_user_ids) != len(prompts):
        raise ValueError(f"{len(prompt_user_ids)} prompt user ids for {len(prompts)} prompts.")
    for i, options in enumerate(candidates):
        if len(options) < 2:
            raise ValueError(f"Prompt {i} has {len(options)} candidate(s); at least 2 are needed to form a pair.")

    # One feature pass over all (prompt, candidate) pairs, whatever the number of users.
    flat_prompts = [p for p, options in zip(prompts, candidates, strict=True) for _ in options]
    flat_candidates = [c for options in candidates for c in options]
    phi = reward.features(flat_prompts, flat_candidates)  # [N, d]
    if user_ids is not None:
        users = list(dict.fromkeys(normalize_user_id(u) for u in user_ids))
        scores = (phi @ reward.user_weights(users).to(phi.device).T).cpu()  # [N, U]
        row_users = [users] * len(prompts)
    else:
        users = [normalize_user_id(u) for u in prompt_user_ids]
        row_weights = reward.user_weights(users).to(phi.device)  # [P, d]
        counts = torch.tensor([len(options) for options in candidates], device=phi.device)
        scores = (phi * row_weights.repeat_interleave(counts, dim=0)).sum(-1, keepdim=True).cpu()  # [N, 1]
        row_users = [[u] for u in users]

    rows = []
    offset = 0
    for i, (prompt, options) in enumerate(zip(prompts, candidates, strict=True)):
        block = scores[offset : offset + len(options)]  # [n_candidates, U or 1]
        offset += len(options)
        for column, user in enumerate(row_users[i]):
            values = block[:, column if user_ids is not None else 0].tolist()
            for a, b in _pairs(values, pairing, margin):
                rows.append(
                    {
                        "prompt": prompt,
                        "chosen": options[a],
                        "rejected": options[b],
                        "user_id": user,
                        "chosen_reward": values[a],
                        "rejected_reward": values[b],
                    }
                )
    if not rows:
        raise ValueError(f"No pair has a reward difference above `margin={margin}`; lower it or add candidates.")
    return Dataset.from_list(rows)


def _pairs(values: list[float], pairing: str, margin: float) -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices with `values[chosen] - values[rejected] > margin`."""
    if pairing == "best_vs_worst":
        best = max(range(len(values)), key=values.__getitem__)
        worst = min(range(len(values)), key=values.__getitem__)
        return [(best, worst)] if values[best] - values[worst] > margin else []
    return [
        (a, b) if values[a] > values[b] else (b, a)
        for a in range(len(values))
        for b in range(a + 1, len(values))
        if abs(values[a] - values[b]) > margin
    ]
