"""The hierarchical user table (`population_weights="hierarchical"`: `w_u = w_pop + delta_u`) and layer-normalised
features: users keep the weights they are given, the prior leaves `w_pop` free, every comparison trains `w_pop`, and
full and LoRA round trips are exact."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from trl_rfm import RewardFeatureModel
from trl_rfm.io import save_load


USERS = ["alice", "bob", "7"]
TEXTS = ["the funny answer", "polite formal", "so well", "creative"]


@pytest.fixture
def model(tmp_path, tiny_lm):
    tiny_lm.save_pretrained(tmp_path / "lm")  # a LoRA save names its trunk by path
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(
        str(tmp_path / "lm"), num_features=8, population_weights="hierarchical", feature_normalization="layernorm"
    )
    with torch.no_grad():
        model.feature_head.weight.normal_(std=0.5)
        model.user_weights.population.normal_()
    model.add_users(USERS, weights=torch.randn(len(USERS), 8))
    return model.eval()


@pytest.fixture
def batch(tokenizer):
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _rewards(model, batch):
    rfm = model.get_base_model() if isinstance(model, PeftModel) else model
    with torch.no_grad():
        return torch.cat([rfm.rewards_for_users(**batch), model(**batch).logits], dim=-1)  # [B, U + 1]


def test_users_keep_the_weights_they_are_given_and_the_table_stores_offsets(model):
    weights = torch.randn(2, 8)
    model.add_users(["alice", "carol"], weights=weights)  # one replaced, one new
    torch.testing.assert_close(model.get_user_weights(["alice", "carol"]), weights, rtol=0, atol=1e-6)
    population = model.get_population_weights().detach()
    torch.testing.assert_close(model.user_weights.weight[-1], weights[1] - population, rtol=0, atol=1e-6)
    with torch.no_grad():  # moving the population moves every user with it
        model.user_weights.population.add_(1.0)
    torch.testing.assert_close(model.get_user_weights(["carol"])[0], weights[1] + 1.0, rtol=0, atol=1e-6)


def test_layernorm_features_are_centred_and_scaled(model, batch):
    with torch.no_grad():
        phi = model.reward_features(**batch)
    torch.testing.assert_close(phi.mean(-1), torch.zeros(len(TEXTS)), rtol=0, atol=1e-5)
    torch.testing.assert_close(phi.var(-1, unbiased=False), torch.ones(len(TEXTS)), rtol=0, atol=1e-3)


def test_the_prior_leaves_the_population_free_and_every_comparison_trains_it(model, batch):
    model.train()
    output = model(**batch, user_index=torch.tensor([0, 1, 2, 0]))
    population_grad, rows_grad = torch.autograd.grad(
        output.user_weights_penalty, [model.user_weights.population, model.user_weights.weight]
    )
    assert population_grad.abs().max() == 0  # ||delta_u||^2 does not pull w_pop towards anything
    torch.testing.assert_close(rows_grad, 2 * model.user_weights.weight.detach() / len(USERS))
    # The reward of a user's comparison reaches w_pop: it is learned from every rater's data.
    (population_grad,) = torch.autograd.grad(output.logits[0, 0], [model.user_weights.population])
    assert population_grad.abs().sum() > 0


def test_full_and_lora_round_trips_are_exact(tmp_path, model, batch):
    expected = _rewards(model, batch)
    model.save_pretrained(tmp_path / "full")
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "full")
    assert loaded.config.population_weights == "hierarchical" and loaded.user_ids == USERS
    torch.testing.assert_close(_rewards(loaded.eval(), batch), expected, rtol=0, atol=1e-6)

    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["feature_head", "user_weights"])
    )
    with torch.no_grad():
        torch.manual_seed(1)
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    expected = _rewards(peft_model, batch)
    save_load.save_reward_feature_model(peft_model, tmp_path / "lora")
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "lora")
    assert isinstance(loaded, PeftModel) and loaded.get_base_model().user_ids == USERS
    torch.testing.assert_close(_rewards(loaded, batch), expected, rtol=0, atol=1e-6)
    population_only = RewardFeatureModel.from_pretrained(tmp_path / "lora", user_weights=False)
    torch.testing.assert_close(_rewards(population_only, batch), expected[:, -1:], rtol=0, atol=1e-6)
