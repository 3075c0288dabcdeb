"""
OpenRLHF's remote-reward protocol, as the server and the in-process integrations read it.

OpenRLHF (`--reward.remote_url http://host:port/get_reward`) posts `{"query": [...], "prompts": [...], "labels":
[...]}` per rollout: `query` the prompt and response decoded with their special tokens (chat template included when
`--data.apply_chat_template`), `prompts` the prompt, `labels` the dataset column named by `--data.label_key`. It reads
`rewards` (and `scores`) from `{"rewards": [...], "scores": [...], "extra_logs": {...}}`; `extra_logs` values are
logged as metrics. The file route (`--reward.remote_url file.py`) calls `reward_func(queries, prompts, labels)` with
the same lists and reads the same dictionary.
"""

import json
from collections.abc import Hashable

from transformers import PreTrainedTokenizerBase

from ..models.user_table import normalize_user_id


LABEL_USER_KEY = "user_id"


class RequestError(ValueError):
    """A request that cannot be served as sent, answered with `status_code` (a 4xx); the message names the
    problem."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


class UnknownUserError(RequestError):
    """Users the model does not know, refused (`--unknown_users error`)."""


def user_of_label(label, position: int) -> str:
    """
    The user of one OpenRLHF label: a plain id (`"alice"`, `17`), or a JSON object with a `user_id` key (a dict, or
    its JSON text) for datasets whose label column carries more than the user. Raises a [`RequestError`] naming
    `labels[position]` when there is no user in it (e.g. OpenRLHF run without `--data.label_key`, which sends `""`).
    """
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as error:
            raise RequestError(f"labels[{position}] starts with '{{' but is not valid JSON ({error.msg}).") from None
    if isinstance(label, dict):
        if LABEL_USER_KEY not in label:
            raise RequestError(
                f"labels[{position}] is an object without a {LABEL_USER_KEY!r} key (keys: {sorted(label)[:10]})."
            )
        label = label[LABEL_USER_KEY]
    if label is None or label == "":
        raise RequestError(
            f"labels[{position}] holds no user: run OpenRLHF with `--data.label_key user_id` (the dataset column of "
            "each prompt's user)."
        )
    try:
        return normalize_user_id(label)
    except ValueError as error:
        raise RequestError(f"labels[{position}]: {error}") from None


def normalize_request_user(user_id: Hashable | None, where: str) -> str | None:
    """A user id of a request (`None`: the population), normalised as the model keys its users; `where` names it in
    the error (`"user_ids[3]"`)."""
    if user_id is None:
        return None
    try:
        return normalize_user_id(user_id)
    except ValueError as error:
        raise RequestError(f"{where}: {error}") from None


def tokenize_query(processing_class: PreTrainedTokenizerBase, query: str) -> list[int]:
    """
    Token ids of an OpenRLHF query, a whole decoded sequence, as TRL's `RewardTrainer` tokenises plain text (EOS
    appended when missing), except that a query already starting with the tokenizer's BOS gets no second one: OpenRLHF
    decodes with the special tokens, so a chat-templated query carries the template's BOS itself. A conversation
    rendered by the reward model's own chat template gets the ids its training pairs had, when the template ends the
    assistant turn with EOS (one that adds text after it, such as Qwen's newline, loses that last token).
    """
    if not isinstance(query, str):
        raise TypeError(f"A query must be text, got {type(query).__name__}.")
    eos, bos = processing_class.eos_token, processing_class.bos_token
    text = query if eos is None or query.endswith(eos) else query + eos
    add_special_tokens = not (bos and text.startswith(bos))
    return list(processing_class(text=text, add_special_tokens=add_special_tokens)["input_ids"])


def openrlhf_answer(rewards: list[float], population_rewards: list[float]) -> dict:
    """The answer OpenRLHF reads: `rewards` and `scores` (the same values, as its own `serve_rm`), and the population
    reward of each sample under `extra_logs` (logged as `population_reward`: how far each user's reward departs from
    the population's)."""
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"population_reward": population_rewards}}
