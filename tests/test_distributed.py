"""
Multi-process training is the same training: 2-process DDP (gloo) and 2-process DeepSpeed ZeRO-2/3 on CPU give the
losses, evaluation metrics, weights and saved rewards of a 1-process run with the same global batch and seed.

Each run is `examples/train_rfm.py` launched as a user would launch it (`accelerate launch ...`), on 128 synthetic
comparisons of 4 raters, 6 optimisation steps of 16 pairs (1 process x 16, or 2 processes x 8).

Tolerances: losses and evaluation loss 1e-4 (absolute); user table and population weights 1e-4; every other weight
5e-4 (Adam turns last-bit differences of near-zero gradients into steps of up to lr = 1e-3, so a tolerance far below
one step still tells "same training" from "one rank's data, or unsynchronised users"); rewards of the saved models,
each loaded in a single process, 1e-3.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from trl_rfm import RewardFeatureModel, prior_from_model
from trl_rfm.testing import free_local_port, make_synthetic_preferences, save_tiny_causal_lm


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_rfm.py"
CONFIGS = REPO / "examples" / "accelerate"
GLOBAL_BATCH = 16
SYNTHETIC = dict(num_users=4, pairs_per_user=32, seed=0)
LORA = ["--use_peft", "--lora_task_type", "SEQ_CLS", "--lora_r", "4", "--lora_alpha", "8",
        "--lora_target_modules", "q_proj", "v_proj"]  # fmt: skip

LOSS_ATOL, USER_ATOL, WEIGHT_ATOL, REWARD_ATOL = 1e-4, 1e-4, 5e-4, 1e-3


def _training_args(model: str, output_dir: Path, num_processes: int) -> list[str]:
    per_device = str(GLOBAL_BATCH // num_processes)
    return [
        "--model_name_or_path", model,
        "--dataset_name", "synthetic",
        "--synthetic_num_users", str(SYNTHETIC["num_users"]),
        "--synthetic_pairs_per_user", str(SYNTHETIC["pairs_per_user"]),
        "--output_dir", str(output_dir),
        "--num_features", "8",
        "--per_device_train_batch_size", per_device,
        "--per_device_eval_batch_size", per_device,
        "--max_steps", "6",
        "--learning_rate", "1e-3",
        "--user_weights_learning_rate", "1e-2",
        "--logging_steps", "1",
        "--eval_strategy", "steps",
        "--eval_steps", "1000",  # evaluated once, after training, by the script
        "--save_strategy", "no",
        "--bf16", "False",
        "--report_to", "none",
        "--disable_tqdm", "True",
        "--seed", str(SYNTHETIC["seed"]),
    ]  # fmt: skip


def _run(command: list[str], output_dir: Path, threads: int) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts prints every thread's Python stack
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)}\nfailed with exit code {result.returncode}:\n{result.stderr[-6000:]}"
        )
    return output_dir


def train_single_process(model: str, output_dir: Path, extra: list[str] = ()) -> Path:
    args = _training_args(model, output_dir, num_processes=1) + ["--use_cpu", "True", *extra]
    return _run([sys.executable, str(SCRIPT), *args], output_dir, threads=2)


def two_process_launch(launcher: list[str]) -> list[str]:
    """`accelerate launch` of 2 CPU processes with `launcher`'s options, on a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_local_port())]  # fmt: skip


def train_two_processes(launcher: list[str], model: str, output_dir: Path, extra: list[str] = ()) -> Path:
    args = _training_args(model, output_dir, num_processes=2) + list(extra)
    return _run([*two_process_launch(launcher), str(SCRIPT), *args], output_dir, threads=1)


# DDP over gloo: the README's command. DeepSpeed cannot take `--cpu`; `--ddp_backend gloo` makes accelerate set up
# DeepSpeed's process group over gloo on a machine without GPUs.
DDP = (["--multi_gpu"], ["--use_cpu", "True"])
ZERO2 = (["--config_file", str(CONFIGS / "deepspeed_zero2.yaml")], ["--ddp_backend", "gloo"])
ZERO3 = (["--config_file", str(CONFIGS / "deepspeed_zero3.yaml")], ["--ddp_backend", "gloo"])


def _logged_losses(output_dir: Path) -> torch.Tensor:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return torch.tensor([entry["loss"] for entry in history if "loss" in entry])


def _eval_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "eval_results.json").read_text())


def _load(output_dir: Path):
    model = RewardFeatureModel.from_pretrained(str(output_dir))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model.eval(), base


def _rewards(output_dir: Path, base_model: RewardFeatureModel) -> torch.Tensor:
    data = make_synthetic_preferences(
        num_users=SYNTHETIC["num_users"], num_heldout_users=0, train_pairs_per_user=SYNTHETIC["pairs_per_user"],
        seed=SYNTHETIC["seed"],
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    texts = [p + " " + c for p, c in zip(data.test["prompt"][:32], data.test["chosen"][:32])]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return base_model.rewards_for_users(batch["input_ids"], batch["attention_mask"])  # [32, users]


def assert_same_training(reference: Path, candidate: Path) -> None:
    """`candidate` (2 processes) trained like `reference` (1 process): losses, metrics, weights, saved rewards."""
    losses, expected_losses = _logged_losses(candidate), _logged_losses(reference)
    assert len(losses) == len(expected_losses) == 6
    torch.testing.assert_close(losses, expected_losses, atol=LOSS_ATOL, rtol=0)

    # Evaluation metrics are gathered over both ranks' halves of the evaluation set.
    metrics, expected = _eval_metrics(candidate), _eval_metrics(reference)
    for key in ("eval_accuracy", "eval_population_accuracy", "eval_user_macro_accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], abs=LOSS_ATOL)

    # The saved model loads in one process, with the same users, weights and rewards.
    model, base = _load(candidate)
    expected_model, expected_base = _load(reference)
    data_users = sorted(f"{u}" for u in set(make_synthetic_preferences(
        num_users=SYNTHETIC["num_users"], num_heldout_users=0, train_pairs_per_user=SYNTHETIC["pairs_per_user"],
        seed=SYNTHETIC["seed"]).train["user_id"]))  # fmt: skip
    assert base.user_ids == expected_base.user_ids == data_users
    torch.testing.assert_close(base.get_user_weights(), expected_base.get_user_weights(), atol=USER_ATOL, rtol=0)
    torch.testing.assert_close(
        base.get_population_weights(), expected_base.get_population_weights(), atol=USER_ATOL, rtol=0
    )
    # New users' prior, fitted on the final features at the end of training by every rank on the same pairs (under
    # ZeRO-3 every rank takes part in the same forward passes), and the rows refitted under it.
    covariance = torch.tensor(base.config.user_prior_covariance)
    expected_covariance = torch.tensor(expected_base.config.user_prior_covariance)
    torch.testing.assert_close(covariance, expected_covariance, atol=1e-3 * expected_covariance.diag().mean(), rtol=0)
    assert base.config.user_prior_precision == pytest.approx(expected_base.config.user_prior_precision, rel=1e-3)
    torch.testing.assert_close(prior_from_model(base)[1], torch.linalg.inv(covariance), atol=1e-2, rtol=1e-3)
    weights, expected_weights = model.state_dict(), expected_model.state_dict()
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        if ".original_module." in name:  # PEFT's unused copy of a `modules_to_save` module: random at load, not saved
            continue
        torch.testing.assert_close(
            tensor, expected_weights[name], atol=WEIGHT_ATOL, rtol=0, msg=lambda m: f"{name}: {m}"
        )
    torch.testing.assert_close(_rewards(candidate, base), _rewards(reference, expected_base), atol=REWARD_ATOL, rtol=0)


@pytest.fixture(scope="module")
def tiny_lm_path(tmp_path_factory) -> str:
    """A tiny causal LM on disk, so that DeepSpeed ZeRO-3 (which builds models partitioned) starts from the same
    weights as a single process."""
    data = make_synthetic_preferences(num_users=SYNTHETIC["num_users"], num_heldout_users=0, train_pairs_per_user=1)
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), data.vocabulary_texts(), seed=0)


@pytest.fixture(scope="module")
def reference_tiny(tmp_path_factory) -> Path:
    return train_single_process("tiny", tmp_path_factory.mktemp("single-tiny"))


@pytest.fixture(scope="module")
def reference_from_path(tmp_path_factory, tiny_lm_path) -> Path:
    return train_single_process(tiny_lm_path, tmp_path_factory.mktemp("single-path"))


@pytest.fixture(scope="module")
def reference_lora(tmp_path_factory, tiny_lm_path) -> Path:
    return train_single_process(tiny_lm_path, tmp_path_factory.mktemp("single-lora"), LORA)


def test_ddp_two_processes_match_one(reference_tiny, tmp_path):
    launcher, extra = DDP
    assert_same_training(reference_tiny, train_two_processes(launcher, "tiny", tmp_path / "ddp", extra))


def test_deepspeed_zero2_two_processes_match_one(reference_tiny, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install deepspeed`")
    launcher, extra = ZERO2
    assert_same_training(reference_tiny, train_two_processes(launcher, "tiny", tmp_path / "zero2", extra))


def test_deepspeed_zero3_two_processes_match_one(reference_from_path, tiny_lm_path, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install deepspeed`")
    launcher, extra = ZERO3
    assert_same_training(reference_from_path, train_two_processes(launcher, tiny_lm_path, tmp_path / "zero3", extra))


def test_deepspeed_zero3_lora_two_processes_match_one(reference_lora, tiny_lm_path, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install deepspeed`")
    launcher, extra = ZERO3
    output_dir = train_two_processes(launcher, tiny_lm_path, tmp_path / "zero3-lora", [*extra, *LORA])
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert_same_training(reference_lora, output_dir)


# A launch aborted now and then after a good save (rank 1: "terminate called without an active exception",
# SIGABRT, about 1 launch in 30 on a loaded 2-core machine): a gloo worker thread, alive because stale references kept
# the process group from being freed, needed the GIL during interpreter finalisation (trl_rfm/trainer/process_group.py).
# A script that does not call `end_training()` must exit 0 every time, under the environment in which the abort was
# seen, DDP 10 times and each DeepSpeed stage twice (each launch ~10 s of both cores); and, what does not depend on
# luck, trl-rfm's exit handler must leave no gloo worker to finalisation (DDP, ZeRO-2: every group freed, its workers
# joined) or only idle ones (ZeRO-3, whose partitioned parameters keep groups alive through closures).
EXIT_SCRIPT = REPO / "tests" / "fixtures" / "train_save_exit.py"
EXIT_ENV = {"TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}  # `_run` adds TOKENIZERS_PARALLELISM


@pytest.mark.parametrize(
    ("launcher", "repeats", "workers_freed"),
    [(DDP, 10, True), (ZERO2, 2, True), (ZERO3, 2, False)],
    ids=["ddp", "zero2", "zero3"],
)
def test_two_process_launches_exit_cleanly_after_saving(
    launcher, repeats, workers_freed, tiny_lm_path, tmp_path, monkeypatch
):
    if launcher is not DDP:
        pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install deepspeed`")
    for name, value in EXIT_ENV.items():
        monkeypatch.setenv(name, value)
    (launch_options, extra), failures = launcher, []
    gloo_backend = ["--ddp_backend", "gloo"] if "--ddp_backend" in extra else []  # the script's only option
    for attempt in range(repeats):
        output_dir = tmp_path / f"run-{attempt}"
        command = [*two_process_launch(launch_options), str(EXIT_SCRIPT), tiny_lm_path, str(output_dir), *gloo_backend]
        try:
            _run(command, output_dir, threads=1)
        except AssertionError as error:
            failures.append(f"launch {attempt}: {str(error)[-1500:]}")
            continue
        for rank in (0, 1):
            states = json.loads((output_dir / f"exit-rank{rank}.json").read_text())["gloo_worker_states"]
            if (states and workers_freed) or any(state != "S" for state in states):
                failures.append(f"launch {attempt}, rank {rank}: gloo workers left at exit in states {states}")
    assert not failures, f"{len(failures)} of {repeats} launches failed:\n" + "\n".join(failures)
