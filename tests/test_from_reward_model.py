"""Personalising an existing sequence-classification reward model (`trl_rfm/models/from_reward_model.py`)."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, LlamaConfig
from trl import RewardConfig, RewardTrainer

from trl_rfm import RFMConfig, RFMRewardTrainer, adapt_users, compute_feature_differences
from trl_rfm.models.from_reward_model import from_reward_model


def _reward_model(tokenizer, seed=0):
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch(tokenizer):
    texts = ["the answer is concise </s>", "maybe funny and polite here well so that it is </s>", "well </s>"]
    return tokenizer(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("source", ["instance", "path", "peft"])
def test_population_reward_equals_the_reward_models_score(tmp_path, tokenizer, source):
    reward_model = _reward_model(tokenizer)
    batch = _batch(tokenizer)
    with torch.no_grad():
        torch.nn.init.normal_(reward_model.score.weight, std=1.0)  # scores of a visible scale
        expected = reward_model(**batch).logits
    if source == "path":
        reward_model.save_pretrained(tmp_path / "rm")
        tokenizer.save_pretrained(tmp_path / "rm")
        trainer = RFMRewardTrainer(
            model=str(tmp_path / "rm"),
            args=RFMConfig(str(tmp_path / "out"), num_features=8, report_to="none", use_cpu=True, bf16=False),
            train_dataset=_tiny_dataset(),
            processing_class=tokenizer,
        )
        model = trainer.model
    elif source == "peft":
        peft_model = get_peft_model(reward_model, LoraConfig(task_type="SEQ_CLS", target_modules=["q_proj"]))
        with torch.no_grad():  # a trained adapter: merged into the trunk
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.5)
            expected = peft_model(**batch).logits
        model = from_reward_model(peft_model, num_features=8)
    else:
        model = from_reward_model(reward_model, num_features=8)
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    torch.testing.assert_close(output.population_logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=0)
    assert model.config.feature_normalization == "none"


def _tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"chosen": "the answer is concise", "rejected": "well", "user_id": "a"}] * 4)


@pytest.mark.slow  # ~1-2 min: trains a reward model with TRL, then the personalised model
def test_personalised_reward_model_beats_it_on_held_out_raters(tmp_path, synthetic_strong, tokenizer):
    data = synthetic_strong
    args = dict(
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    # The reward model a TRL user has: trained by TRL on every comparison, as if one rater had made them all.
    reward_model = _reward_model(tokenizer)
    RewardTrainer(
        model=reward_model,
        args=RewardConfig(str(tmp_path / "rm"), num_train_epochs=1, **args),
        train_dataset=data.train.remove_columns("user_id"),
        processing_class=tokenizer,
    ).train()
    reward_model.eval()
    original = from_reward_model(copy.deepcopy(reward_model), num_features=8)

    trainer = RFMRewardTrainer(
        model=reward_model,
        args=RFMConfig(
            str(tmp_path / "rfm"), num_features=8, num_train_epochs=8, user_weights_learning_rate=3e-2, **args
        ),
        train_dataset=data.train,
        processing_class=tokenizer,
    )
    trainer.train()
    model = trainer.model.eval()

    # Held-out raters: the first half of each one's comparisons to adapt, the rest to test.
    heldout, first_half = data.heldout, {}
    for index, user in enumerate(heldout["user_id"]):
        first_half.setdefault(user, []).append(index)
    adapt_rows = sorted(i for rows in first_half.values() for i in rows[: len(rows) // 2])
    test_rows = sorted(set(range(len(heldout))) - set(adapt_rows))
    adapt_users(model, tokenizer, heldout.select(adapt_rows), show_progress=False)
    test = heldout.select(test_rows)

    rfm_differences = compute_feature_differences(model, tokenizer, test, show_progress=False)
    rm_differences = compute_feature_differences(original, tokenizer, test, show_progress=False)[:, 0]  # RM scores
    users = model.get_user_weights(test["user_id"]).detach().float()
    adapted = ((rfm_differences * users).sum(-1) > 0).float().mean().item()
    rm_accuracy = (rm_differences > 0).float().mean().item()
    assert adapted > rm_accuracy + 0.1, (adapted, rm_accuracy)
