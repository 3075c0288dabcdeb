import json
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from trl_rfm import RewardFeatureModel
from trl_rfm.adaptation.features import compute_score_head_input_differences
from trl_rfm.cli import COMMANDS
from trl_rfm.cli.adapt import main as adapt_main
from trl_rfm.cli.evaluate import EvaluateDataArguments, run_evaluation
from trl_rfm.data import pairs_from_ratings, split_pairs_by_user, split_rated_items_for_evaluation
from trl_rfm.evaluation import AdaptationEvaluationConfig, draw_adaptation_sets, pairwise_accuracy
from trl_rfm.evaluation.baselines import add_user_id_to_prompt, reward_margins
from trl_rfm.testing import make_synthetic_preferences


def _ratings(num_users=6, num_items=12):
    rows = []
    for u in range(num_users):
        for i in range(num_items):
            rows.append(
                {"user_id": f"u{u}", "prompt": "p", "response": f"item {i}", "rating": (i * (u + 3)) % 5, "item": i}
            )
    return Dataset.from_list(rows)


def test_rating_split_leaks_no_item_and_pair_split_does():
    ratings = _ratings()
    adaptation, test = split_rated_items_for_evaluation(
        ratings, test_fraction=0.5, seed=0, make_pairs=lambda r: pairs_from_ratings(r, item_column="item")
    )
    assert len(adaptation) > 0 and len(test) > 0
    for user in set(test["user_id"]):
        adapt_items = {
            i
            for row in adaptation.filter(lambda r: r["user_id"] == user)
            for i in (row["chosen_item"], row["rejected_item"])
        }
        test_items = {
            i
            for row in test.filter(lambda r: r["user_id"] == user)
            for i in (row["chosen_item"], row["rejected_item"])
        }
        assert not adapt_items & test_items
    # The naive split of the pairs themselves puts the same rated item on both sides.
    pool, held = split_pairs_by_user(pairs_from_ratings(ratings, item_column="item"), test_pairs_per_user=10)
    user_pool = {
        i for row in pool.filter(lambda r: r["user_id"] == "u0") for i in (row["chosen_item"], row["rejected_item"])
    }
    user_test = {
        i for row in held.filter(lambda r: r["user_id"] == "u0") for i in (row["chosen_item"], row["rejected_item"])
    }
    assert user_pool & user_test


def test_pairs_from_ratings_orients_by_rating_and_skips_equal_ratings():
    ratings = Dataset.from_list(
        [
            {"user_id": "a", "prompt": "p", "response": "good", "rating": 5},
            {"user_id": "a", "prompt": "p", "response": "bad", "rating": 1},
            {"user_id": "a", "prompt": "p", "response": "also bad", "rating": 1},
            {"user_id": "b", "prompt": "p", "response": "good", "rating": 1},
        ]
    )
    pairs = pairs_from_ratings(ratings)
    assert sorted(zip(pairs["chosen"], pairs["rejected"])) == [("good", "also bad"), ("good", "bad")]
    with pytest.raises(ValueError, match="lack the column"):
        pairs_from_ratings(ratings, rating_column="stars")


def test_split_pairs_and_draws():
    data = make_synthetic_preferences(num_users=3, num_heldout_users=0, train_pairs_per_user=30)
    pool, test = split_pairs_by_user(data.train, test_pairs_per_user=10)
    assert len(test) == 30 and len(pool) == 60
    with pytest.raises(ValueError, match="none left to adapt"):
        split_pairs_by_user(data.train, test_pairs_per_user=30)
    pool_mask = torch.ones(3, 20)
    pool_mask[2, 4:] = 0  # a user with 4 pairs only
    draws = draw_adaptation_sets(pool_mask, shots=[0, 5], num_draws=3, seed=0)
    assert len(draws[0]) == 1 and draws[0][0].sum() == 0
    assert [m.sum(-1).tolist() for m in draws[5]] == [[5, 5, 4]] * 3
    assert not torch.equal(draws[5][0], draws[5][1])
    assert pairwise_accuracy(torch.tensor([[1.0, -1.0, 0.0, 2.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])) == 0.5


def test_score_head_features_reproduce_the_reward_model(tokenizer, tiny_lm, tmp_path):
    tiny_lm.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    data = make_synthetic_preferences(num_users=2, num_heldout_users=0, train_pairs_per_user=6)
    margins = reward_margins(model, tokenizer, data.train)
    # The same margins straight from the model's logits on each sequence.
    from trl_rfm.adaptation.features import tokenize_preferences

    tokenized = tokenize_preferences(data.train, tokenizer)
    expected = []
    for row in tokenized:
        scores = [
            model(input_ids=torch.tensor([ids])).logits[0, 0] for ids in (row["chosen_ids"], row["rejected_ids"])
        ]
        expected.append(scores[0] - scores[1])
    torch.testing.assert_close(margins, torch.stack(expected).detach(), atol=1e-5, rtol=1e-4)
    features = compute_score_head_input_differences(model, tokenizer, data.train, show_progress=False)
    assert features.shape == (len(data.train), tiny_lm.config.hidden_size)


def test_user_id_goes_into_the_prompt():
    data = Dataset.from_list([{"prompt": "hi ?", "chosen": "a", "rejected": "b", "user_id": 7}])
    assert add_user_id_to_prompt(data)[0]["prompt"] == "user 7 : hi ?"
    chat = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
                "user_id": "x",
            }
        ]
    )
    assert add_user_id_to_prompt(chat)[0]["prompt"][0] == {"role": "system", "content": "user x"}


@pytest.mark.slow
def test_synthetic_evaluation_rfm_beats_non_adaptive(tmp_path):
    data_args = EvaluateDataArguments(
        output_dir=str(tmp_path), num_users=8, num_heldout_users=6, train_pairs_per_user=64, test_pairs_per_user=20
    )
    config = AdaptationEvaluationConfig(shots="0,10,30", num_draws=2, num_train_epochs=6, id_rm_adaptation_epochs=2)
    result = run_evaluation(data_args, config)
    accuracy = {m: {int(k): v["mean"] for k, v in by_k.items()} for m, by_k in result.accuracy.items()}
    assert set(accuracy) == {"rfm", "bt", "linear", "id_rm", "oracle"}
    assert accuracy["oracle"][0] == 1.0  # noise-free synthetic labels
    # High disagreement: one reward for all cannot fit opposed raters; the adapted RFM can from a few pairs on.
    assert accuracy["rfm"][10] > accuracy["bt"][10] + 0.1
    assert accuracy["rfm"][30] > accuracy["rfm"][0]
    # The linear baseline starts from the BT model itself.
    assert accuracy["linear"][0] == pytest.approx(accuracy["bt"][0])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["shots"] == [0, 10, 30] and saved["accuracy"]["rfm"]["10"]["draws"]
    assert os.path.getsize(tmp_path / "accuracy_vs_k.png") > 10_000


def test_adapt_cli_adds_the_user(tmp_path, tokenizer, tiny_lm):
    assert "adapt" in COMMANDS and "evaluate" in COMMANDS
    model = RewardFeatureModel.from_backbone(tiny_lm, num_features=8, user_ids=["user_0", "user_1"])
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = make_synthetic_preferences(num_users=0, num_heldout_users=1, heldout_pairs_per_user=12)
    data.heldout.remove_columns("user_id").to_json(tmp_path / "alice.jsonl")
    adapt_main(
        [
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--comparisons_file",
            str(tmp_path / "alice.jsonl"),
            "--user_id",
            "alice",
            "--output_dir",
            str(tmp_path / "adapted"),
        ]
    )
    adapted = RewardFeatureModel.from_pretrained(tmp_path / "adapted")
    assert adapted.user_ids == ["user_0", "user_1", "alice"]
    assert not torch.allclose(adapted.get_user_weights(["alice"])[0], adapted.get_population_weights())
    adapt_main(
        [
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--comparisons_file",
            str(tmp_path / "alice.jsonl"),
            "--user_id",
            "alice",
            "--output_dir",
            str(tmp_path / "alice_only"),
            "--weights_only",
        ]
    )
    from trl_rfm import load_user_weights

    alone = load_user_weights(str(tmp_path / "alice_only" / "user_weights.safetensors"), num_features=8)
    assert alone.user_ids == ["alice"]
    torch.testing.assert_close(alone.weights[0], adapted.get_user_weights(["alice"])[0])
    with pytest.raises(ValueError, match="empty string"):
        adapt_main(
            [
                "--model_name_or_path",
                str(tmp_path / "model"),
                "--comparisons_file",
                str(tmp_path / "alice.jsonl"),
                "--user_id",
                " ",
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(ValueError, match="no 'user_id' column"):
        adapt_main(
            [
                "--model_name_or_path",
                str(tmp_path / "model"),
                "--comparisons_file",
                str(tmp_path / "alice.jsonl"),
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
