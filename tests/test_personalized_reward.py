import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import nn

from trl_rfm import (
    PersonalizedReward,
    RewardFeatureModel,
    export_user_reward_model,
    relabel_preferences,
    tokenize_preferences,
)
from trl_rfm.testing import build_marker_tokenizer, build_tiny_causal_lm


USERS = ["alice", "bob", "carol"]
PROMPTS = ["question about music ?", "question about travel ?", "question about cooking ?", "question about music ?"]
COMPLETIONS = ["the funny answer is here", "well maybe so", "funny funny", "this is it so well maybe the answer"]


@pytest.fixture(scope="module")
def marker_tokenizer():
    return build_marker_tokenizer()


def _rfm(tokenizer, feature_normalization="rms", seed=0):
    torch.manual_seed(seed)
    model = RewardFeatureModel.from_backbone(
        build_tiny_causal_lm(tokenizer, seed=seed), num_features=4, feature_normalization=feature_normalization
    )
    model.add_users(USERS, weights=torch.randn(3, 4))
    with torch.no_grad():
        model.user_weights.population.copy_(torch.randn(4))
        nn.init.normal_(model.feature_head.weight, std=0.3)  # rewards of order one, not ~0
    return model.eval()


@pytest.fixture(scope="module")
def rfm(marker_tokenizer):
    return _rfm(marker_tokenizer)


def _model_rewards(model, tokenizer, prompts, completions, users):
    """The reference: the model's own forward on responses tokenised exactly as RewardTrainer does."""
    dataset = Dataset.from_dict({"prompt": prompts, "chosen": completions, "rejected": completions})
    rows = tokenize_preferences(dataset, tokenizer)
    with torch.no_grad():
        return torch.cat(
            [
                model(input_ids=torch.tensor([ids]), user_ids=[u]).logits[:, 0]
                for ids, u in zip(rows["chosen_ids"], users)
            ]
        )


def test_is_a_plain_callable_with_a_name(rfm, marker_tokenizer):
    reward = PersonalizedReward(rfm, marker_tokenizer)
    assert not isinstance(reward, nn.Module)  # TRL only forwards dataset columns to non-module reward functions
    assert reward.__name__ == "personalized_reward"
    assert PersonalizedReward(rfm, marker_tokenizer, user_id="bob").__name__ == "reward_bob"
    assert PersonalizedReward(rfm, marker_tokenizer, name="mine").__name__ == "mine"


@pytest.mark.parametrize("conversational", [False, True])
def test_rewards_match_the_model_on_reward_trainer_tokenisation(rfm, marker_tokenizer, conversational):
    users = ["alice", "bob", "carol", "alice"]
    prompts, completions = PROMPTS, COMPLETIONS
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    rewards = PersonalizedReward(rfm, marker_tokenizer)(prompts, completions, user_id=users, trainer_state=None)
    assert isinstance(rewards, list) and all(isinstance(r, float) for r in rewards)
    expected = _model_rewards(rfm, marker_tokenizer, prompts, completions, users)
    torch.testing.assert_close(torch.tensor(rewards), expected, rtol=1e-4, atol=1e-5)


def test_one_backbone_pass_scores_a_batch_of_many_users(rfm, marker_tokenizer):
    calls = []
    handle = rfm.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        reward = PersonalizedReward(rfm, marker_tokenizer, batch_size=64)
        mixed = reward(PROMPTS, COMPLETIONS, user_id=["alice", "bob", "carol", "bob"])
        assert len(calls) == 1
        table = reward.score_for_users(PROMPTS, COMPLETIONS, USERS)  # [4, 3], again one pass
        assert len(calls) == 2
    finally:
        handle.remove()
    torch.testing.assert_close(torch.tensor(mixed), table[torch.arange(4), torch.tensor([0, 1, 2, 1])])
    # The users disagree on the same completion.
    assert (table.max(dim=1).values - table.min(dim=1).values).min() > 1e-3


def test_internal_batching_keeps_row_order(rfm, marker_tokenizer):
    users = ["carol", "alice", "bob", "alice"]
    whole = PersonalizedReward(rfm, marker_tokenizer, batch_size=64)(PROMPTS, COMPLETIONS, user_id=users)
    pieces = PersonalizedReward(rfm, marker_tokenizer, batch_size=1)(PROMPTS, COMPLETIONS, user_id=users)
    torch.testing.assert_close(torch.tensor(pieces), torch.tensor(whole), rtol=1e-5, atol=1e-6)


def test_fixed_user_and_configurable_column(rfm, marker_tokenizer):
    fixed = PersonalizedReward(rfm, marker_tokenizer, user_id="bob")(PROMPTS, COMPLETIONS, user_id=["alice"] * 4)
    by_column = PersonalizedReward(rfm, marker_tokenizer, user_column="rater")(PROMPTS, COMPLETIONS, rater=["bob"] * 4)
    torch.testing.assert_close(torch.tensor(fixed), torch.tensor(by_column))
    with pytest.raises(KeyError, match="'rater' column"):
        PersonalizedReward(rfm, marker_tokenizer, user_column="rater")(PROMPTS, COMPLETIONS, user_id=["bob"] * 4)


def test_unknown_users_get_population_or_raise_when_strict(rfm, marker_tokenizer):
    reward = PersonalizedReward(rfm, marker_tokenizer)
    with pytest.warns(UserWarning, match="'mallory'"):
        unknown = reward(PROMPTS, COMPLETIONS, user_id=["mallory"] * 4)
    population = reward.features(PROMPTS, COMPLETIONS) @ rfm.get_population_weights().float()
    torch.testing.assert_close(torch.tensor(unknown), population.cpu())
    with pytest.raises(KeyError, match="mallory"):
        PersonalizedReward(rfm, marker_tokenizer, strict=True)(PROMPTS, COMPLETIONS, user_id=["alice", "mallory"] * 2)
    with pytest.raises(KeyError, match="mallory"):
        PersonalizedReward(rfm, marker_tokenizer, user_id="mallory", strict=True)


def test_bad_inputs_are_named(rfm, marker_tokenizer):
    with pytest.raises(TypeError, match="RewardFeatureModel"):
        PersonalizedReward(build_tiny_causal_lm(marker_tokenizer), marker_tokenizer)
    with pytest.raises(ValueError, match="processing_class"):
        PersonalizedReward(rfm)
    with pytest.raises(TypeError, match="both be text"):
        PersonalizedReward(rfm, marker_tokenizer)(["a ?"], [[{"role": "assistant", "content": "b"}]], user_id=["bob"])


def test_peft_model_scores_with_its_adapters(rfm, marker_tokenizer):
    peft_model = _lora(_rfm(marker_tokenizer))
    with_adapters = PersonalizedReward(peft_model, marker_tokenizer).score(PROMPTS, COMPLETIONS, ["bob"] * 4)
    base = PersonalizedReward(_rfm(marker_tokenizer), marker_tokenizer).score(PROMPTS, COMPLETIONS, ["bob"] * 4)
    assert (with_adapters - base).abs().max() > 1e-3  # the LoRA update is in effect


def _lora(model):
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["feature_head", "user_weights"],
        init_lora_weights=False,
    )
    return get_peft_model(model, config).eval()


# ---------------------------------------------------------------------- export
_RELOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path, trust, sequences = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
batch = tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
with torch.no_grad():
    scores = model(**batch).logits[:, 0].tolist()
assert "trl_rfm" not in sys.modules
print(json.dumps({"class": type(model).__name__, "num_labels": model.config.num_labels, "scores": scores}))
"""


def _reload_and_score(path, sequences, trust_remote_code=False):
    """Loads the export in a fresh interpreter with plain transformers (no trl_rfm import) and scores `sequences`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, str(path), "1" if trust_remote_code else "0", json.dumps(sequences)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "normalization,score_head,peft",
    [
        ("none", "linear", False),
        ("none", "linear", True),
        ("rms", "normalized", False),
        ("layernorm", "normalized", False),
        ("none", "auto", False),
        ("layernorm", "auto", True),
    ],
)
def test_exported_user_scores_equal_r_u(tmp_path, marker_tokenizer, normalization, score_head, peft):
    model = _rfm(marker_tokenizer, feature_normalization=normalization)
    if peft:
        model = _lora(model)
    reward = PersonalizedReward(model, marker_tokenizer)
    expected = reward.score(PROMPTS, COMPLETIONS, ["carol"] * 4)
    export_user_reward_model(model, "carol", tmp_path, marker_tokenizer, score_head=score_head)
    if peft:
        assert any("lora_" in name for name, _ in model.named_parameters())  # the caller's model keeps its adapters
    linear = score_head == "linear" or (score_head == "auto" and normalization == "none")
    reloaded = _reload_and_score(tmp_path, reward.tokenize(PROMPTS, COMPLETIONS), not linear)
    assert reloaded["class"] == ("LlamaForSequenceClassification" if linear else "UserRewardModel")
    assert reloaded["num_labels"] == 1
    assert (torch.tensor(reloaded["scores"]) - expected).abs().max() <= 1e-4
    assert "alice" not in open(os.path.join(tmp_path, "config.json")).read()  # no user ids in the export


def test_linear_export_of_rms_model_is_refused(tmp_path, rfm, marker_tokenizer):
    with pytest.raises(ValueError, match="score_head='normalized'"):
        export_user_reward_model(rfm, "alice", tmp_path, marker_tokenizer, score_head="linear")
    with pytest.raises(KeyError, match="mallory"):
        export_user_reward_model(rfm, "mallory", tmp_path, marker_tokenizer, score_head="normalized")


# ---------------------------------------------------------------------- relabelling
def test_relabel_best_vs_worst_follows_each_users_reward(rfm, marker_tokenizer):
    reward = PersonalizedReward(rfm, marker_tokenizer)
    prompts = PROMPTS[:2]
    candidates = [COMPLETIONS, list(reversed(COMPLETIONS))]
    pairs = relabel_preferences(reward, prompts, candidates, user_ids=USERS)
    assert set(pairs.column_names) >= {"prompt", "chosen", "rejected", "user_id"}
    assert len(pairs) == len(prompts) * len(USERS)
    for row in pairs:
        scores = reward.score([row["prompt"]] * 4, COMPLETIONS, [row["user_id"]] * 4)
        assert row["chosen"] == COMPLETIONS[int(scores.argmax())]
        assert row["rejected"] == COMPLETIONS[int(scores.argmin())]
        assert row["chosen_reward"] > row["rejected_reward"]


def test_relabel_all_pairs_above_margin_and_per_prompt_users(rfm, marker_tokenizer):
    reward = PersonalizedReward(rfm, marker_tokenizer)
    all_pairs = relabel_preferences(reward, PROMPTS[:1], [COMPLETIONS], user_ids=["alice"], pairing="all_pairs")
    assert len(all_pairs) == 6  # 4 candidates, no ties
    margin = sorted(r["chosen_reward"] - r["rejected_reward"] for r in all_pairs)[2]
    above = relabel_preferences(
        reward, PROMPTS[:1], [COMPLETIONS], user_ids=["alice"], pairing="all_pairs", margin=margin
    )
    assert len(above) == 3 and all(r["chosen_reward"] - r["rejected_reward"] > margin for r in above)
    per_prompt = relabel_preferences(reward, PROMPTS[:2], [COMPLETIONS] * 2, prompt_user_ids=["bob", "carol"])
    assert per_prompt["user_id"] == ["bob", "carol"]
    with pytest.raises(ValueError, match="exactly one"):
        relabel_preferences(reward, PROMPTS[:1], [COMPLETIONS])
    with pytest.raises(ValueError, match="at least 2"):
        relabel_preferences(reward, PROMPTS[:1], [COMPLETIONS[:1]], user_ids=["bob"])


@pytest.mark.slow  # ~40 s: export, then scoring in a fresh process
def test_export_command_line(tmp_path, marker_tokenizer):
    from trl_rfm.cli import main

    model = _rfm(marker_tokenizer, feature_normalization="none")
    model.save_pretrained(tmp_path / "rfm")
    marker_tokenizer.save_pretrained(tmp_path / "rfm")
    main(["export", "--model_path", str(tmp_path / "rfm"), "--user_id", "bob", "--output_dir", str(tmp_path / "bob")])
    reward = PersonalizedReward(model, marker_tokenizer)
    reloaded = _reload_and_score(tmp_path / "bob", reward.tokenize(PROMPTS, COMPLETIONS))
    assert (torch.tensor(reloaded["scores"]) - reward.score(PROMPTS, COMPLETIONS, ["bob"] * 4)).abs().max() <= 1e-4
