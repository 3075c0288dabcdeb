"""Saving and loading Reward Feature Models: round trips (full, LoRA, Hub cache), the user file, atomic saves, bad
input, and Trainer checkpoints that resume with the same users."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSequenceClassification

from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.io import save_load
from trl_rfm.io.user_weights_file import USER_WEIGHTS_NAME, UserWeightsFileError
from trl_rfm.testing import make_synthetic_preferences, quiet_cpu_args


USERS = ["alice", "bob", "7", "dana"]
TEXTS = ["the funny answer", "polite formal", "so well", "creative"]


@pytest.fixture
def lm_path(tmp_path, tiny_lm):
    path = tmp_path / "lm"
    tiny_lm.save_pretrained(path)
    return str(path)


def _model(lm_path, seed=0, population_weights="learned"):
    torch.manual_seed(seed)
    model = RewardFeatureModel.from_backbone(lm_path, num_features=8, population_weights=population_weights)
    with torch.no_grad():
        model.feature_head.weight.normal_(std=0.5)
        model.user_weights.population.normal_()
    model.add_users(USERS, weights=torch.randn(len(USERS), 8))
    return model.eval()


@pytest.fixture
def model(lm_path):
    return _model(lm_path)


@pytest.fixture
def batch(tokenizer):
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _rewards(model, batch):
    """Every user's reward and the population reward, [B, U + 1]."""
    rfm = model.get_base_model() if isinstance(model, PeftModel) else model
    with torch.no_grad():
        return torch.cat([rfm.rewards_for_users(**batch), model(**batch).logits], dim=-1)


def _keys(path):
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys())


# ---------------------------------------------------------------------------------------------- round trips
def test_full_round_trip_reproduces_every_user_through_the_auto_classes(tmp_path, model, batch):
    expected = _rewards(model, batch)
    model.save_pretrained(tmp_path / "rfm")
    files = sorted(os.listdir(tmp_path / "rfm"))
    assert files == ["README.md", "config.json", "model.safetensors", USER_WEIGHTS_NAME]
    # The users are personal data: not in the config, not in the model weights.
    config = json.loads((tmp_path / "rfm" / "config.json").read_text())
    assert config["num_users"] == 0 and "alice" not in json.dumps(config)
    assert not any("user_weights.weight" in key for key in _keys(tmp_path / "rfm" / "model.safetensors"))
    for auto_class in (AutoModelForSequenceClassification, AutoModel, RewardFeatureModel):
        loaded = auto_class.from_pretrained(tmp_path / "rfm").eval()
        assert isinstance(loaded, RewardFeatureModel) and loaded.user_ids == USERS
        torch.testing.assert_close(_rewards(loaded, batch), expected, rtol=0, atol=1e-6)
    assert model.config.num_users == len(USERS)  # saving did not change the model


def test_loading_without_user_weights_gives_the_population_model(tmp_path, model, batch):
    population = _rewards(model, batch)[:, -1:]
    model.save_pretrained(tmp_path / "rfm")
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm", user_weights=False).eval()
    assert loaded.user_ids == []
    torch.testing.assert_close(loaded(**batch).logits, population, rtol=0, atol=1e-6)
    # A population-only save has no user file at all, and can still take new users.
    model.save_pretrained(tmp_path / "public", save_user_weights=False)
    assert USER_WEIGHTS_NAME not in os.listdir(tmp_path / "public")
    public = RewardFeatureModel.from_pretrained(tmp_path / "public").eval()
    torch.testing.assert_close(public(**batch).logits, population, rtol=0, atol=1e-6)
    public.add_users(["zoe"], weights=model.get_user_weights(["bob"]))
    zoe, bob = public(**batch, user_ids=["zoe"] * 4).logits, model(**batch, user_ids=["bob"] * 4).logits
    torch.testing.assert_close(zoe, bob)
    with pytest.raises(FileNotFoundError, match=USER_WEIGHTS_NAME):
        RewardFeatureModel.from_pretrained(tmp_path / "public", user_weights=True)
    # The private user file, kept apart, can be loaded next to the public model.
    private_file = tmp_path / "rfm" / USER_WEIGHTS_NAME
    private = RewardFeatureModel.from_pretrained(tmp_path / "public", user_weights=private_file)
    torch.testing.assert_close(_rewards(private.eval(), batch), _rewards(model, batch), rtol=0, atol=1e-6)


def test_mean_population_weights_survive_a_save_without_users(tmp_path, lm_path, batch):
    model = _model(lm_path, population_weights="mean")
    population = _rewards(model, batch)[:, -1:]
    model.save_pretrained(tmp_path / "rfm", save_user_weights=False)
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm").eval()
    torch.testing.assert_close(loaded(**batch).logits, population, rtol=0, atol=1e-6)


def _lora(model):
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["feature_head", "user_weights"])
    )
    with torch.no_grad():  # move every trainable weight away from its initial value
        torch.manual_seed(1)
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return peft_model.eval()


def test_lora_round_trip_keeps_adapter_head_and_users(tmp_path, model, batch):
    before = _rewards(model, batch)
    peft_model = _lora(model)
    expected = _rewards(peft_model, batch)
    assert not torch.allclose(expected, before, atol=1e-3)
    save_load.save_reward_feature_model(peft_model, tmp_path / "lora")
    files = sorted(os.listdir(tmp_path / "lora"))
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", USER_WEIGHTS_NAME]
    adapter_keys = _keys(tmp_path / "lora" / "adapter_model.safetensors")
    assert {"base_model.model.feature_head.weight", "base_model.model.user_weights.population"} <= adapter_keys
    assert not any(key.endswith("user_weights.weight") for key in adapter_keys)  # personal data stays in the user file
    for loader in (RewardFeatureModel, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path / "lora")
        assert isinstance(loaded, PeftModel) and loaded.get_base_model().user_ids == USERS
        torch.testing.assert_close(_rewards(loaded, batch), expected, rtol=0, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert isinstance(merged, RewardFeatureModel)
    torch.testing.assert_close(_rewards(merged, batch), expected, rtol=1e-5, atol=1e-5)
    population_only = RewardFeatureModel.from_pretrained(tmp_path / "lora", user_weights=False)
    assert population_only.get_base_model().user_ids == []
    torch.testing.assert_close(_rewards(population_only, batch), expected[:, -1:], rtol=0, atol=1e-6)


def test_lora_round_trip_keeps_pooling_and_stored_prior(tmp_path, lm_path, batch):
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(lm_path, num_features=8, pooling="mean")
    model.add_users(USERS, weights=torch.randn(len(USERS), 8))
    model.config.user_prior_precision = 12.5
    peft_model = _lora(model.eval())
    expected = _rewards(peft_model, batch)
    save_load.save_reward_feature_model(peft_model, tmp_path / "lora")
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "lora")
    assert loaded.config.pooling == "mean" and loaded.config.user_prior_precision == 12.5
    torch.testing.assert_close(_rewards(loaded, batch), expected, rtol=0, atol=1e-6)  # "last" would read other states


def _hub_cache(cache_dir, repo_id, folder):
    """Lays `folder` out as a cached snapshot of the Hub repo `repo_id`, as `huggingface_hub` downloads it."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_through_the_same_code_path(tmp_path, model, batch):
    model.save_pretrained(tmp_path / "rfm")
    _hub_cache(tmp_path / "hub", "someone/rfm", tmp_path / "rfm")
    loaded = AutoModelForSequenceClassification.from_pretrained("someone/rfm", cache_dir=tmp_path / "hub").eval()
    assert loaded.user_ids == USERS
    torch.testing.assert_close(_rewards(loaded, batch), _rewards(model, batch), rtol=0, atol=1e-6)
    # Without its user file, a repo whose config records users is an error, as a local folder is (`tests/test_hub.py`
    # covers real uploads); the population model on request, or the private user file loaded beside it.
    os.remove(tmp_path / "hub" / "models--someone--rfm" / "snapshots" / ("0" * 40) / USER_WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match=rf"someone/rfm/{USER_WEIGHTS_NAME} is missing.*user_weights=False"):
        RewardFeatureModel.from_pretrained("someone/rfm", cache_dir=tmp_path / "hub")
    public = RewardFeatureModel.from_pretrained("someone/rfm", cache_dir=tmp_path / "hub", user_weights=False)
    assert public.user_ids == []
    private = RewardFeatureModel.from_pretrained(
        "someone/rfm", cache_dir=tmp_path / "hub", user_weights=tmp_path / "rfm" / USER_WEIGHTS_NAME
    )
    assert private.user_ids == USERS


# ---------------------------------------------------------------------------------------------- earlier saves
LEGACY = Path(__file__).parent / "fixtures" / "legacy_rfm"  # saved with the trunk under `backbone.`


@pytest.mark.parametrize("name", ["llama", "qwen3_moe", "gpt2", "bert", "llama-lora"])
def test_a_model_saved_with_the_trunk_under_backbone_loads_and_scores_the_same(tmp_path, name):
    expected = load_file(LEGACY / "expected.safetensors")
    batch = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    trunk = {"backbone": str(LEGACY / "llama-lora-trunk")} if name == "llama-lora" else {}
    model = RewardFeatureModel.from_pretrained(str(LEGACY / name), **trunk)
    assert (model.get_base_model() if name == "llama-lora" else model).user_ids == ["alice", "bob"]
    torch.testing.assert_close(_rewards(model, batch), expected[name], rtol=0, atol=1e-6)

    # Saved again, under the trunk's current name.
    if name == "llama-lora":
        save_load.save_reward_feature_model(model, tmp_path / "again")
        keys = _keys(tmp_path / "again" / "adapter_model.safetensors")
    else:
        model.save_pretrained(tmp_path / "again")
        keys = _keys(tmp_path / "again" / "model.safetensors")
    prefix = (model.get_base_model() if name == "llama-lora" else model).base_model_prefix
    assert not any("backbone." in key for key in keys) and any(f"{prefix}." in key for key in keys)
    again = RewardFeatureModel.from_pretrained(str(tmp_path / "again"), **trunk)
    torch.testing.assert_close(_rewards(again, batch), expected[name], rtol=0, atol=1e-6)


def test_an_earlier_state_dict_loads_into_the_renamed_trunk():
    """`load_state_dict` with `backbone.` keys (a Trainer checkpoint from before the rename) fills the trunk."""
    expected = load_file(LEGACY / "expected.safetensors")
    batch = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = RewardFeatureModel.from_pretrained(str(LEGACY / "llama"))
    state_dict = load_file(LEGACY / "llama" / "model.safetensors")
    assert any(key.startswith("backbone.") for key in state_dict)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert missing == ["user_weights.weight"] and unexpected == []  # the users live in the user file
    torch.testing.assert_close(_rewards(model, batch)[:, -1:], expected["llama"][:, -1:], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad input
def test_feature_dimension_mismatch_names_the_file(tmp_path, model):
    model.save_pretrained(tmp_path / "rfm")
    config = json.loads((tmp_path / "rfm" / "config.json").read_text())
    config["num_features"] = 6
    (tmp_path / "rfm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: the feature head has 8 features .* num_features=6"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")


def _rewrite_user_file(path, weights=None, **metadata_changes):
    with safe_open(path, framework="pt") as handle:
        metadata, table = handle.metadata(), handle.get_tensor("user_weights")
    save_file({"user_weights": table if weights is None else weights}, path, metadata={**metadata, **metadata_changes})


def test_user_file_that_does_not_match_its_vocabulary_or_the_model(tmp_path, model, lm_path):
    model.save_pretrained(tmp_path / "rfm")
    user_file = tmp_path / "rfm" / USER_WEIGHTS_NAME
    original = user_file.read_bytes()

    _rewrite_user_file(user_file, user_ids=json.dumps(USERS + ["eve"]))
    message = rf"{USER_WEIGHTS_NAME}: its vocabulary has 5 user ids but its table has 4 rows"
    with pytest.raises(UserWeightsFileError, match=message):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")

    user_file.write_bytes(original)
    _rewrite_user_file(user_file, weights=torch.zeros(4, 6))
    with pytest.raises(UserWeightsFileError, match=r"users have 6 features but the model has num_features=8"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")

    user_file.write_bytes(original)
    _rewrite_user_file(user_file, user_ids=json.dumps(["alice", "alice", "bob", "7"]))
    with pytest.raises(UserWeightsFileError, match="duplicate user ids"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")

    # The user file of another model: same shapes, other features.
    user_file.write_bytes(original)
    _model(lm_path, seed=1).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / USER_WEIGHTS_NAME, user_file)
    message = rf"{USER_WEIGHTS_NAME} was saved for another model.*model\.safetensors"
    with pytest.raises(UserWeightsFileError, match=message):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    # ... also when given explicitly next to a model.
    (tmp_path / "rfm_users.safetensors").write_bytes(original)
    with pytest.raises(UserWeightsFileError, match="rfm_users.safetensors was saved for another model"):
        RewardFeatureModel.from_pretrained(tmp_path / "other", user_weights=tmp_path / "rfm_users.safetensors")


def test_corrupt_or_missing_files(tmp_path, model):
    model.save_pretrained(tmp_path / "rfm")
    user_file = tmp_path / "rfm" / USER_WEIGHTS_NAME
    user_file.write_bytes(user_file.read_bytes()[:100])  # truncated, as by a crash or a partial copy
    with pytest.raises(UserWeightsFileError, match=rf"{USER_WEIGHTS_NAME} is not a readable safetensors file"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    user_file.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserWeightsFileError, match="corrupt or truncated"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm")

    model.save_pretrained(tmp_path / "rfm2")
    weights = tmp_path / "rfm2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm2")
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="No safetensors weights"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm2")


def test_user_weights_missing_from_explicit_path(tmp_path, model):
    model.save_pretrained(tmp_path / "rfm")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        RewardFeatureModel.from_pretrained(tmp_path / "rfm", user_weights=tmp_path / "nowhere.safetensors")


# ---------------------------------------------------------------------------------------------- atomic saves
def test_a_save_that_fails_midway_leaves_the_previous_model(tmp_path, model, lm_path, batch, monkeypatch):
    model.save_pretrained(tmp_path / "rfm")
    before = {name: (tmp_path / "rfm" / name).read_bytes() for name in os.listdir(tmp_path / "rfm")}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the user file")

    monkeypatch.setattr(save_load.user_weights_file, "save_user_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        _model(lm_path, seed=1).save_pretrained(tmp_path / "rfm")
    assert {name: (tmp_path / "rfm" / name).read_bytes() for name in os.listdir(tmp_path / "rfm")} == before
    assert sorted(os.listdir(tmp_path)) == ["lm", "rfm"]  # no staging folder left behind
    reloaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    torch.testing.assert_close(_rewards(reloaded, batch), _rewards(model, batch), rtol=0, atol=0)


def test_an_interrupted_replacement_keeps_the_previous_model(tmp_path, model, lm_path, batch, monkeypatch):
    # Every kill point of a save is covered by tests/test_fault_injection.py; this is the common case: killed
    # while the new files go in, the folder still holds the previous model, whole.
    model.save_pretrained(tmp_path / "rfm")
    from trl_rfm.io import directory

    def crash(first, second):
        raise KeyboardInterrupt("killed while swapping the folders")

    monkeypatch.setattr(directory, "_exchange", crash)
    with pytest.raises(KeyboardInterrupt):
        _model(lm_path, seed=1).save_pretrained(tmp_path / "rfm")
    monkeypatch.undo()
    reloaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    torch.testing.assert_close(_rewards(reloaded, batch), _rewards(model, batch), rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["lm", "rfm"]


def test_saving_over_another_layout_leaves_no_stale_weights(tmp_path, model, batch):
    model.save_pretrained(tmp_path / "rfm", max_shard_size="100KB")
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "rfm")
    reloaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    torch.testing.assert_close(_rewards(reloaded, batch), _rewards(model, batch), rtol=0, atol=1e-6)
    (tmp_path / "rfm" / "notes.txt").write_text("kept")
    peft_model = _lora(model)
    save_load.save_reward_feature_model(peft_model, tmp_path / "rfm")
    files = set(os.listdir(tmp_path / "rfm"))
    assert not any(name.startswith("model") for name in files) and "notes.txt" in files
    assert oct(os.stat(tmp_path / "rfm").st_mode & 0o777) != oct(0o700)
    reloaded = RewardFeatureModel.from_pretrained(tmp_path / "rfm")
    torch.testing.assert_close(_rewards(reloaded, batch), _rewards(peft_model, batch), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- Trainer checkpoints
def _trainer(output_dir, data, tokenizer, lm_path, lora=False, **overrides):
    defaults = dict(
        output_dir=str(output_dir),
        num_features=4,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        user_weights_learning_rate=3e-2,
        max_steps=8,
        # `learned` stores the rows themselves: a resumed run is then bit-exact. The default `hierarchical` table
        # stores offsets, rebuilt as `w_u - w_pop` from the user file's rows (1 ulp), which 4 more Adam steps amplify
        # to ~1e-6; its save/load round trip itself is exact to 1e-6 (tests/test_hierarchical_users.py).
        population_weights="learned",
        feature_normalization="rms",
        save_strategy="steps",
        save_steps=4,
        seed=0,
    )
    args = quiet_cpu_args(RFMConfig, **{**defaults, **overrides})
    return RFMRewardTrainer(
        model=lm_path,
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None,
    )


@pytest.fixture(scope="module")
def small_data():
    return make_synthetic_preferences(num_users=4, num_heldout_users=0, train_pairs_per_user=32, disagreement=1.0)


@pytest.mark.slow  # ~40 s per case: three trainings
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, small_data, tokenizer, lm_path, batch, lora):
    uninterrupted = _trainer(tmp_path / "a", small_data, tokenizer, lm_path, lora)
    uninterrupted.train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    with safe_open(checkpoint / USER_WEIGHTS_NAME, framework="pt") as handle:
        assert json.loads(handle.metadata()["user_ids"]) == sorted(set(small_data.train["user_id"]))
    resumed = _trainer(tmp_path / "b", small_data, tokenizer, lm_path, lora)
    untrained = _rewards(resumed.model.eval(), batch)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = _rewards(uninterrupted.model.eval(), batch)
    assert not torch.allclose(untrained, expected, atol=1e-3)
    torch.testing.assert_close(_rewards(resumed.model.eval(), batch), expected, rtol=0, atol=1e-6)

    # The final model round-trips, with the trainer's users.
    uninterrupted.save_model(str(tmp_path / "final"))
    loaded = RewardFeatureModel.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(_rewards(loaded.eval(), batch), expected, rtol=0, atol=1e-6)
    card = (tmp_path / "final" / "README.md").read_text()
    assert "trl-rfm" in card and "Training raters: 4" in card


def test_resume_with_other_users_or_without_the_user_file_is_refused(tmp_path, small_data, tokenizer, lm_path):
    _trainer(tmp_path / "a", small_data, tokenizer, lm_path, max_steps=4).train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    other = make_synthetic_preferences(
        num_users=5, num_heldout_users=0, train_pairs_per_user=32, disagreement=1.0, seed=3
    )
    with pytest.raises(UserWeightsFileError, match=r"holds 4 users but the training data has 5"):
        _trainer(tmp_path / "b", other, tokenizer, lm_path).train(resume_from_checkpoint=str(checkpoint))
    os.remove(checkpoint / USER_WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match=rf"{USER_WEIGHTS_NAME} is missing"):
        _trainer(tmp_path / "c", small_data, tokenizer, lm_path).train(resume_from_checkpoint=str(checkpoint))
