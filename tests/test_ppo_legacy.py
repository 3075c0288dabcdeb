"""
PPO for real: an exported user reward model inside TRL 1.12's `PPOTrainer` (removed from TRL in 1.13).

The test runs in a separate virtual environment with `trl==1.12.*`, built once and cached (by default in
`~/.cache/trl-rfm/venv-trl-1.12`, or `$TRL_RFM_LEGACY_VENV`). It reuses this environment's packages
(`--system-site-packages`, so torch is not downloaded again) and installs `torch==2.13.0` and TRL 1.12 in the venv,
whose own site-packages take precedence. It is skipped, with the reason, only when that environment cannot be built
(e.g. no package index reachable).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_rfm import PersonalizedReward, RewardFeatureModel
from trl_rfm.testing import build_marker_policy, build_marker_tokenizer, build_tiny_causal_lm, marker_users


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LEGACY_TRL = "1.12"


def _legacy_trl_version(python: Path) -> str | None:
    if not python.exists():
        return None
    result = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    venv = Path(os.environ.get("TRL_RFM_LEGACY_VENV", Path.home() / ".cache" / "trl-rfm" / f"venv-trl-{LEGACY_TRL}"))
    python = venv / "bin" / "python"
    version = _legacy_trl_version(python)
    if version is None or not version.startswith(LEGACY_TRL + "."):
        steps = [
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
            # torch first, pinned: an unpinned resolve could pull a CUDA build of several GB.
            [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
            [str(python), "-m", "pip", "install", "-q", f"trl=={LEGACY_TRL}.*"],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(
                    f"cannot build the TRL {LEGACY_TRL} environment ({' '.join(step[-3:])}): {result.stderr[-500:]}"
                )
        version = _legacy_trl_version(python)
    assert version is not None and version.startswith(LEGACY_TRL + "."), f"the venv imports trl {version}"
    return python


def _load_example():
    spec = importlib.util.spec_from_file_location("ppo_exported_reward", REPO / "examples" / "ppo_exported_reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TRL_112_REWARD = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification
import trl
from trl.experimental.utils import get_reward
path, pad_token_id, context_length, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
with torch.no_grad():
    _, scores, _ = get_reward(model, torch.tensor(rows), pad_token_id, context_length)
print(json.dumps({"trl": trl.__version__, "scores": scores.tolist()}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory, legacy_python):
    """A user's reward exported from a random unnormalised RFM, a tiny policy and prompts, in the example's layout."""
    output_dir = tmp_path_factory.mktemp("ppo")
    tokenizer = build_marker_tokenizer()
    torch.manual_seed(0)
    users = list(marker_users())
    rfm = RewardFeatureModel.from_backbone(
        build_tiny_causal_lm(tokenizer, seed=1), num_features=4, user_ids=users, feature_normalization="none"
    )
    rfm.add_users(users, weights=torch.randn(2, 4))
    policy_path = output_dir / "initial_policy"
    build_marker_policy(tokenizer).save_pretrained(policy_path)
    tokenizer.save_pretrained(policy_path)
    _load_example().write_ppo_inputs(rfm, tokenizer, str(policy_path), users[0], str(output_dir), "linear", 16)
    return {"dir": output_dir, "rfm": rfm, "tokenizer": tokenizer, "user": users[0]}


def test_trl_112_reads_the_exported_reward_as_r_u(exported, legacy_python):
    """TRL 1.12's own `get_reward` (PPO's scoring: score head on the backbone, read at the last response token)."""
    tokenizer, user = exported["tokenizer"], exported["user"]
    prompt = "question about music ?"
    completions = ["the funny answer is here", "well so", "funny funny maybe"]
    reward = PersonalizedReward(exported["rfm"], tokenizer)
    expected = reward.score([prompt] * 3, completions, [user] * 3)
    # PPO's layout: query + response (+ EOS), right-padded with the pad token.
    sequences = reward.tokenize([prompt] * 3, completions)
    context_length = len(tokenizer(prompt)["input_ids"])
    width = max(len(s) for s in sequences)
    rows = [s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences]
    result = subprocess.run(
        [str(legacy_python), "-c", _TRL_112_REWARD, str(exported["dir"] / f"reward_model_{user}"),
         str(tokenizer.pad_token_id), str(context_length), json.dumps(rows)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True,
    )  # fmt: skip
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["trl"].startswith(LEGACY_TRL + ".")
    assert (torch.tensor(output["scores"]) - expected).abs().max() <= 1e-4


def test_ppo_trainer_of_trl_112_trains_on_the_exported_reward(exported, legacy_python):
    command = [
        str(legacy_python), str(REPO / "examples" / "ppo_exported_reward.py"), "--stage", "ppo",
        "--output_dir", str(exported["dir"]), "--total_episodes", "8", "--per_device_train_batch_size", "4",
        "--num_mini_batches", "1", "--response_length", "6", "--missing_eos_penalty", "1.0",
        "--num_sample_generations", "0", "--use_cpu", "--bf16", "False", "--report_to", "none",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((exported["dir"] / "ppo_policy" / "log_history.json").read_text())
    steps = [entry for entry in log if "objective/scores" in entry]
    assert len(steps) == 2
    assert all(torch.isfinite(torch.tensor(entry["objective/scores"])) for entry in steps)
