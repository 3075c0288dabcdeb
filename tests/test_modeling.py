import copy

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    Qwen3MoeConfig,
)

from trl_rfm import RewardFeatureConfig, RewardFeatureModel
from trl_rfm.models.from_reward_model import from_reward_model


@pytest.fixture
def model(tiny_lm):
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(tiny_lm, num_features=8, user_ids=["alice", "bob", 7])
    model.add_users(["alice", "bob", 7], weights=torch.randn(3, 8))
    return model.eval()


def _batch(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"


def test_config_is_a_reward_model_config():
    config = RewardFeatureConfig(
        text_config={"model_type": "llama", "hidden_size": 16, "num_attention_heads": 2}, num_features=4
    )
    assert config.num_labels == 1  # TRL's RewardTrainer requires it
    with pytest.raises(ValueError, match="num_features=1"):
        RewardFeatureConfig(num_features=1)
    for num_features in (1, 2):  # a centred vector of 1 or 2 entries keeps at most one sign
        with pytest.raises(ValueError, match=f"num_features={num_features}.*layernorm"):
            RewardFeatureConfig(num_features=num_features, feature_normalization="layernorm")
    assert RewardFeatureConfig(num_features=3, feature_normalization="layernorm").num_features == 3
    with pytest.raises(ValueError, match="population_weights"):
        RewardFeatureConfig(population_weights="median")


def test_features_have_unit_rms_scale(model, tokenizer):
    batch = _batch(tokenizer, ["the funny answer", "polite formal"])
    phi = model.reward_features(**batch)
    assert phi.shape == (2, 8)
    torch.testing.assert_close(phi.norm(dim=-1), torch.full((2,), 8**0.5), rtol=1e-4, atol=1e-4)


def test_pooling_reads_the_last_real_token_for_either_padding_side(model, tokenizer):
    texts = ["the funny answer is here", "polite"]
    right = model.reward_features(**_batch(tokenizer, texts, "right"))
    left = model.reward_features(**_batch(tokenizer, texts, "left"))
    alone = torch.cat([model.reward_features(**_batch(tokenizer, [t])) for t in texts])
    torch.testing.assert_close(right, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-5)


def test_forward_rewards_are_features_dot_user_weights(model, tokenizer):
    batch = _batch(tokenizer, ["the funny answer", "polite formal", "so well", "creative"])
    users = ["alice", "bob", "7", None]
    logits = model(**batch, user_ids=users).logits
    phi = model.reward_features(**batch)
    expected = (phi * model.get_user_weights(users)).sum(-1, keepdim=True)
    torch.testing.assert_close(logits, expected)
    # No users given: the population reward.
    torch.testing.assert_close(model(**batch).logits, phi @ model.get_population_weights()[:, None])


def test_many_users_scored_in_one_backbone_pass(model, tokenizer):
    batch = _batch(tokenizer, ["the funny answer", "polite formal"])
    calls = []
    handle = model.backbone.register_forward_hook(lambda *args: calls.append(1))
    rewards = model.rewards_for_users(**batch)  # [B, U]
    handle.remove()
    assert len(calls) == 1 and rewards.shape == (2, 3)
    for column, user in enumerate(model.user_ids):
        torch.testing.assert_close(rewards[:, column : column + 1], model(**batch, user_ids=[user] * 2).logits)


def test_unknown_users_get_population_weights_or_an_error(model, tokenizer):
    batch = _batch(tokenizer, ["the funny answer"])
    with pytest.warns(UserWarning, match="carol"):
        logits = model(**batch, user_ids=["carol"]).logits
    torch.testing.assert_close(logits, model(**batch).logits)
    with pytest.raises(KeyError, match="carol"):
        model.get_user_index(["carol"], strict=True)
    with pytest.raises(ValueError, match="empty"):
        model.get_user_index([" "])


def test_add_replace_and_remove_users(model):
    before = model.get_user_weights(["alice"]).clone()
    model.add_users(["dave"])  # new user starts at the population weights
    torch.testing.assert_close(model.get_user_weights(["dave"])[0], model.get_population_weights())
    model.add_users(["dave", "bob"], weights=torch.ones(2, 8))  # replace both
    torch.testing.assert_close(model.get_user_weights(["bob", "dave"]), torch.ones(2, 8))
    model.remove_users(["bob"])
    assert model.user_ids == ["alice", "7", "dave"] and model.config.num_users == 3
    torch.testing.assert_close(model.get_user_weights(["alice"]), before)
    with pytest.raises(ValueError, match="shape"):
        model.add_users(["erin"], weights=torch.ones(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        model.add_users(["erin"], weights=torch.full((1, 8), float("nan")))
    with pytest.raises(KeyError, match="zoe"):
        model.remove_users(["zoe"])


def test_auto_classes_and_backbone_loading(tmp_path, tiny_lm, tokenizer):
    lm_path = tmp_path / "lm"
    tiny_lm.save_pretrained(lm_path)
    model = RewardFeatureModel.from_backbone(str(lm_path), num_features=4)
    # The trunk's weights come from the checkpoint, the LM head is dropped.
    torch.testing.assert_close(model.backbone.embed_tokens.weight, tiny_lm.model.embed_tokens.weight)
    model.save_pretrained(tmp_path / "rfm")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "rfm"), RewardFeatureConfig)
    for auto_class in (AutoModel, AutoModelForSequenceClassification):
        loaded = auto_class.from_pretrained(tmp_path / "rfm")
        assert isinstance(loaded, RewardFeatureModel)
        batch = _batch(tokenizer, ["the funny answer"])
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(ValueError, match="already a Reward Feature Model"):
        RewardFeatureModel.from_backbone(str(tmp_path / "rfm"))


SMALL = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TRUNKS = {
    "qwen2": lambda: Qwen2Config(**SMALL, num_key_value_heads=2),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **SMALL, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16
    ),
    "llama": lambda: LlamaConfig(**SMALL, num_key_value_heads=2),
    "gpt2": lambda: GPT2Config(vocab_size=32, n_embd=16, n_layer=2, n_head=2, n_positions=32),
    "bert": lambda: BertConfig(**SMALL),
}


@pytest.mark.parametrize("architecture", sorted(TRUNKS))
def test_parameter_names_are_those_of_the_reward_model(tmp_path, architecture):
    """The trunk is registered under its `base_model_prefix` (`model`, `transformer`, `bert`): the RFM's parameters
    are named as those of `AutoModelForSequenceClassification` on the same trunk, head aside, built from a config or
    from that reward model, and saved under those names."""
    config = TRUNKS[architecture]()
    reward_config = copy.deepcopy(config)
    reward_config.num_labels = 1
    reward_model = AutoModelForSequenceClassification.from_config(reward_config)
    prefix = reward_model.base_model_prefix
    expected = [n for n, _ in reward_model.named_parameters() if n.startswith(f"{prefix}.")]
    assert expected  # the reward model's trunk

    models = [RewardFeatureModel.from_backbone(config, num_features=4)]
    models.append(RewardFeatureModel.from_backbone(reward_model, num_features=4))
    if architecture != "bert":  # BERT's reward model reads its pooler: no plain `score` head to personalise
        models.append(from_reward_model(reward_model, num_features=4))
    for model in models:
        names = [n for n, _ in model.named_parameters()]
        assert [n for n in names if not n.startswith(("feature_head.", "user_weights."))] == expected
        assert model.base_model_prefix == prefix
        assert model.backbone is model.base_model is getattr(model, prefix)
    with pytest.raises(AttributeError):
        model.backbone = None  # read-only: the trunk is `getattr(model, model.base_model_prefix)`

    # Saved under the keys the reward model saves (transformers' checkpoint format, e.g. one tensor per expert).
    model.save_pretrained(tmp_path / "rfm")
    reward_model.save_pretrained(tmp_path / "reward_model")
    saved = {}
    for name in ("rfm", "reward_model"):
        with safe_open(tmp_path / name / "model.safetensors", framework="pt") as handle:
            saved[name] = {key for key in handle.keys() if key.startswith(f"{prefix}.")}
    assert saved["rfm"] == saved["reward_model"]
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    assert [n for n, _ in loaded.named_parameters() if n.startswith(f"{prefix}.")] == expected
