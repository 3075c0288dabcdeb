"""The Polis evaluations' parts (`trl_rfm.data.polis_parts`) on synthetic votes in `load_polis_votes`'s layout: every
split is made before pairs, so no answer is shared across parts."""

import numpy as np
import pytest
from datasets import Dataset

from trl_rfm.data import (
    add_statement_ids,
    index_polis_statements,
    polis_evaluation_parts,
    polis_unseen_statement_parts,
    sample_users,
    split_polis_statements,
)


CONVERSATIONS = ("alpha", "beta")
NUM_STATEMENTS, NUM_VOTERS = 20, 30


@pytest.fixture(scope="module")
def votes() -> Dataset:
    """Every voter of each conversation votes agree or disagree on most of its statements."""
    rng = np.random.default_rng(0)
    rows = []
    for conversation in CONVERSATIONS:
        for voter in range(NUM_VOTERS):
            for statement in range(NUM_STATEMENTS):
                if rng.random() < 0.8:
                    rows.append(
                        {
                            "conversation": conversation,
                            "topic": f"topic {conversation}",
                            "user_id": f"{conversation}:{voter}",
                            "voter_id": voter,
                            "comment_id": statement,
                            "vote": int(rng.choice([1, -1])),
                            "timestamp": len(rows),
                            "statement": f"{conversation} statement {statement}",
                        }
                    )
    return Dataset.from_list(rows)


def _statements(part) -> set:
    return {
        (c, i) for c, a, b in zip(part["conversation"], part["chosen_item"], part["rejected_item"]) for i in (a, b)
    }


def _answers(part) -> set:
    """(participant, conversation, statement) of every statement in a participant's pairs."""
    return {
        (u, c, i)
        for u, c, a, b in zip(part["user_id"], part["conversation"], part["chosen_item"], part["rejected_item"])
        for i in (a, b)
    }


def test_evaluation_parts_share_no_answer_and_hold_participants_out(votes):
    parts = polis_evaluation_parts(votes, seed=0, max_train_pairs_per_user=None, max_eval_pairs_per_user=None)
    assert set(parts) == {"train", "val", "val_fit", "val_check", "heldout_adaptation", "heldout_test"}
    assert all(len(part) for part in parts.values())
    assert all(prompt.endswith(" :") for prompt in parts["train"]["prompt"])
    training, heldout = set(parts["train"]["user_id"]), set(parts["heldout_test"]["user_id"])
    assert not training & heldout and len(heldout) == round(0.2 * 2 * NUM_VOTERS)
    assert not _answers(parts["train"]) & _answers(parts["val"])
    assert not _answers(parts["val_fit"]) & _answers(parts["val_check"])
    assert not _answers(parts["heldout_adaptation"]) & _answers(parts["heldout_test"])
    capped = polis_evaluation_parts(votes, seed=0, max_train_pairs_per_user=3)
    assert max(np.unique(capped["train"]["user_id"], return_counts=True)[1]) == 3


def test_statement_split_is_per_conversation_and_seeded(votes):
    is_test, is_heldout = split_polis_statements(votes, test_statement_fraction=0.3, heldout_fraction=0.2, seed=0)
    conversation, statement, user = map(np.asarray, (votes["conversation"], votes["comment_id"], votes["user_id"]))
    for name in CONVERSATIONS:
        rows = conversation == name
        assert len(set(statement[rows & is_test])) == round(0.3 * NUM_STATEMENTS)
        assert not set(statement[rows & is_test]) & set(statement[rows & ~is_test])  # a statement is on one side
    assert not set(user[is_heldout]) & set(user[~is_heldout])
    again = split_polis_statements(votes, 0.3, 0.2, seed=0)
    assert (again[0] == is_test).all() and (again[1] == is_heldout).all()
    assert (split_polis_statements(votes, 0.3, 0.2, seed=1)[0] != is_test).any()


def test_unseen_statement_parts_keep_test_statements_out_of_every_other_part(votes):
    parts = polis_unseen_statement_parts(votes, seed=0, max_train_pairs_per_user=None, max_eval_pairs_per_user=None)
    assert set(parts) == {"train", "val", "adaptation", "seen_test", "unseen_test"}
    unseen = _statements(parts["unseen_test"])
    assert unseen and not unseen & (_statements(parts["train"]) | _statements(parts["val"]))
    assert not unseen & (_statements(parts["adaptation"]) | _statements(parts["seen_test"]))
    heldout = set(parts["unseen_test"]["user_id"])
    assert heldout and not heldout & set(parts["train"]["user_id"])
    assert set(parts["adaptation"]["user_id"]) <= heldout | set(parts["seen_test"]["user_id"])


def test_unseen_statement_control_adapts_on_test_statements_without_sharing_a_vote(votes):
    protocol = polis_unseen_statement_parts(votes, seed=0, max_eval_pairs_per_user=None)
    control = polis_unseen_statement_parts(votes, seed=0, max_eval_pairs_per_user=None, adaptation_statements="test")
    assert _statements(control["adaptation"]) <= _statements(protocol["unseen_test"])
    assert not _answers(control["adaptation"]) & _answers(control["unseen_test"])
    assert control["seen_test"]["chosen"] == protocol["seen_test"]["chosen"]
    with pytest.raises(ValueError, match="adaptation_statements"):
        polis_unseen_statement_parts(votes, adaptation_statements="unseen")


def test_statement_ids_are_unique_words(votes):
    with_text = add_statement_ids(votes)
    assert with_text[0]["statement"] == f"s0_{votes[0]['comment_id']} {votes[0]['statement']}"
    ids_only = add_statement_ids(votes, keep_text=False)
    words = {(c, i): s for c, i, s in zip(ids_only["conversation"], ids_only["comment_id"], ids_only["statement"])}
    assert len(set(words.values())) == len(words) == len(CONVERSATIONS) * NUM_STATEMENTS


def test_statement_index_maps_every_pair_back(votes):
    parts = polis_evaluation_parts(votes, seed=0)
    pairs, statements = index_polis_statements(parts)
    assert len(statements) == len(set(statements)) == len(set().union(*map(_statements, parts.values())))
    chosen, rejected = pairs["heldout_test"]
    part = parts["heldout_test"]
    assert [statements[i] for i in chosen.tolist()] == list(zip(part["conversation"], part["chosen_item"]))
    assert [statements[i] for i in rejected.tolist()] == list(zip(part["conversation"], part["rejected_item"]))


def test_sample_users_keeps_whole_participants(votes):
    kept = sample_users(votes, max_users=7, seed=0)
    users = set(kept["user_id"])
    assert len(users) == 7
    assert len(kept) == sum(u in users for u in votes["user_id"])
    assert set(sample_users(votes, max_users=7, seed=0)["user_id"]) == users
    assert set(sample_users(votes, max_users=7, seed=1)["user_id"]) != users
