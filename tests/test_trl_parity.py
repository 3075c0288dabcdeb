"""
Parity with TRL: each scenario runs stock `trl.RewardTrainer` and `RFMRewardTrainer` (without a rater column and
with a 3-rater column) on the same inputs, and asserts the same observable behaviour: it trains, every trainable
parameter moves and frozen ones stay, same errors for the same bad inputs, same parameter dtype, and the files a TRL
user expects (plus the RFM's own). Tiny Llama / Qwen2 / Qwen3-MoE / Mixtral / Qwen2-MoE models and word-level
tokenizers are built locally (no Hub). TRL gets `*ForSequenceClassification` models; the RFM gets the causal LM of
the same architecture, its main use (an existing reward model is covered by `test_same_reward_model_for_both`).

The PEFT scenarios of TRL's `tests/test_reward_trainer.py` are reproduced as TRL writes them (same model for every
variant, frozen parameters named from `AutoModelForSequenceClassification.from_pretrained(model_id)`), on offline
stand-ins of TRL's tiny Hub models, and `LoraConfig()` without targets adapts the same modules of every trunk, or
fails with the same error, as on the trunk's sequence-classification model.
"""

import copy
import os

import pytest
import torch
from datasets import Dataset, IterableDataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)
from trl import RewardConfig, RewardTrainer

from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.io.feature_head import RFM_MODULES_TO_SAVE
from trl_rfm.testing import build_tokenizer
from trl_rfm.trainer.peft_defaults import fill_default_targets


PAIRS = [
    ("What colour is the sky?", "It is blue.", "It is green."),
    ("Name a fruit.", "An apple.", "A chair."),
    ("How many legs has a cat?", "Four legs.", "Nine wheels."),
    ("Where do fish live?", "In water.", "On the moon."),
    ("What do bees make?", "Bees make honey.", "Bees make steel."),
    ("Is ice cold?", "Yes, ice is cold.", "No, ice is hot."),
    ("What is two plus two?", "Four.", "Seven."),
    ("Which animal barks?", "A dog barks.", "A fish barks."),
    ("When does the sun rise?", "In the morning.", "At midnight."),
    ("What do we drink?", "We drink water.", "We drink sand."),
    ("Which season is cold?", "Winter is cold.", "Summer is cold."),
    ("What flies?", "Birds fly.", "Rocks fly."),
]
RATERS = ["alice", "bob", "carol"]
VARIANTS = ("trl", "rfm", "rfm-raters")  # stock TRL; RFM without a rater column; RFM with 3 raters
ARCHITECTURES = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mixtral": lambda **kw: MixtralConfig(**kw, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda **kw: Qwen2MoeConfig(
        **kw, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16
    ),
    "qwen3_moe": lambda **kw: Qwen3MoeConfig(
        **kw, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16
    ),
}


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([text for pair in PAIRS for text in pair])


def _config(architecture, tokenizer, **overrides):
    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return ARCHITECTURES[architecture](**{**sizes, **overrides})


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """`{(architecture, "rm" | "lm"): path}`: a tiny sequence-classification model (num_labels=1) for TRL and the causal
    LM of the same architecture for the RFM, each saved with the tokenizer."""
    root, paths = tmp_path_factory.mktemp("parity-models"), {}
    for architecture in ARCHITECTURES:
        torch.manual_seed(0)
        for kind, auto_class, extra in [
            ("rm", AutoModelForSequenceClassification, {"num_labels": 1}),
            ("lm", AutoModelForCausalLM, {}),
        ]:
            path = str(root / f"{architecture}-{kind}")
            auto_class.from_config(_config(architecture, tokenizer, **extra)).save_pretrained(path)
            tokenizer.save_pretrained(path)
            paths[architecture, kind] = path
    return paths


def _model(variant, model_dirs, architecture="llama"):
    return model_dirs[architecture, "rm" if variant == "trl" else "lm"]


def _rows(fmt="standard_explicit", raters=False, margin=False):
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(PAIRS):
        if fmt.startswith("conversational"):
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            if fmt.endswith("implicit"):
                row = {"chosen": prompt + chosen, "rejected": prompt + rejected}
        else:
            row = {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected}
            if fmt.endswith("implicit"):
                row = {"chosen": prompt + " " + chosen, "rejected": prompt + " " + rejected}
        if margin:
            row["margin"] = 0.5 + 0.1 * i
        if raters:
            row["user_id"] = RATERS[i % len(RATERS)]
        rows.append(row)
    return rows


def _dataset(variant, fmt="standard_explicit", **kwargs):
    return Dataset.from_list(_rows(fmt, raters=variant == "rfm-raters", **kwargs))


def _args(variant, tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / variant),
        max_steps=3,
        per_device_train_batch_size=6,  # every batch holds all 3 raters
        per_device_eval_batch_size=6,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    if variant != "trl":
        defaults["num_features"] = 4
    return (RewardConfig if variant == "trl" else RFMConfig)(**{**defaults, **overrides})


def _trainer(variant, **kwargs):
    return (RewardTrainer if variant == "trl" else RFMRewardTrainer)(**kwargs)


def _train(trainer):
    """Trains; returns (moved, unmoved trainable, changed frozen) parameter names."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    output = trainer.train()
    assert torch.isfinite(torch.tensor(output.training_loss))
    params = dict(trainer.model.named_parameters())
    unmoved = [n for n, p in params.items() if p.requires_grad and torch.equal(p, before[n])]
    frozen_changed = [n for n, p in params.items() if not p.requires_grad and not torch.equal(p, before[n])]
    return unmoved, frozen_changed


def _dtypes(trainer):
    return {p.dtype for p in trainer.model.parameters()}


def _check_all_variants(build, tmp_path):
    """Runs `build(variant, tmp_path)` -> trainer for every variant, trains each and asserts TRL's behaviour holds for
    every one of them (and the same parameter dtypes as TRL's). Returns the trainers."""
    trainers = {}
    for variant in VARIANTS:
        trainer = build(variant, tmp_path)
        unmoved, frozen_changed = _train(trainer)
        assert not unmoved, f"{variant}: trainable parameters that did not move: {unmoved}"
        assert not frozen_changed, f"{variant}: frozen parameters that changed: {frozen_changed}"
        trainers[variant] = trainer
    assert _dtypes(trainers["rfm"]) == _dtypes(trainers["trl"]) == _dtypes(trainers["rfm-raters"])
    raters = trainers["rfm-raters"].model
    raters = raters.get_base_model() if hasattr(raters, "get_base_model") else raters
    assert raters.user_ids == sorted(RATERS)
    return trainers


# ---------------------------------------------------------------------------------------------------- scenarios
@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param("standard_implicit", marks=pytest.mark.slow),
        "standard_explicit",
        pytest.param("conversational_implicit", marks=pytest.mark.slow),
        "conversational_explicit",
    ],
)
def test_dataset_formats(tmp_path, model_dirs, tokenizer, fmt):
    def build(variant, tmp_path):
        dataset = _dataset(variant, fmt)
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path),
            train_dataset=dataset,
            eval_dataset=dataset,
            processing_class=tokenizer,
        )

    trainers = _check_all_variants(build, tmp_path)
    for trainer in trainers.values():
        assert 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0


@pytest.mark.parametrize("architecture", ["qwen2", pytest.param("mixtral", marks=pytest.mark.slow)])
def test_architectures(tmp_path, model_dirs, tokenizer, architecture):
    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=_model(variant, model_dirs, architecture),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    _check_all_variants(build, tmp_path)


@pytest.mark.parametrize(
    "legacy_names", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["chosen_ids", "chosen_input_ids"]
)
def test_pretokenized(tmp_path, model_dirs, tokenizer, legacy_names):
    chosen, rejected = ("chosen_input_ids", "rejected_input_ids") if legacy_names else ("chosen_ids", "rejected_ids")

    def build(variant, tmp_path):
        rows = []
        for row in _rows(raters=variant == "rfm-raters"):
            new = {
                chosen: tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"],
                rejected: tokenizer(row["prompt"] + row["rejected"] + tokenizer.eos_token)["input_ids"],
            }
            if "user_id" in row:
                new["user_id"] = row["user_id"]
            rows.append(new)
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )

    _check_all_variants(build, tmp_path)


def test_iterable_dataset(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        rows = _rows(raters=variant == "rfm-raters")
        dataset = IterableDataset.from_generator(lambda: iter(rows))
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
        )

    _check_all_variants(build, tmp_path)


def test_eval_dataset_dict_and_compute_metrics(tmp_path, model_dirs, tokenizer):
    calls = []

    def compute_metrics(prediction):
        calls.append(prediction)
        return {"custom": 1.0}

    def build(variant, tmp_path):
        dataset = _dataset(variant)
        evaluation = {"first": dataset.select(range(6)), "second": dataset.select(range(6, 12))}
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path, eval_strategy="steps", eval_steps=3),
            train_dataset=dataset,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
        )

    trainers = _check_all_variants(build, tmp_path)
    for variant, trainer in trainers.items():
        logged = set().union(*(entry.keys() for entry in trainer.state.log_history))
        assert {"eval_first_custom", "eval_second_custom", "eval_first_loss"} <= logged, variant


@pytest.mark.parametrize(
    "use_reentrant,peft",
    [
        pytest.param(True, False, id="full-reentrant", marks=pytest.mark.slow),
        pytest.param(False, False, id="full-non-reentrant", marks=pytest.mark.slow),
        pytest.param(True, True, id="lora-reentrant", marks=pytest.mark.slow),
        pytest.param(False, True, id="lora-non-reentrant"),
    ],
)
def test_gradient_checkpointing(tmp_path, model_dirs, tokenizer, use_reentrant, peft):
    def build(variant, tmp_path):
        args = _args(
            variant,
            tmp_path,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": use_reentrant},
        )
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=args,
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig() if peft else None,
        )

    _check_all_variants(build, tmp_path)


def test_margin_and_center_rewards(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path, center_rewards_coefficient=0.01),
            train_dataset=_dataset(variant, margin=True),
            processing_class=tokenizer,
        )

    _check_all_variants(build, tmp_path)


@pytest.mark.parametrize("architecture", ["llama", pytest.param("qwen2", marks=pytest.mark.slow)])
def test_lora_default_targets(tmp_path, model_dirs, tokenizer, architecture):
    """`LoraConfig()` without `target_modules`: peft's defaults for the architecture (q_proj/v_proj)."""

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=_model(variant, model_dirs, architecture),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(),
        )

    trainers = _check_all_variants(build, tmp_path)
    for trainer in trainers.values():
        lora = {n.split(".")[-4] for n, _ in trainer.model.named_parameters() if "lora_A" in n}
        assert lora == {"q_proj", "v_proj"}


@pytest.mark.slow
def test_lora_on_moe_trunk(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=_model(variant, model_dirs, "mixtral"),
            args=_args(variant, tmp_path, gradient_checkpointing=True),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(target_modules=["q_proj", "v_proj"]),
        )

    _check_all_variants(build, tmp_path)


def test_tokenizer_without_pad_token(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        no_pad = build_tokenizer([text for pair in PAIRS for text in pair])
        no_pad.pad_token = None
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=no_pad,
        )

    trainers = _check_all_variants(build, tmp_path)
    for trainer in trainers.values():  # TRL pads with EOS
        assert trainer.processing_class.pad_token == trainer.processing_class.eos_token


def test_model_instance_finds_its_tokenizer(tmp_path, model_dirs):
    """A model instance without `processing_class`: the tokenizer is loaded from the model's `name_or_path`."""

    def build(variant, tmp_path):
        auto_class = AutoModelForSequenceClassification if variant == "trl" else AutoModelForCausalLM
        return _trainer(
            variant,
            model=auto_class.from_pretrained(_model(variant, model_dirs)),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
        )

    trainers = _check_all_variants(build, tmp_path)
    assert trainers["rfm"].model.name_or_path == model_dirs["llama", "lm"]


@pytest.mark.slow
def test_fp16_model_init_kwargs(tmp_path, model_dirs, tokenizer):
    """`model_init_kwargs={"dtype": torch.float16}` under the default bf16 autocast: trains, parameters stay fp16."""

    def build(variant, tmp_path):
        args = _args(variant, tmp_path, model_init_kwargs={"dtype": torch.float16}, learning_rate=0.1, bf16=True)
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=args,
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    trainers = _check_all_variants(build, tmp_path)
    assert _dtypes(trainers["rfm-raters"]) == {torch.float16}


def test_same_reward_model_for_both(tmp_path, model_dirs, tokenizer):
    """The very `AutoModelForSequenceClassification` path TRL trains is accepted by the RFM trainer (personalised)."""

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=model_dirs["llama", "rm"],
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    _check_all_variants(build, tmp_path)


@pytest.mark.slow
def test_peft_model_around_a_reward_model(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        model = AutoModelForSequenceClassification.from_pretrained(model_dirs["llama", "rm"])
        return _trainer(
            variant,
            model=get_peft_model(model, LoraConfig(task_type="SEQ_CLS")),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    trainers = _check_all_variants(build, tmp_path)
    for trainer in trainers.values():
        assert any("lora_B" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------- TRL's PEFT tests
# Stand-ins of TRL's tiny Hub models: `model_dirs[<architecture>, "lm"]` for tiny-Qwen2ForCausalLM-2.5 and
# tiny-Qwen3MoeForCausalLM, `model_dirs["qwen2", "rm"]` for tiny-Qwen2ForSequenceClassification-2.5.
def _base_param_names(model_id, **kwargs):
    """TRL's frozen parameters: those of `AutoModelForSequenceClassification.from_pretrained(model_id)` in PEFT."""
    model = AutoModelForSequenceClassification.from_pretrained(model_id, dtype="float32", **kwargs)
    return [f"base_model.model.{n}" for n, _ in model.named_parameters()]


def _frozen_originals(trainer):
    """The copies that PEFT keeps, frozen, of the modules it trains in full (`modules_to_save`: the RFM's
    `feature_head` and `user_weights`), to restore them when adapters are disabled. TRL's reward model has none."""
    return [n for n, _ in trainer.model.named_parameters() if ".original_module." in n]


def _train_and_check_frozen_names(trainer, base_param_names):
    """TRL's check, as `tests/test_reward_trainer.py` writes it: the base model's parameters are unchanged, and every
    other parameter (except PEFT's `base_layer`) changed."""
    previous_trainable_params = {n: param.clone() for n, param in trainer.model.named_parameters()}

    trainer.train()

    assert trainer.state.log_history[-1]["train_loss"] is not None

    # Check that the peft params have changed and the base model params have not changed
    for n, param in previous_trainable_params.items():
        new_param = trainer.model.get_parameter(n)
        if n in base_param_names:  # We expect the base model params to be the same
            torch.testing.assert_close(param, new_param, msg=f"Parameter {n} has changed.")
        elif "base_layer" not in n:  # We expect the peft params to be different (except for the base layer)
            assert not torch.equal(param, new_param), f"Parameter {n} has not changed."


def _check_trl_peft_scenario(build, base_param_names, tmp_path):
    """TRL's check for every variant. The RFM's frozen names are TRL's plus PEFT's frozen originals of its head and
    user table (`_frozen_originals`), which the RFM trainer trains as `modules_to_save` and TRL has no counterpart of."""
    for variant in VARIANTS:
        trainer = build(variant, tmp_path)
        frozen = base_param_names + (_frozen_originals(trainer) if variant != "trl" else [])
        _train_and_check_frozen_names(trainer, frozen)


def test_train_dense_with_peft_config(tmp_path, model_dirs, tokenizer):
    model_id = model_dirs["qwen2", "lm"]
    base_param_names = _base_param_names(model_id)

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=model_id,
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(),
        )

    _check_trl_peft_scenario(build, base_param_names, tmp_path)


def test_train_moe_with_peft_config(tmp_path, model_dirs, tokenizer):
    """Fused experts: peft (on transformers 5) turns gate/up/down_proj into LoRA on the experts' parameters."""
    model_id = model_dirs["qwen3_moe", "lm"]
    base_param_names = _base_param_names(model_id)

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=model_id,
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(target_modules=["gate_proj", "up_proj", "down_proj", "score"]),
        )

    _check_trl_peft_scenario(build, base_param_names, tmp_path)


def test_train_peft_model(tmp_path, model_dirs, tokenizer):
    model_id = model_dirs["qwen2", "lm"]
    base_param_names = _base_param_names(model_id, num_labels=1)

    def build(variant, tmp_path):
        model = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=1, dtype="float32")
        return _trainer(
            variant,
            model=get_peft_model(model, LoraConfig()),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    _check_trl_peft_scenario(build, base_param_names, tmp_path)


def test_train_with_peft_config_and_gradient_checkpointing(tmp_path, model_dirs, tokenizer):
    model_id = model_dirs["qwen2", "lm"]
    base_param_names = _base_param_names(model_id)

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=model_id,
            args=_args(variant, tmp_path, gradient_checkpointing=True),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(),
        )

    _check_trl_peft_scenario(build, base_param_names, tmp_path)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_train_with_peft_config_and_gradient_checkpointing_reentrant(tmp_path, model_dirs, tokenizer, use_reentrant):
    model_id = model_dirs["qwen2", "rm"]
    base_param_names = _base_param_names(model_id)

    def build(variant, tmp_path):
        args = _args(
            variant,
            tmp_path,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": use_reentrant},
        )
        return _trainer(
            variant,
            model=model_id,
            args=args,
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(),
        )

    _check_trl_peft_scenario(build, base_param_names, tmp_path)


# ---------------------------------------------------------------------------------------------------- PEFT targets
TRUNKS = {  # the trunks of TRL's suite and of this file: dense, MoE, GPT-2 (Conv1D) and an encoder
    **{name: lambda name=name: _config(name, build_tokenizer(["a b"])) for name in ARCHITECTURES},
    "gpt2": lambda: GPT2Config(vocab_size=16, n_embd=16, n_layer=1, n_head=2, n_positions=32),
    "bert": lambda: BertConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ),
}


def _adapted(model, peft_config):
    """What peft adapts on `model`: (modules, parameters), or the error it raises."""
    try:
        wrapped = get_peft_model(model, peft_config)
    except Exception as error:
        return type(error), str(error)
    tuner = wrapped.base_model
    return sorted(tuner.targeted_module_names), sorted(getattr(tuner, "targeted_parameter_names", []))


@pytest.mark.parametrize("trunk", ["model_type", "model"], ids=["by_model_type", "by_model"])
@pytest.mark.parametrize("architecture", sorted(TRUNKS))
def test_lora_without_targets_adapts_what_it_adapts_on_the_reward_model(architecture, trunk):
    """`LoraConfig()`: the RFM's trunk gets the LoRA modules (or the error) peft gives the trunk's
    `*ForSequenceClassification`, whether the targets are resolved from the trunk's `model_type` (as the trainer does)
    or from the model itself."""
    config = TRUNKS[architecture]()
    reward_config = copy.deepcopy(config)
    reward_config.num_labels = 1
    expected = _adapted(AutoModelForSequenceClassification.from_config(reward_config), LoraConfig())

    model = RewardFeatureModel.from_backbone(copy.deepcopy(config), num_features=4)
    peft_config = LoraConfig(modules_to_save=list(RFM_MODULES_TO_SAVE))
    try:
        fill_default_targets(peft_config, config.model_type if trunk == "model_type" else model)
    except Exception as error:
        assert (type(error), str(error)) == expected
        return
    assert _adapted(model, peft_config) == expected


# ---------------------------------------------------------------------------------------------------- saved files
def _files(directory):
    return {os.path.relpath(os.path.join(d, f), directory) for d, _, files in os.walk(directory) for f in files}


@pytest.mark.parametrize("peft", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_saved_files(tmp_path, model_dirs, tokenizer, peft):
    """`save_model` and the checkpoints hold every file TRL writes; the RFM adds `user_weights.safetensors` when it
    has users."""
    files = {}
    for variant in VARIANTS:
        trainer = _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path, save_strategy="steps", save_steps=3),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig() if peft else None,
        )
        trainer.train()
        trainer.save_model()
        files[variant] = _files(trainer.args.output_dir)
    for variant in ("rfm", "rfm-raters"):
        missing = files["trl"] - files[variant]
        assert not missing, f"{variant} lacks TRL's files {sorted(missing)}"
    extra_with_raters = files["rfm-raters"] - files["trl"]
    assert "user_weights.safetensors" in extra_with_raters
    assert "checkpoint-3/user_weights.safetensors" in extra_with_raters
    assert not any("user_weights" in f for f in files["rfm"])  # no raters, no user file


# ---------------------------------------------------------------------------------------------------- errors
def _error(build):
    with pytest.raises(Exception) as info:
        build()
    return info.value


def _assert_same_error(build, tmp_path):
    errors = {variant: _error(lambda: build(variant, tmp_path)) for variant in VARIANTS}
    for variant in ("rfm", "rfm-raters"):
        assert type(errors[variant]) is type(errors["trl"]), (variant, errors)
        assert str(errors["trl"]) in str(errors[variant]), (variant, errors)


def test_error_num_labels(tmp_path, model_dirs, tokenizer):
    def build(variant, tmp_path):
        model = AutoModelForSequenceClassification.from_config(_config("llama", tokenizer, num_labels=2))
        return _trainer(
            variant,
            model=model,
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
        )

    _assert_same_error(build, tmp_path)
    assert "reward models require `num_labels=1`" in str(_error(lambda: build("rfm", tmp_path)))


@pytest.mark.parametrize(
    "case", ["no_train_dataset", "unknown_pad_token", "unknown_eos_token", "iterable_without_max_steps", "peft_twice"]
)
def test_same_errors(tmp_path, model_dirs, tokenizer, case):
    def build(variant, tmp_path):
        model, overrides, dataset, peft_config = _model(variant, model_dirs), {}, _dataset(variant), None
        if case == "no_train_dataset":
            dataset = None
        elif case == "unknown_pad_token":
            overrides["pad_token"] = "<not-a-token>"
        elif case == "unknown_eos_token":
            overrides["eos_token"] = "<not-a-token>"
        elif case == "iterable_without_max_steps":
            rows = _rows(raters=variant == "rfm-raters")
            dataset, overrides["max_steps"] = IterableDataset.from_generator(lambda: iter(rows)), -1
        elif case == "peft_twice":
            model = AutoModelForSequenceClassification.from_pretrained(model_dirs["llama", "rm"])
            model, peft_config = get_peft_model(model, LoraConfig(task_type="SEQ_CLS")), LoraConfig()
        return _trainer(
            variant,
            model=model,
            args=_args(variant, tmp_path, **overrides),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    _assert_same_error(build, tmp_path)


@pytest.mark.parametrize(
    "architecture",
    ["qwen3_moe", pytest.param("mixtral", marks=pytest.mark.slow), pytest.param("qwen2_moe", marks=pytest.mark.slow)],
)
def test_same_error_lora_default_targets_on_moe(tmp_path, model_dirs, tokenizer, architecture):
    """`LoraConfig()` on MoE trunks: peft has no defaults for Qwen2-MoE, and on transformers 5 it rewrites the
    defaults of fused-expert models (Qwen3-MoE, Mixtral) to nothing; the RFM raises the same peft error as TRL."""

    def build(variant, tmp_path):
        return _trainer(
            variant,
            model=_model(variant, model_dirs, architecture),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant),
            processing_class=tokenizer,
            peft_config=LoraConfig(),
        )

    _assert_same_error(build, tmp_path)


def test_same_error_conversational_without_chat_template(tmp_path, model_dirs):
    def build(variant, tmp_path):
        no_template = build_tokenizer([text for pair in PAIRS for text in pair])
        no_template.chat_template = None
        return _trainer(
            variant,
            model=_model(variant, model_dirs),
            args=_args(variant, tmp_path),
            train_dataset=_dataset(variant, "conversational_explicit"),
            processing_class=no_template,
        )

    _assert_same_error(build, tmp_path)
