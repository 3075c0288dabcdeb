"""Each bad input or event a user can meet gives a result or an error that names the problem."""

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors import safe_open

from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.adaptation.features import compute_feature_differences, group_by_user
from trl_rfm.adaptation.solver import fit_user_posterior, fit_user_weights
from trl_rfm.cli import main as cli_main
from trl_rfm.io.user_weights_file import USER_WEIGHTS_NAME, UserWeightsFileError
from trl_rfm.models.user_table import normalize_user_id
from trl_rfm.rewards.personalized_reward import PersonalizedReward
from trl_rfm.testing import build_tiny_causal_lm
from trl_rfm.trainer.checkpointing import check_checkpoint_is_complete, latest_complete_checkpoint


USERS = ["alice", "bob", "17"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("lm") / "lm"
    build_tiny_causal_lm(
        tokenizer, hidden_size=32, num_hidden_layers=1, intermediate_size=64, max_position_embeddings=32
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rfm_dir(tmp_path_factory, lm_dir, tokenizer):
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(lm_dir, num_features=4, user_ids=USERS)
    path = tmp_path_factory.mktemp("rfm") / "rfm"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def rfm(rfm_dir):
    return RewardFeatureModel.from_pretrained(rfm_dir).eval()


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------- persistence rows
def test_missing_user_file_is_an_error_unless_the_population_model_is_asked(tmp_path, rfm_dir, tokenizer):
    path = _copy(rfm_dir, tmp_path / "rfm")
    os.remove(path / USER_WEIGHTS_NAME)
    with pytest.raises(
        FileNotFoundError, match=rf"{USER_WEIGHTS_NAME} is missing.*records 3 user.*user_weights=False"
    ):
        RewardFeatureModel.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match=USER_WEIGHTS_NAME):
        PersonalizedReward(str(path), user_id="alice")
    assert RewardFeatureModel.from_pretrained(path, user_weights=False).user_ids == []


def test_a_flipped_byte_in_the_user_table_is_detected(tmp_path, rfm_dir):
    path = _copy(rfm_dir, tmp_path / "rfm")
    user_file = path / USER_WEIGHTS_NAME
    with safe_open(user_file, framework="pt") as handle:
        assert len(handle.metadata()["sha256"]) == 64
    data = bytearray(user_file.read_bytes())
    data[-5] ^= 0x40  # inside the tensor bytes (the header comes first)
    user_file.write_bytes(bytes(data))
    with pytest.raises(UserWeightsFileError, match=rf"{USER_WEIGHTS_NAME} is corrupt: .*SHA-256"):
        RewardFeatureModel.from_pretrained(path)


def test_a_causal_lm_directory_is_named_as_such(lm_dir):
    with pytest.raises(ValueError, match="is a causal LM .*not an RFM.*train one with RFMRewardTrainer"):
        RewardFeatureModel.from_pretrained(lm_dir)


def test_incomplete_trainer_checkpoints_are_skipped_or_refused(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"Resuming from checkpoint-4.*\['checkpoint-6'\].*interrupted"):
        assert latest_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    with pytest.raises(FileNotFoundError, match="checkpoint-6 is incomplete.*Resume from checkpoint-4"):
        check_checkpoint_is_complete(str(tmp_path / "checkpoint-6"))
    # Killed between opening trainer_state.json and writing it (transformers writes it in place): incomplete too.
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text("")
    with pytest.raises(FileNotFoundError, match="checkpoint-6 is incomplete: it has no whole trainer_state.json"):
        check_checkpoint_is_complete(str(tmp_path / "checkpoint-6"))


# ----------------------------------------------------------------------------------------------- ids and indices
def test_integral_float_ids_are_the_integer_ids():
    assert normalize_user_id(17.0) == normalize_user_id(17) == normalize_user_id(np.float64(17.0)) == "17"
    assert normalize_user_id(17.5) == "17.5"
    for bad in (float("inf"), b"17", np.array([1, 2])):
        with pytest.raises(ValueError, match="User id must"):
            normalize_user_id(bad)


def test_negative_user_index_other_than_the_population_is_rejected(rfm, tokenizer):
    batch = tokenizer(["so well"], return_tensors="pt")
    population = rfm(**batch).logits
    torch.testing.assert_close(rfm(**batch, user_index=torch.tensor([-1])).logits, population)
    assert rfm(**batch, user_ids=[17.0]).logits.item() == rfm(**batch, user_ids=["17"]).logits.item()
    for bad in (-3, 3):
        with pytest.raises(IndexError, match=rf"`user_index` \[{bad}\] out of range: valid rows are 0..2"):
            rfm(**batch, user_index=torch.tensor([bad]))


# ----------------------------------------------------------------------------------------------- adaptation inputs
def test_solvers_accept_numpy_and_name_bad_inputs():
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    weights = fit_user_weights(x, np.ones((2, 5)), np.zeros(3), 1.0)
    assert weights.shape == (2, 3) and weights.dtype == torch.float32
    assert fit_user_posterior(x.tolist()).covariance.shape == (2, 3, 3)
    with pytest.raises(TypeError, match="`feature_differences` must be a tensor or an array-like"):
        fit_user_weights([[[1.0], [2.0, 3.0]]])
    grouped, mask, users = group_by_user(x[0], [1.0, 1, "b", "b", 2])
    assert users == ["1", "b", "2"] and grouped.shape == (3, 2, 3)


def test_long_sequences_are_truncated_keeping_the_end(rfm, tokenizer):
    long_completion = " ".join(["so well"] * 40)  # > 32 positions
    reward = PersonalizedReward(rfm, tokenizer, user_id="alice")
    with pytest.warns(UserWarning, match="longer than the model's 32 positions"):
        (score,) = reward(prompts=["polite"], completions=[long_completion])
    assert np.isfinite(score)
    ids = tokenizer(text="polite" + long_completion + tokenizer.eos_token)["input_ids"][-32:]
    expected = rfm(input_ids=torch.tensor([ids]), user_ids=["alice"]).logits.item()
    assert score == pytest.approx(expected, abs=1e-5)
    pairs = Dataset.from_dict({"prompt": ["polite"], "chosen": [long_completion], "rejected": ["so well"]})
    with pytest.warns(UserWarning, match="32 positions"):
        differences = compute_feature_differences(rfm, tokenizer, pairs, show_progress=False)
    assert torch.isfinite(differences).all()


# ----------------------------------------------------------------------------------------------- the trainer
def _args(tmp_path, **overrides):
    options = dict(num_features=4, report_to="none", use_cpu=True, bf16=False, disable_tqdm=True)
    return RFMConfig(output_dir=str(tmp_path / "out"), **{**options, **overrides})


def _pairs(users, completions=None):
    n = len(users)
    return Dataset.from_dict(
        {
            "prompt": ["polite"] * n,
            "chosen": completions or ["so well"] * n,
            "rejected": ["the funny answer"] * n,
            "rater_id": users,
        }
    )


def test_rfm_config_validates_num_features(tmp_path):
    with pytest.raises(ValueError, match="`num_features` must be an integer >= 1, got 0"):
        _args(tmp_path, num_features=0)


def test_trainer_names_missing_columns_and_rater_like_columns(tmp_path, lm_dir):
    no_chosen = Dataset.from_dict({"prompt": ["p"], "answer": ["a"], "rejected": ["b"]})
    with pytest.raises(
        ValueError, match=r"needs the columns 'chosen' and 'rejected'.*\['prompt', 'answer', 'rejected'\]"
    ):
        RFMRewardTrainer(model=lm_dir, args=_args(tmp_path), train_dataset=no_chosen)
    with pytest.warns(UserWarning, match=r"column 'rater_id' that looks like a rater id.*--user_column rater_id"):
        trainer = RFMRewardTrainer(model=lm_dir, args=_args(tmp_path), train_dataset=_pairs(["a", "b"]))
    assert trainer.model.user_ids == []


def test_users_whose_rows_are_all_too_long_fall_back_to_the_population(tmp_path, lm_dir):
    long = " ".join(["so well"] * 40)
    data = _pairs(["a", "a", "b", "b", "c"], ["so well", "so well", long, long, "so well"])
    evaluation = _pairs(["a", "zed", "zed", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = RFMRewardTrainer(
            model=lm_dir,
            args=_args(tmp_path, user_column="rater_id", max_length=30),
            train_dataset=data,
            eval_dataset=evaluation,
        )
    messages = [str(w.message) for w in caught]
    assert any("of 1 user(s) is longer than `max_length`" in m and "'b' (2 row(s))" in m for m in messages), messages
    assert any("1 user(s) not in the training data (2 comparison(s)" in m for m in messages), messages
    assert trainer.model.user_ids == ["a", "c"]
    assert sorted(set(trainer.train_dataset["user_index"])) == [0, 1]
    assert trainer.eval_dataset["user_index"] == [0, -1, -1, -1]


# ----------------------------------------------------------------------------------------------- the CLI
def _adapt(tmp_path, model_dir, lines=None, *extra, file_name="c.jsonl"):
    path = tmp_path / file_name
    path.write_text(lines if lines is not None else "")
    return [
        "adapt",
        "--model_name_or_path",
        str(model_dir),
        "--comparisons_file",
        str(path),
        "--user_id",
        "zoe",
        "--output_dir",
        str(tmp_path / "out"),
        *extra,
    ]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("malformed", r"c\.jsonl, line 2: not valid JSON"),
        ("empty", r"No comparisons in .*c\.jsonl"),
        ("l2", r"--l2 'abc' is not accepted: use `model`, `evidence` or a positive number"),
        ("no-tokenizer", r"No tokenizer could be loaded from .*--tokenizer_name_or_path"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, rfm_dir, capsys, case, expected):
    good = json.dumps({"prompt": "polite", "chosen": "so well", "rejected": "the funny answer"}) + "\n"
    model_dir = rfm_dir
    if case == "no-tokenizer":
        model_dir = _copy(rfm_dir, tmp_path / "bare")
        for name in os.listdir(model_dir):
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                os.remove(model_dir / name)
    lines = {"malformed": good + '{"prompt": "p", "chosen": \n', "empty": ""}.get(case, good)
    argv = _adapt(tmp_path, model_dir, lines, *(["--l2", "abc"] if case == "l2" else []))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.replace("\r", "\n")
    errors = [line for line in err.splitlines() if line.startswith("trl-rfm adapt: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(expected, errors[0]), errors[0]
    with pytest.raises(Exception):  # --debug: the exception itself, with its traceback
        cli_main([*argv, "--debug"])


def test_cli_adapt_still_works(tmp_path, rfm_dir):
    good = json.dumps({"prompt": "polite", "chosen": "so well", "rejected": "the funny answer"}) + "\n"
    cli_main(_adapt(tmp_path, rfm_dir, good * 3))
    assert RewardFeatureModel.from_pretrained(tmp_path / "out").user_ids == [*USERS, "zoe"]
