"""Polis conversations: per-participant agree/disagree votes on short statements, as preference pairs.

Source: the Computational Democracy Project's openData repository (https://github.com/compdemocracy/openData), one
folder per conversation. Files read (upstream schema):

- `votes.csv`: `timestamp, datetime, comment-id, voter-id, vote` with `vote` in {1 (agree), -1 (disagree), 0 (pass)};
  a participant may vote several times on one statement (the latest vote counts).
- `comments.csv`: `timestamp, datetime, comment-id, author-id, agrees, disagrees, moderated, comment-body`;
  `moderated == -1` marks statements removed by the moderators (dropped here, with their votes).
- `summary.csv`: header-less `key,value` rows (`topic`, `url`, `views`, ..., `conversation-description`).

Pairs are *derived*, not direct pairwise choices: within one participant and one conversation, a statement they
agreed with is preferred to one they disagreed with (prompt = the conversation's topic, chosen/rejected = the two
statements, `user_id = "<conversation>:<voter-id>"`). Say so wherever results are reported.

Avoiding leakage: a statement appears in many pairs of the same participant, so splitting *pairs* into train and
test leaks test answers through shared statements (on these conversations per-user accuracy goes from about 85% to
about 98%). Split the *votes* first with [`split_polis_votes`] (or use [`load_polis`], which does), then form pairs
inside each part with [`make_polis_pairs`]. Participant-level splits (training vs held-out participants) are done
with [`trl_rfm.data.split_users`].

Licence and attribution (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/):

    Data was gathered using the Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0
    with Attribution to The Computational Democracy Project. The data and more information about how the data
    was collected can be found at the following link(s): https://compdemocracy.org/case-studies/ (one page per
    conversation, e.g. https://compdemocracy.org/case-studies/2014-seattle-15-per-hour).

Keep this attribution with any file derived from these loaders' output.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict

from .splits import split_items_per_user, split_users, user_rng


POLIS_ATTRIBUTION = (
    "Data was gathered using the Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with "
    "Attribution to The Computational Democracy Project."
)
AGREE, DISAGREE, PASS = 1, -1, 0
MODERATED_OUT = -1

_VOTE_COLUMNS = ["timestamp", "comment-id", "voter-id", "vote"]
_COMMENT_COLUMNS = ["comment-id", "moderated", "comment-body"]
_PAIR_COLUMNS = ["prompt", "chosen", "rejected", "user_id", "conversation", "chosen_item", "rejected_item"]


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _is_hub_id(path_or_id: str) -> bool:
    """True for an `owner/name` that is not a local path; a missing local path is an error, not a Hub id."""
    if os.path.exists(path_or_id):
        return False
    if not _HUB_ID.match(path_or_id) or path_or_id.startswith("."):
        raise FileNotFoundError(f"Polis data not found: {path_or_id!r} is neither a local directory nor a Hub id.")
    return True


def _conversation_root(path_or_id: str) -> str:
    """Local directory, or the `hf://` root of a Hub dataset repository holding the conversation folders."""
    return path_or_id if not _is_hub_id(path_or_id) else f"hf://datasets/{path_or_id}"


def list_polis_conversations(path_or_id: str | os.PathLike) -> list[str]:
    """Names of the conversation folders (those holding a `votes.csv`) under a local directory or Hub repository.

    A directory that is itself one conversation (it holds `votes.csv`) is listed as `[its folder name]`.
    """
    path = os.fspath(path_or_id)
    if not _is_hub_id(path):
        if os.path.isfile(os.path.join(path, "votes.csv")):
            return [os.path.basename(os.path.normpath(path))]
        return sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "votes.csv")))
    from huggingface_hub import HfFileSystem

    files = HfFileSystem().glob(f"datasets/{path}/*/votes.csv")
    return sorted(f.split("/")[-2] for f in files)


def _conversation_dir(path: str, conversation: str) -> str:
    if not _is_hub_id(path) and os.path.isfile(os.path.join(path, "votes.csv")):
        return path  # `path` is the conversation folder itself
    return f"{_conversation_root(path)}/{conversation}"


def _check_columns(
    frame: pd.DataFrame, columns: Sequence[str], location: str, rater_column: str | None = None
) -> None:
    found = list(frame.columns)
    if rater_column is not None and rater_column not in found:
        raise ValueError(f"Polis {location}: rater column {rater_column!r} not found; columns found: {found}.")
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"Polis {location}: missing column(s) {missing}; columns found: {found}.")


def read_polis_topic(path_or_id: str | os.PathLike, conversation: str) -> str:
    """The `topic` entry of a conversation's `summary.csv` (falls back to the conversation's folder name)."""
    location = f"{_conversation_dir(os.fspath(path_or_id), conversation)}/summary.csv"
    summary = pd.read_csv(location, header=None, names=["key", "value"], dtype=str, keep_default_na=False)
    topics = summary.loc[summary["key"].str.strip() == "topic", "value"]
    topic = topics.iloc[0].strip() if len(topics) else ""
    return topic or conversation


def load_polis_votes(
    path_or_id: str | os.PathLike,
    conversations: Sequence[str] | None = None,
    include_passes: bool = False,
) -> Dataset:
    """One row per (participant, statement) with the participant's latest vote, moderated statements removed.

    Args:
        path_or_id: Local directory holding conversation folders (or a single conversation folder), or the id of a
            Hub dataset repository with the same layout (read through `hf://`).
        conversations: Conversation folder names to read (default: all).
        include_passes: Keep pass votes (0). They never form pairs, so they are dropped by default.

    Returns:
        `Dataset` with columns `conversation, topic, user_id, voter_id, comment_id, vote, timestamp, statement`,
        sorted by conversation, voter and statement. `user_id` is `"<conversation>:<voter-id>"`.
    """
    path = os.fspath(path_or_id)
    available = list_polis_conversations(path)
    if conversations is None:
        conversations = available
    unknown = sorted(set(conversations) - set(available))
    if unknown:
        raise ValueError(f"Unknown Polis conversation(s) {unknown}; found: {available}.")

    frames = []
    for conversation in conversations:
        folder = _conversation_dir(path, conversation)
        votes = pd.read_csv(f"{folder}/votes.csv")
        _check_columns(votes, _VOTE_COLUMNS, f"{folder}/votes.csv", rater_column="voter-id")
        comments = pd.read_csv(f"{folder}/comments.csv")
        _check_columns(comments, _COMMENT_COLUMNS, f"{folder}/comments.csv")

        kept = comments[(comments["moderated"] != MODERATED_OUT) & comments["comment-body"].notna()]
        kept = kept.assign(statement=kept["comment-body"].astype(str).str.strip())
        kept = kept[kept["statement"] != ""]
        statements = kept.drop_duplicates("comment-id").set_index("comment-id")["statement"]

        # Latest vote per (voter, statement); ties on timestamp are broken by file order (the later row wins).
        votes = votes.reset_index(names="row").sort_values(["timestamp", "row"], kind="stable")
        votes = votes.drop_duplicates(["voter-id", "comment-id"], keep="last")
        votes = votes[votes["comment-id"].isin(statements.index)]
        if not include_passes:
            votes = votes[votes["vote"] != PASS]

        frames.append(
            pd.DataFrame(
                {
                    "conversation": conversation,
                    "topic": read_polis_topic(path, conversation),
                    "user_id": [f"{conversation}:{v}" for v in votes["voter-id"]],
                    "voter_id": votes["voter-id"].astype("int64").to_numpy(),
                    "comment_id": votes["comment-id"].astype("int64").to_numpy(),
                    "vote": votes["vote"].astype("int64").to_numpy(),
                    "timestamp": votes["timestamp"].astype("int64").to_numpy(),
                    "statement": statements.loc[votes["comment-id"]].to_numpy(),
                }
            ).sort_values(["voter_id", "comment_id"], kind="stable")
        )
    if not frames:
        raise ValueError(f"No Polis conversation found under {path!r}.")
    return Dataset.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


def split_polis_votes(
    votes: Dataset,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> DatasetDict:
    """Split each participant's votes (not pairs) into disjoint parts, stratified by vote.

    No statement voted by a participant appears in two parts for that participant, so pairs formed inside each part
    (with [`make_polis_pairs`]) cannot leak answers between parts.

    Args:
        votes: Output of [`load_polis_votes`].
        fractions: Part name -> fraction (default `{"train": 0.6, "adaptation": 0.2, "test": 0.2}`).
        seed: Seed of the per-participant shuffles.
    """
    fractions = {"train": 0.6, "adaptation": 0.2, "test": 0.2} if fractions is None else fractions
    return split_items_per_user(votes, fractions, seed=seed, user_column="user_id", stratify_column="vote")


def make_polis_pairs(votes: Dataset, max_pairs_per_user: int | None = 64, seed: int = 0) -> Dataset:
    """Form (agreed, disagreed) statement pairs within each participant of `votes`.

    Args:
        votes: Rows of [`load_polis_votes`] (or one part of [`split_polis_votes`]).
        max_pairs_per_user: Cap on pairs per participant (agree x disagree grows quadratically); pairs are sampled
            uniformly without replacement with a generator seeded by (`seed`, user id). `None` keeps all pairs.
        seed: Seed of the sampling.

    Returns:
        `Dataset` with `prompt, chosen, rejected, user_id` and the extra columns `conversation, chosen_item,
        rejected_item` (statement ids), so that leakage between parts can be checked.
    """
    columns: dict[str, list] = {name: [] for name in _PAIR_COLUMNS}
    data = votes.select_columns(["user_id", "vote", "topic", "statement", "conversation", "comment_id"]).to_dict()
    by_user: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for index, (user_id, vote) in enumerate(zip(data["user_id"], data["vote"])):
        if vote == AGREE:
            by_user[user_id][0].append(index)
        elif vote == DISAGREE:
            by_user[user_id][1].append(index)
    for user_id in sorted(by_user):
        agreed, disagreed = by_user[user_id]
        num_pairs = len(agreed) * len(disagreed)
        if num_pairs == 0:
            continue
        flat = range(num_pairs)
        if max_pairs_per_user is not None and num_pairs > max_pairs_per_user:
            flat = np.sort(user_rng(seed, user_id).choice(num_pairs, size=max_pairs_per_user, replace=False)).tolist()
        for k in flat:
            chosen, rejected = agreed[k // len(disagreed)], disagreed[k % len(disagreed)]
            columns["prompt"].append(data["topic"][chosen])
            columns["chosen"].append(data["statement"][chosen])
            columns["rejected"].append(data["statement"][rejected])
            columns["user_id"].append(user_id)
            columns["conversation"].append(data["conversation"][chosen])
            columns["chosen_item"].append(data["comment_id"][chosen])
            columns["rejected_item"].append(data["comment_id"][rejected])
    return Dataset.from_dict(columns)


def load_polis(
    path_or_id: str | os.PathLike,
    conversations: Sequence[str] | None = None,
    *,
    fractions: Mapping[str, float] | None = None,
    heldout_fraction: float = 0.0,
    heldout_fractions: Mapping[str, float] | None = None,
    max_pairs_per_user: int | None = 64,
    seed: int = 0,
) -> DatasetDict:
    """Polis preference pairs, split without leakage: participants first, then each participant's votes, then pairs.

    Args:
        path_or_id: See [`load_polis_votes`].
        conversations: Conversation folder names to read (default: all).
        fractions: Vote parts of training participants (default `{"train": 0.6, "adaptation": 0.2, "test": 0.2}`).
        heldout_fraction: Fraction of participants held out entirely (none by default).
        heldout_fractions: Vote parts of held-out participants (default `{"adaptation": 0.5, "test": 0.5}`); their
            parts are returned with a `"heldout_"` prefix.
        max_pairs_per_user: Cap on pairs per participant and part, see [`make_polis_pairs`].
        seed: Seed of every split and of the pair sampling.

    Returns:
        `DatasetDict` of canonical pairs, e.g. `train`, `adaptation`, `test` (and `heldout_adaptation`,
        `heldout_test` when `heldout_fraction > 0`).
    """
    votes = load_polis_votes(path_or_id, conversations)
    users = split_users(votes, heldout_fraction=heldout_fraction, seed=seed)
    parts = {
        name: make_polis_pairs(part, max_pairs_per_user, seed)
        for name, part in split_polis_votes(users["train"], fractions, seed).items()
    }
    if heldout_fraction > 0:
        heldout_fractions = {"adaptation": 0.5, "test": 0.5} if heldout_fractions is None else heldout_fractions
        for name, part in split_polis_votes(users["heldout"], heldout_fractions, seed).items():
            parts[f"heldout_{name}"] = make_polis_pairs(part, max_pairs_per_user, seed)
    return DatasetDict(parts)


__all__ = [
    "POLIS_ATTRIBUTION",
    "list_polis_conversations",
    "load_polis",
    "load_polis_votes",
    "make_polis_pairs",
    "read_polis_topic",
    "split_polis_votes",
]
