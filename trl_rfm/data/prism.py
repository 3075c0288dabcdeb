"""PRISM: multi-turn conversations of 1,396 participants with 21 LLMs, every response rated 1-100 by the participant.

Source: `HannahRoseKirk/prism-alignment` on the Hugging Face Hub, config `"conversations"` (file
`conversations.jsonl`, split `train`), https://huggingface.co/datasets/HannahRoseKirk/prism-alignment.
Kirk et al., "The PRISM Alignment Dataset: What Participatory, Representative and Individualised Human Feedback
Reveals About the Subjective and Multicultural Alignment of Large Language Models", NeurIPS 2024 Datasets and
Benchmarks, https://arxiv.org/abs/2404.16019.

Upstream schema (one row per conversation; fields read here in bold):

- **`conversation_id`** (str), **`user_id`** (str, e.g. `"user0"`), `generated_datetime`, `timing_duration_s`,
  `conversation_type` (`"unguided"`, `"values guided"`, `"controversy guided"`), `opening_prompt`,
  `conversation_turns`, `performance_attributes`, `choice_attributes`, `open_feedback`,
  `included_in_balanced_subset`, ...
- **`conversation_history`**: list of utterances, each with **`turn`** (0-based), **`role`** (`"user"` or
  `"model"`), **`content`**, **`within_turn_id`** (index of a model response within its turn; null for the user),
  **`score`** (1-100 slider rating; null for the user), **`if_chosen`** (the highest-rated response, continued in
  the next turn), `utterance_id`, `provider`, `model_provider`, `model_name`.

In the opening turn four models answer; in later turns the chosen model gives two responses. Pairs are formed within
one turn from responses with different scores (higher score chosen; ties are skipped), for the conversation's
participant. The prompt is the conversational history up to and including that turn's user message, where earlier
turns contribute their user message and their chosen response (as `assistant`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import combinations

from datasets import Dataset

from .raw import load_raw_split, require_columns


PRISM_HUB_ID = "HannahRoseKirk/prism-alignment"
PRISM_CONFIG = "conversations"

_REQUIRED = ["conversation_id", "conversation_history"]


def prism_turn_pairs(history: Sequence[dict], with_margin: bool = False, min_score_gap: float = 1.0) -> list[dict]:
    """Preference pairs of one PRISM conversation: `prompt` (messages), `chosen`/`rejected` (one assistant message
    each), `turn`, `chosen_item`/`rejected_item` (`within_turn_id`) and, with `with_margin`, `margin`.

    Args:
        history: The conversation's `conversation_history`.
        with_margin: Add `margin = (score_chosen - score_rejected) / 100`.
        min_score_gap: Smallest score difference that makes a pair (ties never do).
    """
    turns: dict[int, dict[str, list[dict]]] = {}
    for utterance in history:
        turns.setdefault(int(utterance["turn"]), {"user": [], "model": []})
        turns[int(utterance["turn"])]["user" if utterance["role"] == "user" else "model"].append(utterance)

    pairs, context = [], []
    for turn in sorted(turns):
        users = turns[turn]["user"]
        models = [m for m in turns[turn]["model"] if m.get("score") is not None and m.get("content")]
        if not users:
            break  # malformed turn without a user message: the history cannot be continued
        context = context + [{"role": "user", "content": users[0]["content"]}]
        models.sort(key=lambda m: (m.get("within_turn_id") is None, m.get("within_turn_id")))
        for a, b in combinations(models, 2):
            gap = float(a["score"]) - float(b["score"])
            if abs(gap) < max(min_score_gap, 1e-9):
                continue
            chosen, rejected = (a, b) if gap > 0 else (b, a)
            pair = {
                "prompt": list(context),
                "chosen": [{"role": "assistant", "content": chosen["content"]}],
                "rejected": [{"role": "assistant", "content": rejected["content"]}],
                "turn": turn,
                "chosen_item": chosen.get("within_turn_id"),
                "rejected_item": rejected.get("within_turn_id"),
            }
            if with_margin:
                pair["margin"] = abs(gap) / 100.0
            pairs.append(pair)
        followed = [m for m in turns[turn]["model"] if m.get("if_chosen")]
        if not followed:
            break  # the conversation was not continued from this turn
        context = context + [{"role": "assistant", "content": followed[0]["content"]}]
    return pairs


def load_prism(
    path_or_id: str | os.PathLike = PRISM_HUB_ID,
    split: str = "train",
    *,
    name: str | None = PRISM_CONFIG,
    user_column: str = "user_id",
    with_margin: bool = False,
    min_score_gap: float = 1.0,
    conversation_types: Sequence[str] | None = None,
) -> Dataset:
    """PRISM rating pairs in canonical conversational form.

    Args:
        path_or_id: Hub id (default `HannahRoseKirk/prism-alignment`), a local copy of the repository (with its
            `README.md` declaring the configs), or the `conversations.jsonl` file itself.
        split: Split to load (upstream has only `"train"`).
        name: Config to load (`"conversations"`).
        user_column: Column holding the participant id.
        with_margin: Add a `margin` column, the score gap divided by 100.
        min_score_gap: Smallest score difference that makes a pair.
        conversation_types: Keep only these `conversation_type` values (e.g. `["controversy guided"]`).

    Returns:
        `Dataset` with `prompt` (list of messages), `chosen`, `rejected` (one assistant message each), `user_id`,
        optional `margin`, and `conversation_id`, `turn`, `chosen_item`, `rejected_item` (`within_turn_id`s).
    """
    raw = load_raw_split(path_or_id, split, name=name)
    require_columns(raw, _REQUIRED, source="PRISM", rater_column=user_column)
    if conversation_types is not None:
        if "conversation_type" not in raw.column_names:
            raise ValueError(f"PRISM: column 'conversation_type' not found; columns found: {raw.column_names}.")
        wanted = set(conversation_types)
        raw = raw.filter(lambda t: t in wanted, input_columns="conversation_type")

    columns = ["prompt", "chosen", "rejected", "user_id"] + (["margin"] if with_margin else [])
    columns += ["conversation_id", "turn", "chosen_item", "rejected_item"]
    rows: dict[str, list] = {c: [] for c in columns}
    for conversation in raw.select_columns([user_column, "conversation_id", "conversation_history"]):
        for pair in prism_turn_pairs(conversation["conversation_history"] or [], with_margin, min_score_gap):
            pair.update(user_id=str(conversation[user_column]), conversation_id=conversation["conversation_id"])
            for column in columns:
                rows[column].append(pair[column])
    return Dataset.from_dict(rows)


__all__ = ["PRISM_CONFIG", "PRISM_HUB_ID", "load_prism", "prism_turn_pairs"]
