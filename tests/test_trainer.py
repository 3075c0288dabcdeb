import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.testing import build_tiny_causal_lm, make_synthetic_preferences, quiet_cpu_args


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        num_features=8,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        user_weights_learning_rate=3e-2,
        num_train_epochs=12,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        seed=0,
    )
    return quiet_cpu_args(RFMConfig, **{**defaults, **overrides})


def _train_and_evaluate(tmp_path, data, tokenizer, tiny_lm, **overrides):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, **overrides),
        train_dataset=data.train,
        eval_dataset=data.test,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer, trainer.evaluate()


@pytest.mark.slow  # ~40 s: 12 epochs
def test_personal_weights_beat_population_when_raters_disagree(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer, metrics = _train_and_evaluate(tmp_path, synthetic_strong, tokenizer, tiny_lm)
    assert trainer.model.user_ids == sorted(set(synthetic_strong.train["user_id"]))
    # Noise-free labels from opposed opinion groups: one reward for all cannot fit them, a reward per user can.
    assert metrics["eval_accuracy"] > 0.85
    assert metrics["eval_accuracy"] - metrics["eval_population_accuracy"] > 0.15
    # Every rater has the same number of test pairs, so per-user (macro) and per-pair accuracies coincide.
    assert metrics["eval_user_macro_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert metrics["eval_population_user_macro_accuracy"] == pytest.approx(
        metrics["eval_population_accuracy"], abs=1e-6
    )


@pytest.mark.slow  # ~30 s: 12 epochs
def test_personal_and_population_match_without_disagreement(tmp_path, tokenizer, tiny_lm):
    data = make_synthetic_preferences(num_users=8, num_heldout_users=0, train_pairs_per_user=128, disagreement=0.0)
    _, metrics = _train_and_evaluate(tmp_path, data, tokenizer, tiny_lm)
    assert metrics["eval_population_accuracy"] > 0.85
    assert abs(metrics["eval_accuracy"] - metrics["eval_population_accuracy"]) < 0.03


def test_lora_trains_only_adapters_feature_head_and_user_table(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, max_steps=5, num_train_epochs=1),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)
    assert any("feature_head.modules_to_save" in n for n in changed)
    assert any("user_weights.modules_to_save" in n and n.endswith(".weight") for n in changed)
    frozen_backbone = {n for n in before if "lora_" not in n and "modules_to_save" not in n}
    assert not (changed & frozen_backbone)


def test_full_fine_tuning_updates_the_backbone(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, max_steps=3, num_train_epochs=1),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
    )
    before = trainer.model.backbone.layers[0].self_attn.q_proj.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.model.backbone.layers[0].self_attn.q_proj.weight)


def _rows(data, n=64):
    return data.train.select(range(n)).to_list()


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
@pytest.mark.parametrize("explicit_prompt", [False, True], ids=["implicit", "explicit"])
def test_all_four_trl_preference_formats(
    tmp_path, synthetic_strong, tokenizer, tiny_lm, conversational, explicit_prompt
):
    rows = []
    for row in _rows(synthetic_strong):
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if conversational:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
            if not explicit_prompt:
                chosen, rejected = prompt + chosen, prompt + rejected
        elif not explicit_prompt:
            chosen, rejected = f"{prompt} {chosen}", f"{prompt} {rejected}"
        new = {"chosen": chosen, "rejected": rejected, "user_id": row["user_id"], "margin": 0.5}
        if explicit_prompt:
            new["prompt"] = prompt
        rows.append(new)
    dataset = Dataset.from_list(rows)
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, max_steps=2, num_train_epochs=1, center_rewards_coefficient=0.01),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert trainer.model.num_users == len({r["user_id"] for r in rows})


@pytest.mark.slow  # ~30 s: two trainings
def test_dataset_without_user_column_trains_a_plain_reward_model(tmp_path, tokenizer, tiny_lm):
    data = make_synthetic_preferences(num_users=4, num_heldout_users=0, train_pairs_per_user=128, disagreement=0.0)
    train, test = data.train.remove_columns("user_id"), data.test.remove_columns("user_id")
    # The default d (32): with centred (`layernorm`) features at d = 8 this plain model reached 0.84 against 0.94 for
    # `rms` (0.95 with `layernorm` at d = 32), a cost of the default normalisation at very small d (docs/model.md).
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, num_features=32),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert trainer.model.num_users == 0
    assert metrics["eval_accuracy"] > 0.85
    assert metrics["eval_accuracy"] == metrics["eval_population_accuracy"]


def test_declared_user_column_must_exist(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    with pytest.raises(ValueError, match="no user column 'rater'"):
        RFMRewardTrainer(
            model=tiny_lm,
            args=_args(tmp_path, user_column="rater"),
            train_dataset=synthetic_strong.train,
            processing_class=tokenizer,
        )


@pytest.mark.parametrize("bad_value", [None, "", "  "])
def test_malformed_user_ids_are_rejected_with_their_row(tmp_path, synthetic_strong, tokenizer, tiny_lm, bad_value):
    rows = _rows(synthetic_strong, 8)
    rows[3]["user_id"] = bad_value
    with pytest.raises(ValueError, match="row 3"):
        RFMRewardTrainer(
            model=tiny_lm, args=_args(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )


def test_eval_dataset_must_keep_the_user_column(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    with pytest.raises(ValueError, match="eval dataset has no user column 'user_id'"):
        RFMRewardTrainer(
            model=tiny_lm,
            args=_args(tmp_path),
            train_dataset=synthetic_strong.train,
            eval_dataset=synthetic_strong.test.remove_columns("user_id"),
            processing_class=tokenizer,
        )


def test_unknown_eval_users_get_population_or_an_error(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, max_steps=1),
        train_dataset=synthetic_strong.train,
        eval_dataset=synthetic_strong.heldout,
        processing_class=tokenizer,
    )
    assert set(trainer.eval_dataset["user_index"]) == {-1}
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == metrics["eval_population_accuracy"]
    with pytest.raises(ValueError, match="heldout_0"):
        RFMRewardTrainer(
            model=tiny_lm,
            args=_args(tmp_path, unknown_users="error"),
            train_dataset=synthetic_strong.train,
            eval_dataset=synthetic_strong.heldout,
            processing_class=tokenizer,
        )


def test_continuing_training_keeps_rows_and_adds_new_users(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    model = RewardFeatureModel.from_backbone(tiny_lm, num_features=8, user_ids=["user_0", "someone_else"])
    weights = model.get_user_weights(["someone_else"]).detach().clone()
    trainer = RFMRewardTrainer(
        model=model,
        args=_args(tmp_path, max_steps=1),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
    )
    assert trainer.model.user_ids[:2] == ["user_0", "someone_else"]
    assert trainer.model.num_users == 1 + len(set(synthetic_strong.train["user_id"]))
    torch.testing.assert_close(trainer.model.get_user_weights(["someone_else"]), weights)


def test_a_plain_reward_config_is_upgraded(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    from trl import RewardConfig

    args = RewardConfig(output_dir=str(tmp_path), max_steps=1, bf16=False, use_cpu=True, report_to="none", seed=3)
    trainer = RFMRewardTrainer(
        model=tiny_lm, args=args, train_dataset=synthetic_strong.train, processing_class=tokenizer
    )
    assert isinstance(trainer.args, RFMConfig) and trainer.args.seed == 3 and trainer.args.num_features == 32


def test_user_table_has_its_own_learning_rate_and_no_weight_decay(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, weight_decay=0.1, user_weights_learning_rate=0.05),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
    )
    optimizer = trainer.create_optimizer()
    table = trainer.model.user_weights.weight
    (group,) = [g for g in optimizer.param_groups if any(p is table for p in g["params"])]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.0
    others = [p for g in optimizer.param_groups if g is not group for p in g["params"]]
    assert all(p is not table for p in others)


@pytest.mark.parametrize(
    ("backbone_rate", "head_rate", "table_rate"),
    [(1e-5, 1e-3, 1e-2), (2e-4, 1e-3, 1e-2), (1e-3, 1e-3, 1e-2), (3e-3, 3e-3, 1e-2)],
)
def test_default_rates_head_at_least_1e_3_table_at_1e_2_trunk_as_given(
    tmp_path, synthetic_strong, tokenizer, tiny_lm, backbone_rate, head_rate, table_rate
):
    # A pretrained trunk fine-tunes at 1e-5..1e-4; the fresh head and table must not inherit such a rate.
    args = _args(tmp_path, learning_rate=backbone_rate)
    args.user_weights_learning_rate = None
    trainer = RFMRewardTrainer(
        model=tiny_lm, args=args, train_dataset=synthetic_strong.train, processing_class=tokenizer
    )
    optimizer = trainer.create_optimizer()

    def rate_of(parameter):
        (group,) = [g for g in optimizer.param_groups if any(p is parameter for p in g["params"])]
        return group["lr"]

    assert rate_of(trainer.model.user_weights.weight) == pytest.approx(table_rate)
    assert rate_of(trainer.model.feature_head.weight) == pytest.approx(head_rate)
    trunk = next(p for n, p in trainer.model.named_parameters() if "feature_head" not in n and "user_weights" not in n)
    assert rate_of(trunk) == pytest.approx(backbone_rate)


def test_lora_head_copy_gets_the_head_learning_rate_floor(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    args = _args(tmp_path, learning_rate=1e-4)
    args.user_weights_learning_rate = None
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    optimizer = trainer.create_optimizer()
    rates = {}
    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad:
            (group,) = [g for g in optimizer.param_groups if any(p is parameter for p in g["params"])]
            rates[name] = group["lr"]
    head = [rate for name, rate in rates.items() if "feature_head." in name]
    table = [rate for name, rate in rates.items() if "user_weights." in name]
    lora = [rate for name, rate in rates.items() if "lora_" in name]
    assert head and table and lora
    assert head == pytest.approx([1e-3] * len(head)) and table == pytest.approx([1e-2] * len(table))
    assert lora == pytest.approx([1e-4] * len(lora))


def test_feature_head_learning_rate_keeps_weight_decay_of_its_groups(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, learning_rate=1e-3, weight_decay=0.1, feature_head_learning_rate=2e-2),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
    )
    optimizer = trainer.create_optimizer()
    head = dict(trainer.model.feature_head.named_parameters())
    for name, parameter in head.items():
        (group,) = [g for g in optimizer.param_groups if any(p is parameter for p in g["params"])]
        assert group["lr"] == pytest.approx(2e-2)
        # transformers decays weights but not biases; the head keeps that split.
        assert group["weight_decay"] == (0.1 if name == "weight" else 0.0)
    trunk = next(p for n, p in trainer.model.named_parameters() if "feature_head" not in n and "user_weights" not in n)
    (group,) = [g for g in optimizer.param_groups if any(p is trunk for p in g["params"])]
    assert group["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="feature_head_learning_rate"):
        _args(tmp_path, feature_head_learning_rate=0.0)
    # Default: the trunk's rate (here at the 1e-3 floor).
    trainer.args.feature_head_learning_rate = None
    trainer.optimizer = None  # transformers builds the optimizer once
    optimizer = trainer.create_optimizer()
    weight = trainer.model.feature_head.weight
    (group,) = [g for g in optimizer.param_groups if any(p is weight for p in g["params"])]
    assert group["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_new_users_prior_is_stored_at_the_end_of_training(tmp_path, synthetic_strong, tokenizer, tiny_lm, lora):
    """The new users' prior is fitted on the final features once (empirical Bayes, around the trained population),
    the training users' rows are their exact fits under it, and users adapted afterwards do not move it."""
    from trl_rfm import adapt_users, fit_user_weights, prior_from_model
    from trl_rfm.adaptation.empirical_bayes import response_reuse_weights
    from trl_rfm.adaptation.features import compute_feature_differences, group_by_user
    from trl_rfm.trainer.user_prior_fit import sample_pairs_per_user

    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, num_train_epochs=2, user_prior_max_pairs_per_user=24),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None,
    )
    model = trainer.model
    assert model.config.user_prior_covariance is None
    trainer.train()
    population, precision = prior_from_model(model)
    covariance = torch.tensor(model.config.user_prior_covariance)
    d = model.config.num_features
    assert precision.shape == (d, d)
    torch.testing.assert_close(precision @ covariance, torch.eye(d), atol=1e-3, rtol=0)
    _, isotropic = prior_from_model(model, isotropic=True)
    assert isotropic == model.config.user_prior_precision == pytest.approx(d / covariance.trace().item(), rel=1e-5)

    # The rows are the users' MAP weights under the stored prior, on the pairs the fit drew.
    dataset = trainer.train_dataset
    pairs = dataset.select(sample_pairs_per_user(dataset["user_index"], 24, trainer.args.seed))
    differences = compute_feature_differences(model, tokenizer, pairs, show_progress=False)
    chosen, rejected = ([tuple(ids) for ids in pairs[c]] for c in ("chosen_ids", "rejected_ids"))
    weights = response_reuse_weights(pairs["user_index"], chosen, rejected).float()
    num_users = model.num_users
    x, _, _ = group_by_user(differences, pairs["user_index"], range(num_users))
    mask = group_by_user(weights[:, None], pairs["user_index"], range(num_users))[0][..., 0]
    expected = fit_user_weights(x, mask, population, precision)
    torch.testing.assert_close(model.get_user_weights().float().detach(), expected, atol=2e-4, rtol=1e-3)

    adapt_users(model, tokenizer, synthetic_strong.heldout, l2=1e3, show_progress=False)  # rows near the population
    torch.testing.assert_close(prior_from_model(model)[1], precision)
    torch.testing.assert_close(prior_from_model(model)[0], population)

    trainer.save_model(str(tmp_path / "saved"))
    backbone = {"backbone": build_tiny_causal_lm(tokenizer)} if lora else {}  # an adapter needs its trunk
    reloaded = RewardFeatureModel.from_pretrained(str(tmp_path / "saved"), **backbone)
    torch.testing.assert_close(prior_from_model(reloaded)[1], precision)
    assert reloaded.config.user_prior_precision == pytest.approx(isotropic, rel=1e-6)


def test_rows_prior_reads_the_trained_rows(tmp_path, synthetic_strong, tokenizer, tiny_lm):
    """`user_prior="rows"`: the isotropic precision of the trained rows' spread, and the rows left as trained."""
    from trl_rfm import prior_from_model

    trainer = RFMRewardTrainer(
        model=tiny_lm,
        args=_args(tmp_path, num_train_epochs=1, user_prior="rows"),
        train_dataset=synthetic_strong.train,
        processing_class=tokenizer,
    )
    # A prior stored by an earlier run (continued training) does not survive: it belongs to other features.
    trainer.model.config.user_prior_covariance = torch.eye(trainer.model.config.num_features).tolist()
    trainer.train()
    model = trainer.model
    _, stored = prior_from_model(model)
    table = model.user_weights().float()
    assert model.config.user_prior_covariance is None
    assert stored == pytest.approx(1 / (table[:-1] - table[-1]).pow(2).mean().item(), rel=1e-6)
