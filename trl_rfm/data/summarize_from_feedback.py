"""OpenAI's summarize-from-feedback comparisons: which of two TL;DR summaries a given labeller preferred.

Source: `openai/summarize_from_feedback` on the Hugging Face Hub, config `"comparisons"` (splits `train`,
`validation`), https://huggingface.co/datasets/openai/summarize_from_feedback. Stiennon et al., "Learning to
summarize from human feedback", NeurIPS 2020, https://arxiv.org/abs/2009.01325; raw data described at
https://github.com/openai/summarize-from-feedback.

Upstream schema (one row per comparison; fields read here in bold):

- **`info`**: `{id, post, title, subreddit, site, article}`; Reddit TL;DR rows have `post`/`subreddit`, CNN/DM rows
  have `article` (and `site`) instead, the other fields being null.
- **`summaries`**: list of two `{text, policy, note}`.
- **`choice`**: index (0 or 1) of the preferred summary.
- **`worker`**: the labeller's id (the rater column).
- `batch` (e.g. `"batch3"`, `"cnndm0"`), `split` (`"train"`, `"valid1"`, `"valid2"`), `extra` (`{confidence}`).

The prompt follows TRL's TL;DR preference format (`SUBREDDIT: r/...\\n\\nTITLE: ...\\n\\nPOST: ...\\n\\nTL;DR:`; for
articles `TITLE: ...\\n\\nARTICLE\\n\\nTL;DR:`); completions start with a space so that `prompt + chosen` reads
naturally.
"""

from __future__ import annotations

import os
from collections import Counter

from datasets import Dataset

from .raw import column_values, load_raw_split, require_columns


SUMMARIZE_FROM_FEEDBACK_HUB_ID = "openai/summarize_from_feedback"
SUMMARIZE_FROM_FEEDBACK_CONFIG = "comparisons"

_REQUIRED = ["info", "summaries", "choice"]


def tldr_prompt(info: dict) -> str:
    """TRL's TL;DR prompt for the `info` of a comparison (Reddit post, or news article when there is no post)."""
    title = (info.get("title") or "").strip()
    post = info.get("post")
    if post:
        post = post.strip().replace("\n\n", "\n")
        return f"SUBREDDIT: r/{info.get('subreddit') or ''}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
    article = (info.get("article") or "").strip().replace("\n\n", "\n")
    return f"TITLE: {title}\n\n{article}\n\nTL;DR:"


def load_summarize_from_feedback(
    path_or_id: str | os.PathLike = SUMMARIZE_FROM_FEEDBACK_HUB_ID,
    split: str = "train",
    *,
    name: str | None = SUMMARIZE_FROM_FEEDBACK_CONFIG,
    user_column: str = "worker",
    min_comparisons_per_worker: int = 1,
) -> Dataset:
    """summarize-from-feedback comparisons in canonical form, one row per comparison, `user_id` = the labeller.

    Args:
        path_or_id: Hub id (default `openai/summarize_from_feedback`), a local copy of the repository (with its
            `README.md` declaring the configs), or one data file of the comparisons config.
        split: `"train"` or `"validation"`.
        name: Config to load (`"comparisons"`).
        user_column: Column holding the labeller id.
        min_comparisons_per_worker: Drop labellers with fewer comparisons in this split (many label only a few).

    Returns:
        `Dataset` with `prompt`, `chosen`, `rejected` (strings) and `user_id`, plus `batch` when upstream has it.
    """
    raw = load_raw_split(path_or_id, split, name=name)
    require_columns(raw, _REQUIRED, source="summarize_from_feedback", rater_column=user_column)
    if min_comparisons_per_worker > 1:
        counts = Counter(column_values(raw, user_column))
        raw = raw.filter(lambda w: counts[w] >= min_comparisons_per_worker, input_columns=user_column)

    keep_batch = "batch" in raw.column_names

    def to_pair(example: dict) -> dict:
        choice = int(example["choice"])
        if choice not in (0, 1) or len(example["summaries"]) != 2:
            raise ValueError(f"summarize_from_feedback: expected two summaries and choice in {{0, 1}}, got {example}.")
        pair = {
            "prompt": tldr_prompt(example["info"]),
            "chosen": " " + example["summaries"][choice]["text"].strip(),
            "rejected": " " + example["summaries"][1 - choice]["text"].strip(),
            "user_id": str(example[user_column]),
        }
        if keep_batch:
            pair["batch"] = example["batch"]
        return pair

    pairs = raw.map(to_pair, remove_columns=raw.column_names)
    return pairs.select_columns(["prompt", "chosen", "rejected", "user_id"] + (["batch"] if keep_batch else []))


__all__ = [
    "SUMMARIZE_FROM_FEEDBACK_CONFIG",
    "SUMMARIZE_FROM_FEEDBACK_HUB_ID",
    "load_summarize_from_feedback",
    "tldr_prompt",
]
