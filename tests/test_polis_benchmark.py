"""Smoke and behaviour test of `benchmarks/polis_benchmark.py` on a small subset of the real Polis data (one
conversation, a few dozen participants): the vote-level split leaks nothing, and the pipeline's numbers are
well-formed. Skipped when the shared Polis data (CC BY 4.0, The Computational Democracy Project) is not present."""

import math

import polis_benchmark
import pytest

from trl_rfm.data import default_polis_dir


DATA_DIR = default_polis_dir()
pytestmark = pytest.mark.polis_data("15-per-hour-seattle")


def _arguments(tmp_path, **overrides):
    values = dict(
        data_dir=DATA_DIR,
        conversations="15-per-hour-seattle",
        max_users=80,
        heldout_fraction=0.25,
        seeds="0",
        hidden_size=16,
        num_layers=1,
        num_features=4,
        num_train_epochs=1,
        batch_size=32,
        max_train_pairs_per_user=8,
        max_eval_pairs_per_user=16,
        shots="0,5",
        num_draws=2,
        output_dir=str(tmp_path),
        figure=str(tmp_path / "polis.png"),
        num_workers=1,
    )
    values.update(overrides)
    return polis_benchmark.PolisArguments(**values)


def test_vote_level_split_shares_no_statement_within_a_participant(tmp_path):
    parts, _ = polis_benchmark.polis_parts(_arguments(tmp_path), seed=0)
    # `val_fit` and `val_check` divide the `val` votes: check them against everything but `val`, and `val` without them.
    for subdivision in ({"val_fit", "val_check"}, {"val"}):
        statements = {}  # (participant, statement id) -> part
        for name, part in parts.items():
            if name in subdivision:
                continue
            for user, chosen, rejected in zip(part["user_id"], part["chosen_item"], part["rejected_item"]):
                for item in (chosen, rejected):
                    assert statements.setdefault((user, item), name) == name, f"{user} votes on {item} in two parts"
    assert len(parts["val_fit"]) and len(parts["val_check"])
    training_users = set(parts["train"]["user_id"]) | set(parts["val"]["user_id"])
    heldout_users = set(parts["heldout_adaptation"]["user_id"]) | set(parts["heldout_test"]["user_id"])
    assert training_users and heldout_users and not training_users & heldout_users


def test_pipeline_reports_well_formed_numbers(tmp_path):
    report = polis_benchmark.main(_arguments(tmp_path))
    (result,) = report["results"]
    for method in ("rfm", "linear"):
        curve = result[method]["curve"]
        assert sorted(curve) == [0, 5]
        assert all(0.0 <= accuracy <= 1.0 for accuracy in curve.values())
        assert result[method]["l2"] > 0
        # The precision chosen by cross-validation on the training users' `val` pairs, and its curve.
        assert result[method]["cv_l2"] > 0 and sorted(result[method]["curve_cv"]) == [0, 5]
        assert result[method]["curve_cv"][0] == pytest.approx(curve[0])
        assert result[method]["vote_held_out_l2"] > 0 and sorted(result[method]["curve_vote_held_out"]) == [0, 5]
    # k = 0 of the linear head is the non-adaptive reward model itself (its prior is centred on the score head).
    assert result["linear"]["curve"][0] == pytest.approx(result["rm"]["accuracy"])
    assert 1.0 <= result["rfm"]["effective_dimension"] <= 4.0 + 1e-6
    assert not math.isnan(result["rfm"]["seen_users_personal_accuracy"])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "polis.png").is_file()
    assert "Computational Democracy Project" in report["attribution"]


def test_cached_tokenization_matches_trl_tokenization(tmp_path):
    from trl import RewardConfig, RewardTrainer

    from trl_rfm import tokenize_preferences
    from trl_rfm.testing import build_tokenizer

    parts, texts = polis_benchmark.polis_parts(_arguments(tmp_path), seed=0)
    tokenizer = build_tokenizer(texts + [" :"])
    part = parts["train"].select(range(min(200, len(parts["train"]))))
    fast = tokenize_preferences(part, tokenizer, cache={})
    args = RewardConfig(output_dir=str(tmp_path), bf16=False, report_to="none")
    reference = RewardTrainer._prepare_dataset(
        None, part.select_columns(["prompt", "chosen", "rejected"]), tokenizer, args, "train"
    )
    assert fast["chosen_ids"] == reference["chosen_ids"] and fast["rejected_ids"] == reference["rejected_ids"]
    # TRL's reward trainer (and `tokenize_preferences`) keep pre-tokenised pairs as they are.
    assert tokenize_preferences(fast, tokenizer)["chosen_ids"] == fast["chosen_ids"]


def test_statement_id_tokens_give_each_statement_its_own_word(tmp_path):
    from trl_rfm.testing import build_tokenizer

    parts, texts = polis_benchmark.polis_parts(_arguments(tmp_path, statement_id_tokens=True), seed=0)
    tokenizer = build_tokenizer(texts + [" :"])
    part = parts["train"]
    for chosen, item in zip(part["chosen"][:50], part["chosen_item"][:50]):
        word = chosen.split(" ", 1)[0]
        assert word == f"s0_{item}"
        assert tokenizer.convert_tokens_to_ids(word) != tokenizer.unk_token_id
    first_words = {chosen.split(" ", 1)[0] for chosen in part["chosen"]}
    assert len(first_words) == len(set(part["chosen_item"]))


@pytest.mark.slow  # ~70 s: two full pipeline runs
def test_parallel_jobs_give_the_same_results_as_one_process(tmp_path):
    one = polis_benchmark.main(_arguments(tmp_path / "one"))["results"][0]
    two = polis_benchmark.main(_arguments(tmp_path / "two", num_workers=2))["results"][0]
    for method in ("rfm", "linear"):
        assert two[method]["curve"] == pytest.approx(one[method]["curve"], abs=1e-6)
    assert two["rm"]["accuracy"] == pytest.approx(one["rm"]["accuracy"], abs=1e-6)


def test_statement_id_alone_replaces_the_text(tmp_path):
    arguments = _arguments(tmp_path, statement_id_tokens=True, statement_text=False)
    parts, _ = polis_benchmark.polis_parts(arguments, seed=0)
    part = parts["train"]
    assert part["chosen"] == [f"s0_{item}" for item in part["chosen_item"]]
    assert part["rejected"] == [f"s0_{item}" for item in part["rejected_item"]]


def test_precision_grid_diagnostics(tmp_path):
    report = polis_benchmark.main(_arguments(tmp_path, precision_grid="3,30", methods="rfm,rm,linear"))
    (result,) = report["results"]
    for method in ("rfm", "linear"):
        curves = result[method]["curve_by_l2"]
        assert sorted(curves) == [3.0, 30.0]
        # k = 0 is the prior mean whatever the precision: the population weights / the RM's score head.
        for curve in curves.values():
            assert curve[0] == pytest.approx(result[method]["curve"][0])
    refit = result["rfm"]["seen_users_refit_accuracy_by_l2"]
    assert set(refit) == {3.0, 30.0, "model"}  # "model": the prior `prior_from_model` returns
    assert all(0.0 <= accuracy <= 1.0 for accuracy in refit.values())
