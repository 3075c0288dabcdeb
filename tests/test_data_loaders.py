"""Loaders of `trl_rfm.data` on small fixtures in the upstream schemas (and on the real Polis data if present)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_rfm.data import (  # noqa: E402
    CANONICAL_COLUMNS,
    PERSONAL_LLM_REWARD_MODELS,
    default_polis_dir,
    detect_reward_models,
    load_personal_llm,
    load_polis,
    load_polis_votes,
    load_prism,
    load_summarize_from_feedback,
    load_ultrafeedback_p,
    make_polis_pairs,
    split_polis_votes,
    split_users,
)


FIXTURES = Path(__file__).parent / "fixtures"
POLIS_FIXTURE = FIXTURES / "polis"
POLIS_REAL = Path(default_polis_dir())
SEATTLE = "15-per-hour-seattle"


def assert_canonical(dataset: Dataset) -> None:
    assert list(dataset.column_names[:4]) == list(CANONICAL_COLUMNS)
    assert len(dataset) > 0
    assert all(isinstance(u, str) and u for u in dataset["user_id"])


def items_per_user_and_part(parts) -> dict[str, dict[str, set]]:
    """user -> part -> statements appearing in that user's pairs of that part."""
    seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for name, part in parts.items():
        columns = part.select_columns(["user_id", "chosen_item", "rejected_item"]).to_dict()
        for user, chosen, rejected in zip(columns["user_id"], columns["chosen_item"], columns["rejected_item"]):
            seen[user][name].update((chosen, rejected))
    return seen


# ------------------------------------------------------------------------------------------------------------ Polis
@pytest.fixture(scope="module")
def polis_votes():
    return load_polis_votes(POLIS_FIXTURE)


def test_polis_votes_latest_vote_and_moderation(polis_votes):
    votes = polis_votes.to_pandas()
    assert set(votes["conversation"]) == {SEATTLE, "scoop-hivemind.ubi"}
    assert set(votes["vote"]) == {1, -1}  # passes dropped by default
    assert not votes.duplicated(["user_id", "comment_id"]).any()
    # Voter 56 agreed with statement 5, then disagreed 6 ms later: the latest vote counts.
    assert votes.query("user_id == '15-per-hour-seattle:56' and comment_id == 5")["vote"].tolist() == [-1]
    # Voter 58 disagreed twice with statement 25, then passed: the latest vote (pass) removes it.
    assert votes.query("user_id == '15-per-hour-seattle:58' and comment_id == 25").empty
    # Statements 22 and 37 were removed by the moderators (moderated == -1), although voters 66 and 61 agreed.
    raw_comments = pd.read_csv(POLIS_FIXTURE / SEATTLE / "comments.csv")
    removed = set(raw_comments.loc[raw_comments["moderated"] == -1, "comment-id"])
    assert removed == {22, 37}
    assert not set(votes.loc[votes["conversation"] == SEATTLE, "comment_id"]) & removed
    assert set(votes["topic"]) == {"$15/hour", "A Universal Basic Income for Aotearoa NZ?"}
    with_passes = load_polis_votes(POLIS_FIXTURE, [SEATTLE], include_passes=True).to_pandas()
    assert 0 in set(with_passes["vote"])
    assert with_passes.query("user_id == '15-per-hour-seattle:58' and comment_id == 25")["vote"].tolist() == [0]


def test_polis_pairs_orientation_and_ids(polis_votes):
    pairs = make_polis_pairs(polis_votes, max_pairs_per_user=None)
    assert_canonical(pairs)
    votes = polis_votes.to_pandas()
    vote_of = {(u, c): v for u, c, v in zip(votes["user_id"], votes["comment_id"], votes["vote"])}
    text_of = {(conv, c): s for conv, c, s in zip(votes["conversation"], votes["comment_id"], votes["statement"])}
    for row in pairs:
        conversation, voter = row["user_id"].split(":")
        assert conversation == row["conversation"] and voter.isdigit()
        assert vote_of[(row["user_id"], row["chosen_item"])] == 1
        assert vote_of[(row["user_id"], row["rejected_item"])] == -1
        assert row["chosen"] == text_of[(conversation, row["chosen_item"])]
        assert row["rejected"] == text_of[(conversation, row["rejected_item"])]
    # All agree x disagree combinations without a cap; UBI voter 7 never disagreed, so has no pairs.
    counts = votes.groupby("user_id")["vote"].agg(lambda v: (v == 1).sum() * (v == -1).sum())
    assert pairs.to_pandas()["user_id"].value_counts().to_dict() == counts[counts > 0].to_dict()
    assert "scoop-hivemind.ubi:7" not in set(pairs["user_id"])
    assert set(pairs.filter(lambda c: c == SEATTLE, input_columns="conversation")["prompt"]) == {"$15/hour"}


def test_polis_pair_cap_is_seeded(polis_votes):
    capped = make_polis_pairs(polis_votes, max_pairs_per_user=3, seed=1)
    assert max(pd.Series(capped["user_id"]).value_counts()) == 3
    assert capped.to_list() == make_polis_pairs(polis_votes, max_pairs_per_user=3, seed=1).to_list()
    assert capped.to_list() != make_polis_pairs(polis_votes, max_pairs_per_user=3, seed=2).to_list()


def test_polis_vote_split_is_disjoint_per_user_and_seeded(polis_votes):
    parts = split_polis_votes(polis_votes, {"train": 0.5, "adaptation": 0.25, "test": 0.25}, seed=0)
    assert sum(len(p) for p in parts.values()) == len(polis_votes)
    keys = {name: set(zip(p["user_id"], p["comment_id"])) for name, p in parts.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["adaptation"])
    assert not (keys["adaptation"] & keys["test"])
    again = split_polis_votes(polis_votes, {"train": 0.5, "adaptation": 0.25, "test": 0.25}, seed=0)
    assert all(parts[n].to_list() == again[n].to_list() for n in parts)
    other = split_polis_votes(polis_votes, {"train": 0.5, "adaptation": 0.25, "test": 0.25}, seed=3)
    assert any(parts[n].to_list() != other[n].to_list() for n in parts)
    # Stratified by vote: voter 56 (-1: 11, +1: 4 after the revote) has both kinds of votes in the training part.
    train_56 = parts["train"].filter(lambda u: u == f"{SEATTLE}:56", input_columns="user_id")
    assert set(train_56["vote"]) == {1, -1}


def test_load_polis_pairs_share_no_statement_across_parts():
    parts = load_polis(POLIS_FIXTURE, fractions={"train": 0.5, "test": 0.5}, max_pairs_per_user=None, seed=0)
    assert set(parts) == {"train", "test"}
    for name in parts:
        assert_canonical(parts[name])
    for user, by_part in items_per_user_and_part(parts).items():
        assert not (by_part["train"] & by_part["test"]), user
    assert load_polis(POLIS_FIXTURE, seed=0)["train"].to_list() == load_polis(POLIS_FIXTURE, seed=0)["train"].to_list()


def test_pair_level_split_would_leak(polis_votes):
    """The failure mode the vote-level split prevents: splitting pairs shares statements between a user's parts."""
    pairs = make_polis_pairs(polis_votes, max_pairs_per_user=None).shuffle(seed=0)
    half = len(pairs) // 2
    leaky = {"train": pairs.select(range(half)), "test": pairs.select(range(half, len(pairs)))}
    shared = [u for u, p in items_per_user_and_part(leaky).items() if p["train"] & p["test"]]
    assert shared


def test_polis_participant_split(polis_votes):
    users = sorted(set(polis_votes["user_id"]))
    split = split_users(polis_votes, heldout_fraction=0.34, seed=0)
    train_users, heldout_users = set(split["train"]["user_id"]), set(split["heldout"]["user_id"])
    assert train_users.isdisjoint(heldout_users) and train_users | heldout_users == set(users)
    assert len(heldout_users) == round(0.34 * len(users))
    assert split_users(polis_votes, heldout_fraction=0.34, seed=0)["heldout"].to_list() == split["heldout"].to_list()

    parts = load_polis(POLIS_FIXTURE, heldout_fraction=0.34, max_pairs_per_user=None, seed=0)
    assert set(parts) == {"train", "adaptation", "test", "heldout_adaptation", "heldout_test"}
    seen = set().union(*(parts[n]["user_id"] for n in ("train", "adaptation", "test")))
    held = set().union(*(parts[n]["user_id"] for n in ("heldout_adaptation", "heldout_test")))
    assert seen.isdisjoint(held) and held <= heldout_users


def test_polis_missing_path_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub id"):
        load_polis_votes(tmp_path / "no" / "such" / "dir")


def test_polis_missing_rater_column(tmp_path):
    folder = tmp_path / SEATTLE
    folder.mkdir()
    votes = pd.read_csv(POLIS_FIXTURE / SEATTLE / "votes.csv").drop(columns="voter-id")
    votes.to_csv(folder / "votes.csv", index=False)
    for name in ("comments.csv", "summary.csv"):
        (folder / name).write_bytes((POLIS_FIXTURE / SEATTLE / name).read_bytes())
    with pytest.raises(ValueError, match=r"rater column 'voter-id' not found; columns found: \['timestamp'"):
        load_polis_votes(tmp_path)


@pytest.mark.polis_data
def test_real_polis_vote_split_has_no_leak():
    parts = load_polis(POLIS_REAL, heldout_fraction=0.2, max_pairs_per_user=32, seed=0)
    assert len(parts["train"]) > 10_000 and len(parts["heldout_test"]) > 1_000
    for user, by_part in items_per_user_and_part(parts).items():
        names = list(by_part)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert not (by_part[a] & by_part[b]), (user, a, b)
    counts = pd.Series(parts["train"]["user_id"]).value_counts()
    assert counts.max() <= 32
    assert {u.split(":")[0] for u in counts.index} == {d.name for d in POLIS_REAL.iterdir() if d.is_dir()}


# ------------------------------------------------------------------------------------------------------------ PRISM
def test_prism_pairs_within_turn_by_score():
    pairs = load_prism(FIXTURES / "prism", with_margin=True)
    assert_canonical(pairs)
    rows = pairs.to_list()
    # c0 turn 0: scores 80, 35, 35, 60 -> 5 pairs (the 35-35 tie is skipped); turn 1: 70 vs 40; c1: 20, 90, 55, 55
    # -> 5 pairs; c2: all tied -> none.
    assert [(r["conversation_id"], r["turn"]) for r in rows].count(("c0", 0)) == 5
    assert [(r["conversation_id"], r["turn"]) for r in rows].count(("c0", 1)) == 1
    assert sum(r["conversation_id"] == "c1" for r in rows) == 5
    assert not any(r["conversation_id"] == "c2" for r in rows)
    assert {r["user_id"] for r in rows} == {"user0", "user1"}
    first = next(r for r in rows if r["conversation_id"] == "c0" and r["chosen_item"] == 3)
    assert first["chosen"] == [{"role": "assistant", "content": "It depends on local conditions."}]
    assert first["rejected"][0]["content"] in {"No, the waste is too dangerous.", "I cannot share opinions."}
    assert first["margin"] == pytest.approx(0.25)
    second_turn = next(r for r in rows if r["turn"] == 1)
    assert second_turn["prompt"] == [
        {"role": "user", "content": "Should we build more nuclear plants?"},
        {"role": "assistant", "content": "Yes, nuclear is low-carbon and reliable."},
        {"role": "user", "content": "What about the cost?"},
    ]
    assert second_turn["chosen"][0]["content"].startswith("Upfront costs")
    assert (second_turn["chosen_item"], second_turn["rejected_item"]) == (0, 1)
    assert second_turn["margin"] == pytest.approx(0.30)
    only_unguided = load_prism(FIXTURES / "prism" / "conversations.jsonl", conversation_types=["unguided"])
    assert set(only_unguided["conversation_id"]) == {"c1"} and "margin" not in only_unguided.column_names


def test_prism_missing_rater_column(tmp_path):
    raw = pd.read_json(FIXTURES / "prism" / "conversations.jsonl", lines=True).drop(columns="user_id")
    raw.to_json(tmp_path / "conversations.jsonl", orient="records", lines=True)
    with pytest.raises(ValueError, match=r"rater column 'user_id' not found; columns found: \['conversation_id'"):
        load_prism(tmp_path / "conversations.jsonl")


# ---------------------------------------------------------------------------------------- summarize_from_feedback
def test_summarize_from_feedback_orientation_and_prompt():
    pairs = load_summarize_from_feedback(FIXTURES / "summarize_from_feedback", "train")
    assert_canonical(pairs)
    rows = pairs.to_list()
    assert [r["user_id"] for r in rows] == ["w1", "w2", "w1"]
    # Same post, two labellers who disagree: w1 picked summary 0, w2 summary 1.
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (" Roommate never cleans, advice?", " I like dishes.")
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (" Flatmate leaves dishes.", " Roommate never cleans, advice?")
    assert rows[0]["prompt"] == (
        "SUBREDDIT: r/relationships\n\nTITLE: My roommate never cleans\n\n"
        "POST: We share a flat.\nShe never does the dishes. What do I do?\n\nTL;DR:"
    )
    assert rows[2]["prompt"].startswith("TITLE: Storm hits coast\n\nA storm hit the coast")
    assert rows[2]["batch"] == "cnndm0"
    validation = load_summarize_from_feedback(FIXTURES / "summarize_from_feedback", "validation")
    assert validation.to_list()[0]["chosen"] == " Two job offers, which one to take?"
    frequent = load_summarize_from_feedback(FIXTURES / "summarize_from_feedback", min_comparisons_per_worker=2)
    assert set(frequent["user_id"]) == {"w1"}


def test_summarize_from_feedback_missing_rater_column(tmp_path):
    raw = Dataset.from_parquet(str(FIXTURES / "summarize_from_feedback/comparisons/train-00000-of-00001.parquet"))
    raw.remove_columns("worker").to_parquet(tmp_path / "comparisons.parquet")
    with pytest.raises(ValueError, match=r"rater column 'worker' not found; columns found: \['info', 'summaries'"):
        load_summarize_from_feedback(tmp_path / "comparisons.parquet")


# ----------------------------------------------------------------------------------------------------- PersonalLLM
def test_personal_llm_schema_detection():
    raw = Dataset.from_parquet(str(FIXTURES / "personal_llm/data/train-00000-of-00001.parquet"))
    assert detect_reward_models(raw.column_names) == list(PERSONAL_LLM_REWARD_MODELS)


def test_personal_llm_users_follow_their_reward_models():
    # User 0 is reward model 0 (ranks response 1 first), user 1 is reward model 1 (ranks response 8 first).
    weights = np.eye(len(PERSONAL_LLM_REWARD_MODELS))[:2]
    pairs = load_personal_llm(FIXTURES / "personal_llm", user_weights=weights, prompts_per_user=None, with_margin=True)
    assert_canonical(pairs)
    rows = pairs.to_list()
    assert len(rows) == 2 * 4
    for row in rows:
        best, worst = (1, 8) if row["user_id"] == "personal_llm_user_0" else (8, 1)
        assert (row["chosen_item"], row["rejected_item"]) == (best, worst)
        assert row["chosen"] == f"Response {best} to prompt {row['prompt_index']}."
        assert row["prompt"] == f"Prompt {row['prompt_index']}?"
        assert row["margin"] > 0
    random_pairs = load_personal_llm(
        FIXTURES / "personal_llm", user_weights=weights, prompts_per_user=None, pair_strategy="random", seed=0
    ).to_list()
    for row in random_pairs:  # random pairs are oriented by the user's reward
        lower_is_better = row["user_id"] == "personal_llm_user_0"
        assert (row["chosen_item"] < row["rejected_item"]) == lower_is_better


def test_personal_llm_dirichlet_users_are_seeded():
    kwargs = dict(num_users=5, alpha=0.1, prompts_per_user=2, pair_strategy="random")
    a = load_personal_llm(FIXTURES / "personal_llm", seed=0, **kwargs)
    assert a.to_list() == load_personal_llm(FIXTURES / "personal_llm", seed=0, **kwargs).to_list()
    assert a.to_list() != load_personal_llm(FIXTURES / "personal_llm", seed=1, **kwargs).to_list()
    assert set(a["user_id"]) == {f"personal_llm_user_{k}" for k in range(5)}
    assert pd.Series(a["user_id"]).value_counts().max() <= 2
    test_split = load_personal_llm(FIXTURES / "personal_llm", "test", seed=0, **kwargs)
    assert set(test_split["prompt"]) <= {"Prompt 4?", "Prompt 5?"}


def test_personal_llm_without_scores_is_a_clear_error(tmp_path):
    raw = Dataset.from_parquet(str(FIXTURES / "personal_llm/data/train-00000-of-00001.parquet"))
    raw.select_columns(["prompt"] + [f"response_{i}" for i in range(1, 9)]).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"no reward-model score columns .* columns found: \['prompt', 'response_1'"):
        load_personal_llm(tmp_path / "train.parquet")


# ------------------------------------------------------------------------------------------------- UltraFeedback-P
def test_ultrafeedback_p_user_types():
    pairs = load_ultrafeedback_p(FIXTURES / "ultrafeedback_p", "train")
    assert_canonical(pairs)
    rows = pairs.to_list()
    assert [r["user_id"] for r in rows] == ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    # Same prompt, opposite preferences for the two user types.
    assert rows[0]["chosen"] == rows[1]["rejected"] == "Mass attracts mass; detailed answer."
    two_users = load_ultrafeedback_p(FIXTURES / "ultrafeedback_p", attributes=["helpfulness", "honesty"])
    assert set(two_users["user_id"]) == {"helpfulness", "honesty"}
    controversial = load_ultrafeedback_p(FIXTURES / "ultrafeedback_p", "test", name="controversial")
    assert len(controversial) == 2


def test_ultrafeedback_p_conversational_rows(tmp_path):
    row = {
        "prompt": "Hi?",
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
        "attributes": "honesty",
    }
    Dataset.from_list([row]).to_parquet(tmp_path / "train.parquet")
    out = load_ultrafeedback_p(tmp_path / "train.parquet").to_list()[0]
    assert out["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert out["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert out["rejected"] == [{"role": "assistant", "content": "Go away."}]


def test_ultrafeedback_p_missing_rater_column(tmp_path):
    raw = Dataset.from_parquet(str(FIXTURES / "ultrafeedback_p/default/train-00000-of-00001.parquet"))
    raw.remove_columns("attributes").to_parquet(tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"rater column 'attributes' not found; columns found: \['prompt'"):
        load_ultrafeedback_p(tmp_path / "train.parquet")
