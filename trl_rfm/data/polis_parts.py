"""
The parts of the Polis evaluations (`benchmarks/polis_*.py`), every one split on participants, statements and votes
before any pair is formed, so that no test answer reaches training through a shared statement:

- [`polis_evaluation_parts`]: training vs held-out participants; training participants' votes into `train`/`val`,
  held-out participants' votes into `heldout_adaptation`/`heldout_test`.
- [`polis_unseen_statement_parts`]: the same with each conversation's statements split as well, so that the test
  pairs of held-out participants hold only statements that no training or adaptation pair holds
  ([`split_polis_statements`] gives the split per vote).
- [`add_statement_ids`]: one word per statement in its text, for controls that give every statement its own
  embedding; [`index_polis_statements`]: every statement indexed once, for models with one vector per statement.

Pairs are derived from votes (see [`trl_rfm.data.polis`], whose CC BY 4.0 attribution applies).
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from .polis import make_polis_pairs, split_polis_votes
from .splits import split_users


ADAPTATION_STATEMENTS = ("training", "test")


def _pairs_with_separator(votes: Dataset, max_pairs_per_user: int | None, seed: int, separator: str) -> Dataset:
    # The separator keeps the topic and the statement apart in TRL's `prompt + chosen`.
    pairs = make_polis_pairs(votes, max_pairs_per_user, seed)
    return pairs.map(lambda row: {"prompt": row["prompt"] + separator})


def polis_evaluation_parts(
    votes: Dataset,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    max_train_pairs_per_user: int | None = 48,
    max_val_pairs_per_user: int | None = 16,
    max_eval_pairs_per_user: int | None = 64,
    prompt_separator: str = " :",
    heldout_adaptation_fraction: float = 0.5,
    max_adaptation_pairs_per_user: int | None = None,
) -> dict[str, Dataset]:
    """
    The leak-free parts of an adaptation evaluation on Polis votes (every split made on votes, before pairs):
    participants split into training and held-out ones (`heldout_fraction`); each training participant's votes 80/20
    into `train` and `val`, and `val` once more in halves `val_fit`/`val_check` (for choosing the new users' prior on
    pairs that share no vote); each held-out participant's votes into `heldout_adaptation`
    (`heldout_adaptation_fraction`, half by default) and `heldout_test`; `max_adaptation_pairs_per_user` caps the
    adaptation pool (default: `max_eval_pairs_per_user`).
    Pairs are formed inside each part (capped per participant), and `prompt_separator` is appended to the topic so
    that TRL's `prompt + chosen` keeps the words apart.
    """
    users = split_users(votes, heldout_fraction=heldout_fraction, seed=seed)
    seen = split_polis_votes(users["train"], {"train": 0.8, "val": 0.2}, seed=seed)
    seen.update(split_polis_votes(seen["val"], {"val_fit": 0.5, "val_check": 0.5}, seed=seed))
    fractions = {"adaptation": heldout_adaptation_fraction, "test": 1.0 - heldout_adaptation_fraction}
    heldout = split_polis_votes(users["heldout"], fractions, seed=seed)
    caps = {"train": max_train_pairs_per_user, "val": max_val_pairs_per_user}
    if max_adaptation_pairs_per_user is not None:
        caps["heldout_adaptation"] = max_adaptation_pairs_per_user
    return {
        name: _pairs_with_separator(part, caps.get(name, max_eval_pairs_per_user), seed, prompt_separator)
        for name, part in [*seen.items(), *((f"heldout_{n}", p) for n, p in heldout.items())]
    }


def split_polis_statements(
    votes: Dataset, test_statement_fraction: float = 0.3, heldout_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """
    Per vote of `votes` ([`load_polis_votes`] rows): whether its statement is a test statement (a fraction
    `test_statement_fraction` of each conversation's statements, drawn conversation by conversation in sorted order
    from one generator seeded by `seed`), and whether its participant is held out (the participant split of
    [`split_users`] with `heldout_fraction` and `seed`). Two boolean arrays aligned with the rows of `votes`.
    """
    conversation = np.asarray(votes["conversation"])
    comment_id = np.asarray(votes["comment_id"])
    user_id = np.asarray(votes["user_id"])
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(votes), dtype=bool)
    for name in sorted(set(conversation.tolist())):
        in_conversation = conversation == name
        items = np.unique(comment_id[in_conversation])
        test_items = items[rng.permutation(len(items))[: int(round(test_statement_fraction * len(items)))]]
        is_test |= in_conversation & np.isin(comment_id, test_items)
    # One row per participant gives `split_users` the same permutation as the votes themselves would.
    participants = Dataset.from_dict({"user_id": sorted(set(user_id.tolist()))})
    heldout = set(split_users(participants, heldout_fraction, seed)["heldout"]["user_id"])
    return is_test, np.isin(user_id, list(heldout))


def polis_unseen_statement_parts(
    votes: Dataset,
    seed: int = 0,
    test_statement_fraction: float = 0.3,
    heldout_fraction: float = 0.2,
    max_train_pairs_per_user: int | None = 32,
    max_val_pairs_per_user: int | None = 16,
    max_eval_pairs_per_user: int | None = 64,
    adaptation_statements: str = "training",
    prompt_separator: str = " :",
) -> dict[str, Dataset]:
    """
    The parts of an evaluation on statements no model trained on ([`split_polis_statements`] splits statements and
    participants): training participants' votes on training statements 80/20 into `train` and `val`; held-out
    participants' votes on training statements 50/50 into `adaptation` and `seen_test`, and their votes on test
    statements into `unseen_test`. With `adaptation_statements="test"` (a control), the held-out participants' votes
    on test statements are split 50/50 into `adaptation` and `unseen_test` instead. Pairs are formed inside each part,
    capped per participant, with `prompt_separator` appended to the topic.
    """
    if adaptation_statements not in ADAPTATION_STATEMENTS:
        raise ValueError(
            f"`adaptation_statements` must be one of {ADAPTATION_STATEMENTS}, got {adaptation_statements!r}."
        )
    is_test, is_heldout = split_polis_statements(votes, test_statement_fraction, heldout_fraction, seed)

    def subset(mask: np.ndarray) -> Dataset:
        return votes.select(np.flatnonzero(mask))

    seen = split_polis_votes(subset(~is_test & ~is_heldout), {"train": 0.8, "val": 0.2}, seed=seed)
    held = split_polis_votes(subset(~is_test & is_heldout), {"adaptation": 0.5, "seen_test": 0.5}, seed=seed)
    parts = {
        "train": (seen["train"], max_train_pairs_per_user),
        "val": (seen["val"], max_val_pairs_per_user),
        "adaptation": (held["adaptation"], max_eval_pairs_per_user),
        "seen_test": (held["seen_test"], max_eval_pairs_per_user),
        "unseen_test": (subset(is_test & is_heldout), max_eval_pairs_per_user),
    }
    if adaptation_statements == "test":
        unseen = split_polis_votes(parts["unseen_test"][0], {"adaptation": 0.5, "test": 0.5}, seed=seed)
        parts["adaptation"] = (unseen["adaptation"], max_eval_pairs_per_user)
        parts["unseen_test"] = (unseen["test"], max_eval_pairs_per_user)
    return {name: _pairs_with_separator(part, cap, seed, prompt_separator) for name, (part, cap) in parts.items()}


def add_statement_ids(votes: Dataset, keep_text: bool = True) -> Dataset:
    """`votes` with one word `s<conversation index>_<statement id>` per statement, unique across conversations,
    before its text (`keep_text=False`: in place of it, so that a model sees the statement's identity only)."""
    index = {c: i for i, c in enumerate(sorted(set(votes["conversation"])))}

    def with_id(row: dict) -> dict:
        word = f"s{index[row['conversation']]}_{row['comment_id']}"
        return {"statement": f"{word} {row['statement']}" if keep_text else word}

    return votes.map(with_id)


def index_polis_statements(
    parts: dict[str, Dataset],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[tuple[str, int]]]:
    """Every `(conversation, statement id)` of the pairs of `parts` indexed once, in order of first appearance: each
    part's pairs as `(chosen, rejected)` index tensors, and the statements in index order."""
    index: dict[tuple[str, int], int] = {}
    pairs = {}
    for name, part in parts.items():
        conversations = part["conversation"]
        chosen = [index.setdefault(key, len(index)) for key in zip(conversations, part["chosen_item"])]
        rejected = [index.setdefault(key, len(index)) for key in zip(conversations, part["rejected_item"])]
        pairs[name] = (torch.tensor(chosen), torch.tensor(rejected))
    return pairs, list(index)
