"""UltraFeedback-P: UltraFeedback pairs relabelled by one fine-grained attribute per simulated user type (VPL).

Source: the mirror `RiverDong/ultrafeedback-personalized` on the Hugging Face Hub (configs `default`,
`controversial`, `ood`, `ood-controversial`; splits `train`, `test`),
https://huggingface.co/datasets/RiverDong/ultrafeedback-personalized. Built as in Poddar et al., "Personalizing
Reinforcement Learning from Human Feedback with Variational Preference Learning" (VPL), NeurIPS 2024,
https://arxiv.org/abs/2408.10075, from UltraFeedback (Cui et al., 2023, https://arxiv.org/abs/2310.01377): each user
type prefers the response rated higher on one attribute (`helpfulness`, `honesty`, `instruction_following`,
`truthfulness`); the other configs are the mirror's variants (controversial pairs, out-of-distribution users),
see its dataset card.

Upstream schema (one row per comparison): `prompt` (str), `chosen` (str), `rejected` (str), `attributes` (str: the
user type's attribute, the rater column). VPL's two-user experiments keep `helpfulness` and `honesty`
(`attributes=["helpfulness", "honesty"]`).

Conversational copies (where `chosen`/`rejected` are message lists repeating the prompt) are reduced to the
assistant messages after the last user message, with the prompt as a one-message conversation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from datasets import Dataset

from .raw import load_raw_split, require_columns


ULTRAFEEDBACK_P_HUB_ID = "RiverDong/ultrafeedback-personalized"
ULTRAFEEDBACK_P_ATTRIBUTES = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _completion_messages(messages: list[dict]) -> list[dict]:
    """The assistant messages after the last user message (the completion of a full conversation)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return [{"role": m["role"], "content": m["content"]} for m in messages[last_user + 1 :]]


def load_ultrafeedback_p(
    path_or_id: str | os.PathLike = ULTRAFEEDBACK_P_HUB_ID,
    split: str = "train",
    *,
    name: str | None = None,
    user_column: str = "attributes",
    attributes: Sequence[str] | None = None,
) -> Dataset:
    """UltraFeedback-P in canonical form, `user_id` = the user type's attribute.

    Args:
        path_or_id: Hub id (default `RiverDong/ultrafeedback-personalized`), a local copy of the repository, or one
            data file.
        split: `"train"` or `"test"`.
        name: Config (`None`/`"default"`, `"controversial"`, `"ood"`, `"ood-controversial"`).
        user_column: Column holding the user type.
        attributes: Keep only these user types (e.g. `["helpfulness", "honesty"]` as in VPL).

    Returns:
        `Dataset` with `prompt`, `chosen`, `rejected`, `user_id` (other upstream columns are dropped).
    """
    raw = load_raw_split(path_or_id, split, name=name)
    require_columns(raw, ["prompt", "chosen", "rejected"], source="UltraFeedback-P", rater_column=user_column)
    if attributes is not None:
        wanted = set(attributes)
        raw = raw.filter(lambda a: a in wanted, input_columns=user_column)

    def to_canonical(example: dict) -> dict:
        prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
        if isinstance(chosen, list):
            chosen, rejected = _completion_messages(chosen), _completion_messages(rejected)
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "user_id": str(example[user_column])}

    return raw.map(to_canonical, remove_columns=raw.column_names)


__all__ = ["ULTRAFEEDBACK_P_ATTRIBUTES", "ULTRAFEEDBACK_P_HUB_ID", "load_ultrafeedback_p"]
